package cache

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// harness is a gateway in miniature: a front server that sets the
// gateway's own fields, computes the key and calls Serve with an
// httputil.ReverseProxy to a recording upstream.
type harness struct {
	t        *testing.T
	clk      *clock
	cache    *Cache
	policy   *Policy
	upstream *httptest.Server
	front    *httptest.Server
	client   *http.Client
	calls    atomic.Int64
	serve    atomic.Pointer[http.HandlerFunc]
	onWait   func() // set by an option; see Cache.onWait
	modify   func(*http.Response) error
	timeout  time.Duration // the route timeout fetch enforces, 0 for none

	mu     sync.Mutex
	faults []error
}

type harnessOpt func(*harness, *Options, *Store)

func withModifyResponse(f func(*http.Response) error) harnessOpt {
	return func(h *harness, _ *Options, _ *Store) { h.modify = f }
}

func withOnWait(f func()) harnessOpt {
	return func(h *harness, _ *Options, _ *Store) { h.onWait = f }
}

// withRouteTimeout makes fetch end the upstream call after d and answer
// as the gateway does: a JSON 504 after the timeout, a JSON 502 for any
// other failure before the head.
func withRouteTimeout(d time.Duration) harnessOpt {
	return func(h *harness, _ *Options, _ *Store) { h.timeout = d }
}

func gatewayError(w http.ResponseWriter, r *http.Request, err error) {
	status, code := http.StatusBadGateway, "upstream_unavailable"
	if errors.Is(r.Context().Err(), context.DeadlineExceeded) {
		status, code = http.StatusGatewayTimeout, "upstream_timeout"
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	io.WriteString(w, `{"error":{"code":"`+code+`"}}`+"\n")
}

func withStore(s Store) harnessOpt {
	return func(_ *harness, _ *Options, st *Store) { *st = s }
}

func newHarness(t *testing.T, po PolicyOptions, upstream http.HandlerFunc, opts ...harnessOpt) *harness {
	t.Helper()
	h := &harness{t: t, clk: newClock(), policy: mustPolicy(t, po)}
	h.setUpstream(upstream)
	h.upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.calls.Add(1)
		(*h.serve.Load())(w, r)
	}))
	t.Cleanup(h.upstream.Close)
	o := Options{Now: h.clk.Now, OnFault: func(err error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.faults = append(h.faults, err)
	}}
	var store Store = NewMemory(0, h.clk.Now)
	for _, opt := range opts {
		opt(h, &o, &store)
	}
	h.cache = New(store, o)
	h.cache.onWait = h.onWait
	t.Cleanup(h.cache.Wait)
	target, _ := url.Parse(h.upstream.URL)
	proxy := &httputil.ReverseProxy{
		Rewrite:        func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		ModifyResponse: h.modify,
		ErrorLog:       discardLog,
	}
	fetch := proxy.ServeHTTP
	if h.timeout > 0 {
		proxy.ErrorHandler = gatewayError
		fetch = func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
			defer cancel()
			proxy.ServeHTTP(w, r.WithContext(ctx))
		}
	}
	h.front = httptest.NewServer(h.handler(fetch))
	t.Cleanup(h.front.Close)
	h.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	t.Cleanup(h.client.CloseIdleConnections)
	return h
}

// handler is what the gateway does around Serve.
func (h *harness) handler(fetch http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "gateway-id")
		w.Header().Set("Access-Control-Allow-Origin", "https://app.example")
		w.Header().Set("Vary", "Origin")
		// No header is keyed as forwarded: the tests' upstreams tell
		// requests apart by headers (X-Leader) that must not split them.
		key := h.policy.KeyFor("prod", "route", r.URL.EscapedPath(), r.URL.RawQuery, nil, r.Header)
		h.cache.Serve(w, r, key, h.policy, fetch)
	})
}

func (h *harness) setUpstream(f http.HandlerFunc) { h.serve.Store(&f) }

type response struct {
	status int
	header http.Header
	body   string
}

func (h *harness) do(method, path string, kv ...string) response {
	h.t.Helper()
	req, err := http.NewRequest(method, h.front.URL+path, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	for i := 0; i < len(kv); i += 2 {
		req.Header.Add(kv[i], kv[i+1])
	}
	res, err := h.client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return response{res.StatusCode, res.Header, string(b)}
}

func (h *harness) get(path string, kv ...string) response {
	h.t.Helper()
	return h.do(http.MethodGet, path, kv...)
}

func (h *harness) wantCalls(n int64) {
	h.t.Helper()
	if got := h.calls.Load(); got != n {
		h.t.Errorf("upstream calls = %d, want %d", got, n)
	}
}

var discardLog = log.New(io.Discard, "", 0)

// counter answers "n" for the nth upstream call, so a test can tell
// which call a response came from.
func counter(h **harness, header ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < len(header); i += 2 {
			w.Header().Add(header[i], header[i+1])
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Request-Id", "upstream-id")
		io.WriteString(w, strconv.FormatInt((*h).calls.Load(), 10))
	}
}

func TestMissThenHit(t *testing.T) {
	var h *harness
	h = newHarness(t, PolicyOptions{TTL: time.Minute}, counter(&h, "Etag", `"v1"`))

	first := h.get("/a?x=1")
	if diff := cmp.Diff(response{200, nil, "1"}, response{first.status, nil, first.body}, cmp.AllowUnexported(response{})); diff != "" {
		t.Fatal(diff)
	}
	h.clk.Advance(10 * time.Second)
	hit := h.get("/a?x=1")
	h.wantCalls(1)
	want := map[string][]string{
		"Cache-Status":                {"keyward; hit; ttl=50"},
		"Age":                         {"10"},
		"Content-Length":              {"1"},
		"Content-Type":                {"text/plain"},
		"Etag":                        {`"v1"`},
		"X-Request-Id":                {"gateway-id"},
		"Access-Control-Allow-Origin": {"https://app.example"},
		"Vary":                        {"Origin"},
	}
	delete(hit.header, "Date")
	if diff := cmp.Diff(want, map[string][]string(hit.header)); diff != "" {
		t.Errorf("hit header (-want +got):\n%s", diff)
	}
	if hit.body != "1" {
		t.Errorf("hit body %q", hit.body)
	}
	if got := first.header.Values("Cache-Status"); !cmp.Equal(got, []string{"keyward; fwd=uri-miss; fwd-status=200; stored; ttl=60"}) {
		t.Errorf("miss Cache-Status %q", got)
	}
	if got := first.header.Values("X-Request-Id"); !cmp.Equal(got, []string{"gateway-id", "upstream-id"}) {
		// The proxy passes the upstream's through on a miss; the gateway's
		// response filters decide about it. It is never stored.
		t.Errorf("miss X-Request-Id %q", got)
	}

	t.Run("other query is another entry", func(t *testing.T) {
		if got := h.get("/a?x=2"); got.body != "2" {
			t.Errorf("body %q", got.body)
		}
	})
	t.Run("expires after ttl", func(t *testing.T) {
		h.clk.Advance(50 * time.Second)
		got := h.get("/a?x=1")
		if got.body != "3" || got.header.Get("Cache-Status") != "keyward; fwd=uri-miss; fwd-status=200; stored; ttl=60" {
			t.Errorf("after ttl: %q %q", got.body, got.header.Get("Cache-Status"))
		}
	})
}

func TestNotStored(t *testing.T) {
	big := strings.Repeat("b", 3000)
	tests := []struct {
		name       string
		po         PolicyOptions
		method     string
		reqHeader  []string
		upstream   http.HandlerFunc
		wantStatus string // Cache-Status of the second response
		wantBody   string
	}{
		{
			name:       "set-cookie",
			upstream:   reply(200, "ok", "Set-Cookie", "s=1"),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; detail=set-cookie",
			wantBody:   "ok",
		},
		{
			name:       "no-store",
			upstream:   reply(200, "ok", "Cache-Control", "no-store"),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; detail=no-store",
			wantBody:   "ok",
		},
		{
			name:       "private",
			upstream:   reply(200, "ok", "Cache-Control", "private, max-age=60"),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; detail=private",
			wantBody:   "ok",
		},
		{
			name:       "no-cache",
			upstream:   reply(200, "ok", "Cache-Control", "no-cache"),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; detail=no-cache",
			wantBody:   "ok",
		},
		{
			name:       "server error",
			upstream:   reply(500, "boom"),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=500; detail=status",
			wantBody:   "boom",
		},
		{
			name:       "404 not configured",
			upstream:   reply(404, "nope"),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=404; detail=status",
			wantBody:   "nope",
		},
		{
			name:       "event stream",
			upstream:   reply(200, "data: 1\n\n", "Content-Type", "text/event-stream"),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; detail=event-stream",
			wantBody:   "data: 1\n\n",
		},
		{
			name:       "oversize with length",
			po:         PolicyOptions{MaxEntry: 1000},
			upstream:   reply(200, big, "Content-Length", strconv.Itoa(len(big))),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; detail=too-large",
			wantBody:   big,
		},
		{
			name: "oversize streamed",
			po:   PolicyOptions{MaxEntry: 1000},
			upstream: func(w http.ResponseWriter, r *http.Request) {
				for range 3 {
					io.WriteString(w, big[:1000])
					w.(http.Flusher).Flush()
				}
			},
			// Announced as stored at the header, which is all it knew.
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; stored; ttl=60",
			wantBody:   big,
		},
		{
			name:       "vary star",
			upstream:   reply(200, "ok", "Vary", "*"),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; detail=vary-star",
			wantBody:   "ok",
		},
		{
			name:       "announced trailer",
			upstream:   trailing("ok", true, "X-Checksum", "abc"),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; detail=trailer",
			wantBody:   "ok",
		},
		{
			name:     "trailer no-store",
			upstream: trailing("ok", false, "Cache-Control", "no-store"),
			// Announced as stored at the header, which is all it knew.
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; stored; ttl=60",
			wantBody:   "ok",
		},
		{
			name:       "trailer private",
			upstream:   trailing("ok", false, "Cache-Control", "private"),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; stored; ttl=60",
			wantBody:   "ok",
		},
		{
			name:       "trailer set-cookie",
			upstream:   trailing("ok", false, "Set-Cookie", "session=1"),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; stored; ttl=60",
			wantBody:   "ok",
		},
		{
			name:       "client no-store",
			reqHeader:  []string{"Cache-Control", "no-store"},
			upstream:   reply(200, "ok"),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; detail=request-no-store",
			wantBody:   "ok",
		},
		{
			name:       "HEAD",
			method:     http.MethodHead,
			upstream:   reply(200, "ok"),
			wantStatus: "keyward; fwd=uri-miss; fwd-status=200; detail=head",
		},
		{
			name:       "POST",
			method:     http.MethodPost,
			upstream:   reply(200, "ok"),
			wantStatus: "keyward; fwd=method",
			wantBody:   "ok",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.po.TTL = time.Minute
			h := newHarness(t, tt.po, tt.upstream)
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			h.do(method, "/a", tt.reqHeader...)
			// Past the failure window of the 5xx case, which would answer
			// the second request without calling the upstream.
			h.clk.Advance(DefaultFailureWindow)
			got := h.do(method, "/a", tt.reqHeader...)
			h.wantCalls(2)
			if got.header.Get("Cache-Status") != tt.wantStatus {
				t.Errorf("Cache-Status %q, want %q", got.header.Get("Cache-Status"), tt.wantStatus)
			}
			if got.body != tt.wantBody {
				t.Errorf("body %d bytes, want %d", len(got.body), len(tt.wantBody))
			}
		})
	}
}

func reply(status int, body string, header ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < len(header); i += 2 {
			w.Header().Add(header[i], header[i+1])
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// trailing answers body, then a trailer name: value, announced in the
// header if announce.
func trailing(body string, announce bool, name, value string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if announce {
			w.Header().Set("Trailer", name)
		}
		io.WriteString(w, body)
		w.(http.Flusher).Flush()
		if announce {
			w.Header().Set(name, value)
		} else {
			w.Header().Set(http.TrailerPrefix+name, value)
		}
	}
}

// proxyLike writes a response the way keyward's proxy does: it keeps the
// header map from before WriteHeader and sets the upstream's trailers in
// it after the body, the unannounced ones under http.TrailerPrefix. It
// calls late, if not nil, after the body.
func proxyLike(calls *atomic.Int64, announce []string, trailer http.Header, late func(*http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		h := w.Header()
		h.Set("Content-Type", "text/plain")
		if len(announce) > 0 {
			h.Set("Trailer", strings.Join(announce, ", "))
		}
		w.WriteHeader(200)
		io.WriteString(w, "body")
		_ = http.NewResponseController(w).Flush()
		for k, vs := range trailer {
			if !slices.Contains(announce, k) {
				k = http.TrailerPrefix + k
			}
			h[k] = append(h[k], vs...)
		}
		if late != nil {
			late(r)
		}
	}
}

// TestTrailers: trailers reach the client however fetch sets them, and a
// response with any trailer, or refused by DoNotStore after its body, is
// not stored.
func TestTrailers(t *testing.T) {
	tests := []struct {
		name        string
		announce    []string
		trailer     http.Header
		late        func(*http.Request)
		wantTrailer http.Header
		wantCalls   int64
	}{
		{name: "none", wantCalls: 1},
		{name: "announced", announce: []string{"X-Checksum"}, trailer: http.Header{"X-Checksum": {"abc"}},
			wantTrailer: http.Header{"X-Checksum": {"abc"}}, wantCalls: 2},
		{name: "unannounced", trailer: http.Header{"X-Checksum": {"abc"}},
			wantTrailer: http.Header{"X-Checksum": {"abc"}}, wantCalls: 2},
		{name: "unannounced no-store", trailer: http.Header{"Cache-Control": {"no-store"}},
			wantTrailer: http.Header{"Cache-Control": {"no-store"}}, wantCalls: 2},
		{name: "DoNotStore after the body", late: func(r *http.Request) { DoNotStore(r.Context()) }, wantCalls: 2},
		{name: "set through Header after the body", late: func(r *http.Request) {}, wantCalls: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(NewMemory(0, nil), Options{})
			p := mustPolicy(t, PolicyOptions{TTL: time.Minute})
			var calls atomic.Int64
			fetch := proxyLike(&calls, tt.announce, tt.trailer, tt.late)
			if tt.name == "set through Header after the body" {
				// As httputil.ReverseProxy sets an unannounced trailer.
				fetch = func(w http.ResponseWriter, r *http.Request) {
					calls.Add(1)
					io.WriteString(w, "body")
					w.Header().Set(http.TrailerPrefix+"Set-Cookie", "session=1")
				}
			}
			front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				c.Serve(w, r, p.KeyFor("prod", "r", "/", "", nil, nil), p, fetch)
			}))
			defer front.Close()
			for i := range 2 {
				res, err := front.Client().Get(front.URL)
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err != nil || string(body) != "body" {
					t.Fatalf("request %d: body %q, %v", i, body, err)
				}
				if i == 0 && tt.wantTrailer != nil {
					if diff := cmp.Diff(tt.wantTrailer, res.Trailer); diff != "" {
						t.Errorf("trailer (-want +got):\n%s", diff)
					}
				}
			}
			if got := calls.Load(); got != tt.wantCalls {
				t.Errorf("fetch calls = %d, want %d", got, tt.wantCalls)
			}
		})
	}
}

// TestRequestBody: a GET with a body bypasses the cache, neither served
// from an entry nor stored, since the body that goes upstream is in no
// key.
func TestRequestBody(t *testing.T) {
	c := New(NewMemory(0, nil), Options{})
	p := mustPolicy(t, PolicyOptions{TTL: time.Minute})
	key := p.KeyFor("prod", "r", "/", "", nil, nil)
	fetch := func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, "got "+string(b))
	}
	serve := func(body string) *httptest.ResponseRecorder {
		var rb io.Reader
		if body != "" {
			rb = strings.NewReader(body)
		}
		rec := httptest.NewRecorder()
		c.Serve(rec, httptest.NewRequest("GET", "/", rb), key, p, fetch)
		return rec
	}
	if rec := serve("evil"); rec.Body.String() != "got evil" || rec.Header().Get("Cache-Status") != "keyward; fwd=bypass; detail=request-body" {
		t.Errorf("with a body: %q %q", rec.Body, rec.Header().Get("Cache-Status"))
	}
	if rec := serve(""); rec.Body.String() != "got " {
		t.Errorf("without a body after one with: %q, want the request's own answer", rec.Body)
	}
	if rec := serve("other"); rec.Body.String() != "got other" {
		t.Errorf("with a body after a stored entry: %q", rec.Body)
	}
	if rec := serve(""); rec.Body.String() != "got " || !strings.HasPrefix(rec.Header().Get("Cache-Status"), "keyward; hit") {
		t.Errorf("stored entry: %q %q", rec.Body, rec.Header().Get("Cache-Status"))
	}
}

// TestConcurrentDetail: a request that waited for another for its key,
// whose response was not stored, fetches for itself and says why it did
// not store what it got.
func TestConcurrentDetail(t *testing.T) {
	c := New(NewMemory(0, nil), Options{})
	p := mustPolicy(t, PolicyOptions{TTL: time.Minute})
	key := p.KeyFor("", "r", "/", "", nil, nil)
	release, leaderIn, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		c.Serve(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), key, p, func(w http.ResponseWriter, r *http.Request) {
			close(leaderIn)
			<-release
			w.Header().Set("Cache-Control", "private")
			io.WriteString(w, "mine")
		})
	}()
	<-leaderIn
	c.onWait = func() { close(release) }
	rec := httptest.NewRecorder()
	c.Serve(rec, httptest.NewRequest("GET", "/", nil), key, p, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "public")
	})
	<-done
	if got := rec.Header().Get("Cache-Status"); got != "keyward; fwd=uri-miss; fwd-status=200; detail=concurrent" {
		t.Errorf("waiter's Cache-Status %q", got)
	}
}

// TestDoNotStore: the gateway removes Set-Cookie before the cache sees the
// response, and says so.
func TestDoNotStore(t *testing.T) {
	h := newHarness(t, PolicyOptions{TTL: time.Minute}, reply(200, "ok", "Set-Cookie", "session=1"),
		withModifyResponse(func(resp *http.Response) error {
			if _, ok := resp.Header["Set-Cookie"]; ok {
				delete(resp.Header, "Set-Cookie")
				DoNotStore(resp.Request.Context())
			}
			return nil
		}))
	h.get("/a")
	got := h.get("/a")
	h.wantCalls(2)
	if got.header.Get("Set-Cookie") != "" || got.header.Get("Cache-Status") != "keyward; fwd=uri-miss; fwd-status=200; detail=personal" {
		t.Errorf("got %q", got.header)
	}
	DoNotStore(context.Background()) // a context not from Serve: nothing happens
}

func TestConfiguredStatuses(t *testing.T) {
	h := newHarness(t, PolicyOptions{TTL: time.Minute, Statuses: []int{200, 404}}, reply(404, "gone"))
	h.get("/a")
	got := h.get("/a")
	h.wantCalls(1)
	if got.status != 404 || got.body != "gone" || got.header.Get("Cache-Status") != "keyward; hit; ttl=60" {
		t.Errorf("got %d %q %q", got.status, got.body, got.header.Get("Cache-Status"))
	}
}

// TestTruncated: an upstream body shorter than its Content-Length breaks
// the client's response off and is not stored; for the failure window
// after it, requests for the key get a 502 without an upstream call.
func TestTruncated(t *testing.T) {
	h := newHarness(t, PolicyOptions{TTL: time.Minute}, func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\nshort")
		buf.Flush()
	})
	// A new connection each time: net/http's client retries a GET that
	// failed on a reused one before any response.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range 2 {
		res, err := client.Get(h.front.URL + "/a")
		if err == nil {
			_, err = io.ReadAll(res.Body)
			res.Body.Close()
		}
		if err == nil {
			t.Errorf("request %d: truncated body read without error", i)
		}
		if i == 0 {
			got := h.get("/a")
			if got.status != http.StatusBadGateway || got.header.Get("Cache-Status") != "keyward; fwd=uri-miss; fwd-status=502; collapsed" {
				t.Errorf("within the failure window: %d %q", got.status, got.header.Get("Cache-Status"))
			}
			h.wantCalls(1)
			h.clk.Advance(DefaultFailureWindow)
		}
	}
	h.wantCalls(2)
}

// TestStreaming: a response reaches the client as the upstream sends it.
func TestStreaming(t *testing.T) {
	gotFirst := make(chan struct{})
	h := newHarness(t, PolicyOptions{TTL: time.Minute}, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-gotFirst:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "second\n")
	})
	res, err := h.client.Get(h.front.URL + "/a")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	br := bufio.NewReader(res.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	close(gotFirst)
	rest, _ := io.ReadAll(br)
	if string(rest) != "second\n" {
		t.Errorf("rest %q", rest)
	}
	// Streamed and complete: stored.
	if got := h.get("/a"); got.body != "first\nsecond\n" || got.header.Get("Cache-Status") != "keyward; hit; ttl=60" {
		t.Errorf("second request %q %q", got.body, got.header.Get("Cache-Status"))
	}
}

func TestTee(t *testing.T) {
	c := New(NewMemory(0, nil), Options{})
	p := mustPolicy(t, PolicyOptions{TTL: time.Minute, MaxEntry: 10})

	t.Run("flush and unwrap", func(t *testing.T) {
		rec := httptest.NewRecorder()
		tw := &tee{w: rec, h: make(http.Header), c: c, p: p, fwd: "uri-miss", store: true}
		if err := http.NewResponseController(tw).Flush(); err != nil {
			t.Fatal(err)
		}
		if !rec.Flushed || rec.Code != 200 {
			t.Errorf("flushed %v code %d", rec.Flushed, rec.Code)
		}
		if tw.Unwrap() != rec {
			t.Error("Unwrap does not return the client's writer")
		}
	})
	t.Run("gives up past the limit", func(t *testing.T) {
		gaveUp := 0
		tw := &tee{w: httptest.NewRecorder(), h: make(http.Header), c: c, p: p, fwd: "uri-miss", store: true, onGiveUp: func() { gaveUp++ }}
		tw.Write([]byte("0123456789"))
		if !tw.capture || len(tw.buf) != 10 {
			t.Fatalf("capture %v, buffered %d", tw.capture, len(tw.buf))
		}
		tw.Write([]byte("x"))
		tw.Write([]byte("more"))
		if tw.capture || tw.buf != nil || gaveUp != 1 || tw.entry() != nil {
			t.Errorf("capture %v, buffered %d, gave up %d times", tw.capture, len(tw.buf), gaveUp)
		}
	})
	t.Run("informational", func(t *testing.T) {
		rec := httptest.NewRecorder()
		rec.Header().Set("X-Gateway", "1")
		tw := &tee{w: rec, h: make(http.Header), c: c, p: p, fwd: "uri-miss", store: true}
		tw.Header().Set("Link", "</style.css>; rel=preload")
		tw.WriteHeader(http.StatusEarlyHints)
		clear(tw.Header()) // as httputil.ReverseProxy does
		tw.Header().Set("Content-Type", "text/plain")
		tw.WriteHeader(200)
		if diff := cmp.Diff(http.Header{
			"X-Gateway":    {"1"},
			"Content-Type": {"text/plain"},
			"Cache-Status": {"keyward; fwd=uri-miss; fwd-status=200; stored; ttl=60"},
		}, rec.Header()); diff != "" {
			t.Errorf("final header (-want +got):\n%s", diff)
		}
	})
}

func TestHead(t *testing.T) {
	var h *harness
	h = newHarness(t, PolicyOptions{TTL: time.Minute}, counter(&h))
	h.get("/a")
	got := h.do(http.MethodHead, "/a")
	h.wantCalls(1)
	if got.body != "" || got.header.Get("Content-Length") != "1" || got.header.Get("Cache-Status") != "keyward; hit; ttl=60" {
		t.Errorf("HEAD hit: %q %q %q", got.body, got.header.Get("Content-Length"), got.header.Get("Cache-Status"))
	}
}

func TestConditional(t *testing.T) {
	lm := epoch.Add(-time.Hour).Format(http.TimeFormat)
	h := newHarness(t, PolicyOptions{TTL: time.Minute}, reply(200, "body", "Etag", `W/"v1"`, "Last-Modified", lm, "Content-Type", "text/plain"))
	h.get("/a")
	tests := []struct {
		name   string
		header []string
		want   int
	}{
		{"matching etag", []string{"If-None-Match", `"x", "v1"`}, 304},
		{"star", []string{"If-None-Match", "*"}, 304},
		{"other etag", []string{"If-None-Match", `"v2"`}, 200},
		{"etag wins over date", []string{"If-None-Match", `"v2"`, "If-Modified-Since", lm}, 200},
		{"not modified since", []string{"If-Modified-Since", lm}, 304},
		{"modified since", []string{"If-Modified-Since", epoch.Add(-2 * time.Hour).Format(http.TimeFormat)}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := h.get("/a", tt.header...)
			if got.status != tt.want {
				t.Errorf("status %d, want %d", got.status, tt.want)
			}
			if tt.want == 304 && (got.body != "" || got.header.Get("Etag") != `W/"v1"` || got.header.Get("Content-Type") != "") {
				t.Errorf("304 body %q etag %q type %q", got.body, got.header.Get("Etag"), got.header.Get("Content-Type"))
			}
		})
	}
	h.wantCalls(1)
}

// TestCoalescing: 200 concurrent requests for one key on a cold cache
// make one upstream call, and all get its response. The upstream answers
// only once all others are waiting, so no request can be late enough to
// find the entry stored instead.
func TestCoalescing(t *testing.T) {
	const n = 200
	release := make(chan struct{})
	var waiting atomic.Int64
	h := newHarness(t, PolicyOptions{TTL: time.Minute}, func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "payload")
	}, withOnWait(func() {
		if waiting.Add(1) == n-1 {
			close(release)
		}
	}))
	statuses := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			res, err := h.client.Get(h.front.URL + "/hot")
			if err != nil {
				t.Error(err)
				return
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			if res.StatusCode != 200 || string(b) != "payload" {
				t.Errorf("got %d %q", res.StatusCode, b)
			}
			statuses <- res.Header.Get("Cache-Status")
		})
	}
	wg.Wait()
	close(statuses)
	h.wantCalls(1)
	count := map[string]int{}
	for s := range statuses {
		count[s]++
	}
	want := map[string]int{
		"keyward; fwd=uri-miss; fwd-status=200; stored; ttl=60":    1,
		"keyward; fwd=uri-miss; fwd-status=200; collapsed; ttl=60": n - 1,
	}
	if diff := cmp.Diff(want, count); diff != "" {
		t.Errorf("Cache-Status counts (-want +got):\n%s", diff)
	}
}

// TestCoalescingNotStorable: when the leader's response turns out not
// storable, its waiters go upstream as soon as its header arrives,
// together: the leader's upstream sends its header once all others wait,
// and ends its body only once all others have reached the upstream.
func TestCoalescingNotStorable(t *testing.T) {
	const n = 20
	allWaiting, allArrived, leaderIn := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var waiting atomic.Int64
	var h *harness
	h = newHarness(t, PolicyOptions{TTL: time.Minute}, func(w http.ResponseWriter, r *http.Request) {
		if h.calls.Load() == n {
			close(allArrived)
		}
		w.Header().Set("Cache-Control", "private")
		if r.Header.Get("X-Leader") == "" {
			io.WriteString(w, "ok")
			return
		}
		close(leaderIn)
		<-allWaiting
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		<-allArrived
		io.WriteString(w, "ok")
	}, withOnWait(func() {
		if waiting.Add(1) == n-1 {
			close(allWaiting)
		}
	}))
	var wg sync.WaitGroup
	wg.Go(func() {
		if got := h.get("/x", "X-Leader", "1"); got.body != "ok" {
			t.Errorf("leader body %q", got.body)
		}
	})
	<-leaderIn
	for range n - 1 {
		wg.Go(func() {
			if got := h.get("/x"); got.body != "ok" {
				t.Errorf("body %q", got.body)
			}
		})
	}
	wg.Wait()
	h.wantCalls(n)
}

func TestStaleWhileRevalidate(t *testing.T) {
	var h *harness
	h = newHarness(t, PolicyOptions{TTL: time.Minute, StaleWhileRevalidate: 30 * time.Second}, counter(&h))
	h.get("/a")
	if IsRevalidation(context.Background()) {
		t.Error("IsRevalidation true for a plain context")
	}

	h.clk.Advance(70 * time.Second)
	block := make(chan struct{})
	h.setUpstream(func(w http.ResponseWriter, r *http.Request) {
		<-block
		counter(&h)(w, r)
	})
	for range 5 {
		got := h.get("/a")
		if got.body != "1" || got.header.Get("Cache-Status") != "keyward; hit; ttl=-10; detail=stale-while-revalidate" {
			t.Fatalf("stale: %q %q", got.body, got.header.Get("Cache-Status"))
		}
	}
	close(block)
	h.cache.Wait()
	h.wantCalls(2) // one refresh for five stale requests

	got := h.get("/a")
	if got.body != "2" || got.header.Get("Cache-Status") != "keyward; hit; ttl=60" {
		t.Errorf("after refresh: %q %q", got.body, got.header.Get("Cache-Status"))
	}

	t.Run("past the window", func(t *testing.T) {
		h.setUpstream(counter(&h))
		h.clk.Advance(60*time.Second + 30*time.Second)
		got := h.get("/a")
		if got.body != "3" || got.header.Get("Cache-Status") != "keyward; fwd=uri-miss; fwd-status=200; stored; ttl=60" {
			t.Errorf("past the window: %q %q", got.body, got.header.Get("Cache-Status"))
		}
	})
	t.Run("refresh gets no client conditions", func(t *testing.T) {
		var seen atomic.Pointer[http.Header]
		h.setUpstream(func(w http.ResponseWriter, r *http.Request) {
			hd := r.Header.Clone()
			seen.Store(&hd)
			counter(&h)(w, r)
		})
		h.clk.Advance(70 * time.Second)
		h.do(http.MethodHead, "/a", "If-None-Match", `"zzz"`, "Range", "bytes=0-1")
		h.cache.Wait()
		hd := *seen.Load()
		if hd.Get("If-None-Match") != "" || hd.Get("Range") != "" {
			t.Errorf("refresh forwarded %v", hd)
		}
	})
}

func TestStaleIfError(t *testing.T) {
	var h *harness
	h = newHarness(t, PolicyOptions{TTL: time.Minute, StaleIfError: 2 * time.Minute}, counter(&h))
	h.get("/a")
	h.clk.Advance(70 * time.Second)

	h.setUpstream(reply(503, "down", "Retry-After", "1"))
	got := h.get("/a")
	if got.status != 200 || got.body != "1" || got.header.Get("Cache-Status") != "keyward; fwd=stale; fwd-status=503; ttl=-10; detail=stale-if-error" {
		t.Errorf("on 503: %d %q %q", got.status, got.body, got.header.Get("Cache-Status"))
	}
	if got.header.Get("Retry-After") != "" {
		t.Error("the 5xx's fields leaked into the stale response")
	}

	// Each step is past the failure window of the one before.
	h.clk.Advance(DefaultFailureWindow)
	h.setUpstream(func(w http.ResponseWriter, r *http.Request) {
		conn, _, _ := http.NewResponseController(w).Hijack()
		conn.Close() // the proxy answers 502
	})
	got = h.get("/a")
	if got.status != 200 || got.body != "1" || got.header.Get("Cache-Status") != "keyward; fwd=stale; fwd-status=502; ttl=-11; detail=stale-if-error" {
		t.Errorf("upstream gone: %d %q %q", got.status, got.body, got.header.Get("Cache-Status"))
	}

	h.clk.Advance(DefaultFailureWindow)
	h.setUpstream(reply(404, "not here"))
	if got := h.get("/a"); got.status != 404 {
		t.Errorf("a 4xx is the upstream's answer, not an error: got %d", got.status)
	}

	h.setUpstream(reply(503, "down"))
	h.clk.Advance(2 * time.Minute)
	if got := h.get("/a"); got.status != 503 || got.header.Get("Cache-Status") != "keyward; fwd=uri-miss; fwd-status=503; detail=status" {
		t.Errorf("past the window: %d %q", got.status, got.header.Get("Cache-Status"))
	}

	t.Run("must-revalidate", func(t *testing.T) {
		h := newHarness(t, PolicyOptions{TTL: time.Minute, StaleIfError: 2 * time.Minute}, reply(200, "ok", "Cache-Control", "must-revalidate"))
		h.get("/a")
		h.clk.Advance(70 * time.Second)
		h.setUpstream(reply(503, "down"))
		if got := h.get("/a"); got.status != 503 {
			t.Errorf("must-revalidate entry served stale: %d", got.status)
		}
	})
}

// faultyStore fails every call with err, or, if err is nil, blocks until
// the context ends, like a Redis that accepts and never answers.
type faultyStore struct {
	err   error
	calls atomic.Int64
}

func (f *faultyStore) fail(ctx context.Context) error {
	f.calls.Add(1)
	if f.err != nil {
		return f.err
	}
	<-ctx.Done()
	return ctx.Err()
}

func (f *faultyStore) Get(ctx context.Context, _ Key) (*Entry, error) { return nil, f.fail(ctx) }
func (f *faultyStore) Set(ctx context.Context, _ Key, _ *Entry, _ time.Duration) error {
	return f.fail(ctx)
}

func TestStoreFaults(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want error
	}{
		{"error", errors.New("connection refused"), nil},
		{"timeout", nil, context.DeadlineExceeded},
	} {
		t.Run(tt.name, func(t *testing.T) {
			store := &faultyStore{err: tt.err}
			var h *harness
			h = newHarness(t, PolicyOptions{TTL: time.Minute}, counter(&h), withStore(store), func(_ *harness, o *Options, _ *Store) {
				o.Timeout = 5 * time.Millisecond
				o.MemoryTier = -1 // every request meets the store; see TestMemoryTier
			})
			for i := range 3 {
				got := h.get("/a")
				if got.status != 200 || got.body != strconv.Itoa(i+1) || got.header.Get("Cache-Status") != "keyward; fwd=uri-miss; fwd-status=200; stored; ttl=60" {
					t.Errorf("request %d: %d %q %q", i, got.status, got.body, got.header.Get("Cache-Status"))
				}
			}
			h.wantCalls(3)
			// The last store write comes after its response was sent:
			// wait for the handler to end.
			h.front.Close()
			h.mu.Lock()
			defer h.mu.Unlock()
			if len(h.faults) != 6 {
				t.Fatalf("%d faults reported, want 6 (a get and a set per request)", len(h.faults))
			}
			var serr *StoreError
			if !errors.As(h.faults[0], &serr) || serr.Op != "get" {
				t.Errorf("fault %v", h.faults[0])
			}
			want := tt.want
			if want == nil {
				want = tt.err
			}
			for _, err := range h.faults {
				if !errors.Is(err, want) {
					t.Errorf("fault %v is not %v", err, want)
				}
			}
		})
	}
}

// TestRefreshPanic: a background revalidation that panics is reported, and
// does not take the process down.
func TestRefreshPanic(t *testing.T) {
	var faults []error
	var mu sync.Mutex
	clk := newClock()
	c := New(NewMemory(0, clk.Now), Options{Now: clk.Now, OnFault: func(err error) {
		mu.Lock()
		defer mu.Unlock()
		faults = append(faults, err)
	}})
	p := mustPolicy(t, PolicyOptions{TTL: time.Minute, StaleWhileRevalidate: time.Minute})
	key := p.KeyFor("", "r", "/", "", nil, nil)
	r := httptest.NewRequest("GET", "/", nil)
	c.Serve(httptest.NewRecorder(), r, key, p, reply(200, "ok"))
	clk.Advance(90 * time.Second)
	c.Serve(httptest.NewRecorder(), r, key, p, func(http.ResponseWriter, *http.Request) { panic("bug") })
	c.Serve(httptest.NewRecorder(), r, key, p, func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) })
	c.Wait()
	c.Serve(httptest.NewRecorder(), r, key, p, func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) })
	c.Wait()
	mu.Lock()
	defer mu.Unlock()
	var re *RefreshError
	if len(faults) != 1 || !errors.As(faults[0], &re) || re.Panic != "bug" {
		t.Errorf("faults %v, want one RefreshError", faults)
	}
}

// TestWaiterContext: a waiter whose context ends stops waiting and is
// answered by fetch, as any cancelled request.
func TestWaiterContext(t *testing.T) {
	c := New(NewMemory(0, nil), Options{})
	p := mustPolicy(t, PolicyOptions{TTL: time.Minute})
	key := p.KeyFor("", "r", "/", "", nil, nil)
	release := make(chan struct{})
	leaderIn := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Serve(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), key, p, func(w http.ResponseWriter, r *http.Request) {
			close(leaderIn)
			<-release
			io.WriteString(w, "late")
		})
	}()
	<-leaderIn
	ctx, cancel := context.WithCancel(context.Background())
	c.onWait = cancel
	rec := httptest.NewRecorder()
	c.Serve(rec, httptest.NewRequest("GET", "/", nil).WithContext(ctx), key, p, func(w http.ResponseWriter, r *http.Request) {
		if r.Context().Err() == nil {
			t.Error("fetch called with a live context")
		}
		w.WriteHeader(http.StatusGatewayTimeout)
	})
	if rec.Code != http.StatusGatewayTimeout {
		t.Errorf("waiter got %d", rec.Code)
	}
	close(release)
	<-done
}

// TestIsRevalidation: fetch can tell a background refresh from a client's
// request, and the refresh's context outlives the client's.
func TestIsRevalidation(t *testing.T) {
	clk := newClock()
	c := New(NewMemory(0, clk.Now), Options{Now: clk.Now})
	p := mustPolicy(t, PolicyOptions{TTL: time.Minute, StaleWhileRevalidate: time.Minute})
	key := p.KeyFor("", "r", "/", "", nil, nil)
	var got []bool
	fetch := func(w http.ResponseWriter, r *http.Request) {
		got = append(got, IsRevalidation(r.Context()), r.Context().Err() != nil)
		io.WriteString(w, "ok")
	}
	c.Serve(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), key, p, fetch)
	clk.Advance(90 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	c.Serve(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil).WithContext(ctx), key, p, fetch)
	cancel()
	c.Wait()
	if diff := cmp.Diff([]bool{false, false, true, false}, got); diff != "" {
		t.Errorf("(revalidation, cancelled) per fetch (-want +got):\n%s", diff)
	}
}
