package cache

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// cutBody answers a Content-Length of 1000 and closes the connection after
// half of it, once release is closed.
func cutBody(release <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		<-release
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n" + strings.Repeat("x", 500))
		buf.Flush()
	}
}

// hang never answers; the route timeout ends the call.
func hang(<-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }
}

func unavailable(release <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		<-release
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "down")
	}
}

type outcomeCount struct {
	Status      int
	CacheStatus string
	Body        string
}

// TestFailingUpstreamCoalesced (issue 15.3): 20 concurrent requests for a
// key whose upstream cuts a body midway, hangs past the route timeout or
// answers 503 make exactly one upstream call; with a stale entry within
// stale_if_error all of them get it, without one the leader's client gets
// the failure and the others the same failure; nobody waits much longer
// than one route timeout. Before the fix each waiter called the upstream
// itself once the leader failed (20 calls, twice the timeout), and a body
// cut after the head reached the leader's client cut although a stale
// entry existed.
func TestFailingUpstreamCoalesced(t *testing.T) {
	const n = 20
	const timeout = time.Second
	tests := []struct {
		name     string
		upstream func(release <-chan struct{}) http.HandlerFunc
		status   int    // the failure's status: fwd-status, and what waiters get without stale
		body     string // what waiters get without stale
	}{
		{"body cut midway", cutBody, http.StatusBadGateway, "upstream unavailable\n"},
		{"hang past the route timeout", hang, http.StatusGatewayTimeout, `{"error":{"code":"upstream_timeout"}}` + "\n"},
		{"503", unavailable, http.StatusServiceUnavailable, "down"},
	}
	for _, tt := range tests {
		for _, withStale := range []bool{true, false} {
			name := tt.name + "/no stale entry"
			if withStale {
				name = tt.name + "/stale entry"
			}
			t.Run(name, func(t *testing.T) {
				release := make(chan struct{})
				var waiting atomic.Int64
				var h *harness
				h = newHarness(t, PolicyOptions{TTL: time.Minute, StaleIfError: 10 * time.Minute}, counter(&h),
					withRouteTimeout(timeout), withOnWait(func() {
						if waiting.Add(1) == n-1 {
							close(release) // everyone else waits: let the leader's call fail
						}
					}))
				if withStale {
					h.get("/a")
					h.clk.Advance(70 * time.Second)
				}
				h.calls.Store(0)
				h.setUpstream(tt.upstream(release))

				type result struct {
					outcomeCount
					err     error
					elapsed time.Duration
				}
				results := make(chan result, n)
				var wg sync.WaitGroup
				for range n {
					wg.Go(func() {
						start := time.Now()
						var res result
						defer func() { res.elapsed = time.Since(start); results <- res }()
						r, err := h.client.Get(h.front.URL + "/a")
						if err != nil {
							res.err = err
							return
						}
						defer r.Body.Close()
						b, err := io.ReadAll(r.Body)
						res.outcomeCount = outcomeCount{r.StatusCode, r.Header.Get("Cache-Status"), string(b)}
						res.err = err
					})
				}
				wg.Wait()
				close(results)
				h.wantCalls(1)

				count := map[outcomeCount]int{}
				var slowest time.Duration
				for res := range results {
					slowest = max(slowest, res.elapsed)
					if res.err != nil {
						count[outcomeCount{Body: "error"}]++
						continue
					}
					count[res.outcomeCount]++
				}
				fwdStatus := strconv.Itoa(tt.status)
				var want map[outcomeCount]int
				switch {
				case withStale:
					want = map[outcomeCount]int{
						{200, "keyward; fwd=stale; fwd-status=" + fwdStatus + "; ttl=-10; detail=stale-if-error", "1"}: n,
					}
				case tt.status == http.StatusBadGateway:
					want = map[outcomeCount]int{
						{Body: "error"}: 1, // the leader's client: its response was cut
						{tt.status, "keyward; fwd=uri-miss; fwd-status=502; collapsed", tt.body}: n - 1,
					}
				default:
					want = map[outcomeCount]int{
						{tt.status, "keyward; fwd=uri-miss; fwd-status=" + fwdStatus + "; detail=status", tt.body}: 1,
						{tt.status, "keyward; fwd=uri-miss; fwd-status=" + fwdStatus + "; collapsed", tt.body}:     n - 1,
					}
				}
				if diff := cmp.Diff(want, count); diff != "" {
					t.Errorf("responses (-want +got):\n%s", diff)
				}
				if slowest > timeout*3/2 {
					t.Errorf("slowest response took %v, want about one route timeout (%v) at most", slowest, timeout)
				}
			})
		}
	}
}

// TestFailureWindow: for the failure window after a failed upstream call,
// requests for its key (GET, HEAD and no-store alike) get the same failure
// without an upstream call; other keys are not affected; after the window
// one request calls the upstream again.
func TestFailureWindow(t *testing.T) {
	h := newHarness(t, PolicyOptions{TTL: time.Minute}, reply(503, "down", "Retry-After", "5"))
	first := h.get("/a")
	if first.status != 503 || first.header.Get("Cache-Status") != "keyward; fwd=uri-miss; fwd-status=503; detail=status" {
		t.Fatalf("first: %d %q", first.status, first.header.Get("Cache-Status"))
	}
	type answer struct {
		Status                        int
		CacheStatus, RetryAfter, Body string
	}
	collapsed := answer{503, "keyward; fwd=uri-miss; fwd-status=503; collapsed", "5", "down"}
	for _, req := range []struct {
		name, method string
		header       []string
		want         answer
	}{
		{"GET", http.MethodGet, nil, collapsed},
		{"HEAD", http.MethodHead, nil, answer{503, collapsed.CacheStatus, "5", ""}},
		{"no-store", http.MethodGet, []string{"Cache-Control", "no-store"}, collapsed},
	} {
		got := h.do(req.method, "/a", req.header...)
		if diff := cmp.Diff(req.want, answer{got.status, got.header.Get("Cache-Status"), got.header.Get("Retry-After"), got.body}); diff != "" {
			t.Errorf("%s within the window (-want +got):\n%s", req.name, diff)
		}
	}
	h.wantCalls(1)
	if got := h.get("/b"); got.header.Get("Cache-Status") != "keyward; fwd=uri-miss; fwd-status=503; detail=status" {
		t.Errorf("another key: %q", got.header.Get("Cache-Status"))
	}
	h.wantCalls(2)

	h.clk.Advance(DefaultFailureWindow)
	h.setUpstream(counter(&h))
	if got := h.get("/a"); got.status != 200 || got.header.Get("Cache-Status") != "keyward; fwd=uri-miss; fwd-status=200; stored; ttl=60" {
		t.Errorf("after the window: %d %q", got.status, got.header.Get("Cache-Status"))
	}
	h.wantCalls(3)

	t.Run("disabled", func(t *testing.T) {
		h := newHarness(t, PolicyOptions{TTL: time.Minute}, reply(503, "down"), func(_ *harness, o *Options, _ *Store) {
			o.FailureWindow = -1
		})
		for range 3 {
			h.get("/a")
		}
		h.wantCalls(3)
	})
}

// TestFailureWindowBounded: an upstream failing for many distinct keys
// keeps at most maxFailing of them in their window.
func TestFailureWindowBounded(t *testing.T) {
	clk := newClock()
	c := New(NewMemory(0, clk.Now), Options{Now: clk.Now})
	p := mustPolicy(t, PolicyOptions{TTL: time.Minute})
	fail := reply(503, "down")
	for i := range 2 * maxFailing {
		key := p.KeyFor("", "r", "/"+strconv.Itoa(i), "", nil, nil)
		c.Serve(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), key, p, fail)
	}
	if got := len(c.flights); got != maxFailing {
		t.Errorf("%d flights kept, want %d", got, maxFailing)
	}
	clk.Advance(DefaultFailureWindow)
	c.Serve(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), p.KeyFor("", "r", "/last", "", nil, nil), p, fail)
	if len(c.flights) != 1 || c.failing != 1 {
		t.Errorf("after the window: %d flights, %d failing; want the last one only", len(c.flights), c.failing)
	}
}

// TestLeaderGone: a leader whose client goes away mid-call (its fetch
// aborts, or returns having written nothing, as the gateway does for a
// client gone) tells nothing about the upstream: one waiter calls it
// again for the others, and all of them get its response.
func TestLeaderGone(t *testing.T) {
	for _, tt := range []struct {
		name  string
		leave func()
	}{
		{"abort", func() { panic(http.ErrAbortHandler) }},
		{"nothing written", func() {}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const n = 10
			c := New(NewMemory(0, nil), Options{})
			p := mustPolicy(t, PolicyOptions{TTL: time.Minute})
			key := p.KeyFor("", "r", "/", "", nil, nil)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var waiting atomic.Int64
			c.onWait = func() {
				if waiting.Add(1) == n {
					cancel() // every waiter waits: the leader's client leaves
				}
			}
			var calls atomic.Int64
			leaderIn := make(chan struct{})
			leaderDone := make(chan any)
			go func() {
				defer func() { leaderDone <- recover() }()
				c.Serve(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil).WithContext(ctx), key, p, func(w http.ResponseWriter, r *http.Request) {
					calls.Add(1)
					close(leaderIn)
					<-r.Context().Done()
					tt.leave()
				})
			}()
			<-leaderIn
			var wg sync.WaitGroup
			bodies := make(chan string, n)
			for range n {
				wg.Go(func() {
					rec := httptest.NewRecorder()
					c.Serve(rec, httptest.NewRequest("GET", "/", nil), key, p, func(w http.ResponseWriter, r *http.Request) {
						calls.Add(1)
						io.WriteString(w, "ok")
					})
					bodies <- strconv.Itoa(rec.Code) + " " + rec.Body.String()
				})
			}
			wg.Wait()
			close(bodies)
			got := <-leaderDone
			if want := map[string]any{"abort": http.ErrAbortHandler, "nothing written": nil}[tt.name]; got != want {
				t.Errorf("leader's Serve panicked with %v, want %v", got, want)
			}
			for b := range bodies {
				if b != "200 ok" {
					t.Errorf("waiter got %q", b)
				}
			}
			if got := calls.Load(); got != 2 {
				t.Errorf("fetch called %d times, want 2 (the leader and one waiter)", got)
			}
		})
	}
}

// TestHeldResponse: while a stale entry could replace it, a response is
// held until complete; complete, it reaches the client whole and is
// stored; too large to store, it streams on after max_entry; a failure
// after part of it was held is answered with the stale entry.
func TestHeldResponse(t *testing.T) {
	big := strings.Repeat("b", 1000)
	tests := []struct {
		name       string
		upstream   http.HandlerFunc
		wantStatus string
		wantBody   string
		stored     bool
	}{
		{
			name:       "complete",
			upstream:   reply(200, "new"),
			wantStatus: "keyward; fwd=stale; fwd-status=200; stored; ttl=60",
			wantBody:   "new",
			stored:     true,
		},
		{
			name: "streamed",
			upstream: func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "new ")
				w.(http.Flusher).Flush()
				io.WriteString(w, "body")
			},
			wantStatus: "keyward; fwd=stale; fwd-status=200; stored; ttl=60",
			wantBody:   "new body",
			stored:     true,
		},
		{
			name: "larger than max_entry",
			upstream: func(w http.ResponseWriter, r *http.Request) {
				for range 3 {
					io.WriteString(w, big)
					w.(http.Flusher).Flush()
				}
			},
			wantStatus: "keyward; fwd=stale; fwd-status=200; stored; ttl=60",
			wantBody:   big + big + big,
		},
		{
			name: "broken off after a held part",
			upstream: func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "part")
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler) // the upstream's connection is cut: a chunked body without its end
			},
			wantStatus: "keyward; fwd=stale; fwd-status=502; ttl=-10; detail=stale-if-error",
			wantBody:   "1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h *harness
			h = newHarness(t, PolicyOptions{TTL: time.Minute, StaleIfError: 10 * time.Minute, MaxEntry: 2000}, counter(&h))
			h.get("/a")
			h.clk.Advance(70 * time.Second)
			h.setUpstream(tt.upstream)
			got := h.get("/a")
			if got.status != 200 || got.header.Get("Cache-Status") != tt.wantStatus || got.body != tt.wantBody {
				t.Errorf("got %d %q, %d bytes; want %q, %d bytes", got.status, got.header.Get("Cache-Status"), len(got.body), tt.wantStatus, len(tt.wantBody))
			}
			h.clk.Advance(DefaultFailureWindow)
			next := h.get("/a")
			if hit := strings.HasPrefix(next.header.Get("Cache-Status"), "keyward; hit"); hit != tt.stored {
				t.Errorf("next request %q, want stored = %v", next.header.Get("Cache-Status"), tt.stored)
			}
		})
	}
}

// sharedStore is a Store that is not a *Memory, as Redis is, and that can
// go down.
type sharedStore struct {
	m          *Memory
	down       atomic.Bool
	gets, sets atomic.Int64
}

var errDown = errors.New("connection refused")

func (s *sharedStore) Get(ctx context.Context, key Key) (*Entry, error) {
	s.gets.Add(1)
	if s.down.Load() {
		return nil, errDown
	}
	return s.m.Get(ctx, key)
}

func (s *sharedStore) Set(ctx context.Context, key Key, e *Entry, ttl time.Duration) error {
	s.sets.Add(1)
	if s.down.Load() {
		return errDown
	}
	return s.m.Set(ctx, key, e, ttl)
}

// TestMemoryTier (issue 15.6): in front of a shared store, a memory tier
// serves hits without the store, so that an outage of the store costs no
// upstream calls for the entries this instance serves; a key first seen
// during the outage costs one call, its faults are reported, and then it
// is served from memory too; a stale entry in memory still serves
// stale-if-error; once the store is back, an entry another instance
// stored there replaces the stale one in memory.
func TestMemoryTier(t *testing.T) {
	var h *harness
	store := &sharedStore{}
	h = newHarness(t, PolicyOptions{TTL: time.Minute, StaleIfError: 10 * time.Minute}, counter(&h), withStore(store))
	clk := h.clk
	store.m = NewMemory(0, clk.Now)
	faults := func() int {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.faults)
	}

	h.get("/a")
	const hit = "keyward; hit; ttl=60"
	for range 5 {
		if got := h.get("/a"); got.header.Get("Cache-Status") != hit {
			t.Fatalf("with the store up: %q", got.header.Get("Cache-Status"))
		}
	}
	if got := store.gets.Load(); got != 1 {
		t.Errorf("store read %d times, want once (the first miss)", got)
	}
	h.wantCalls(1)

	store.down.Store(true)
	for i := range 10 {
		if got := h.get("/a"); got.header.Get("Cache-Status") != hit || got.body != "1" {
			t.Errorf("request %d with the store down: %q %q", i, got.header.Get("Cache-Status"), got.body)
		}
	}
	h.wantCalls(1)
	if got := faults(); got != 0 {
		t.Errorf("%d faults for hits served from memory, want 0", got)
	}

	h.get("/b")
	for range 5 {
		h.get("/b")
	}
	h.wantCalls(2)
	if got := faults(); got != 2 {
		t.Errorf("%d faults for a new key during the outage, want 2 (its get and its set)", got)
	}

	clk.Advance(70 * time.Second)
	h.setUpstream(reply(503, "down"))
	if got := h.get("/a"); got.status != 200 || got.header.Get("Cache-Status") != "keyward; fwd=stale; fwd-status=503; ttl=-10; detail=stale-if-error" {
		t.Errorf("stale-if-error from memory: %d %q", got.status, got.header.Get("Cache-Status"))
	}

	store.down.Store(false)
	clk.Advance(DefaultFailureWindow)
	other := &Entry{Status: 200, Header: http.Header{}, Body: []byte("other instance"), Date: clk.Now(), Expires: clk.Now().Add(time.Minute)}
	if err := store.m.Set(context.Background(), h.policy.KeyFor("prod", "route", "/a", "", nil, nil), other, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := h.get("/a"); got.body != "other instance" || got.header.Get("Cache-Status") != hit {
		t.Errorf("after the outage: %q %q, want the shared store's newer entry", got.body, got.header.Get("Cache-Status"))
	}
}

// frozenSets is a shared store whose writes hang until release is closed
// (a Redis that froze after the miss was read).
type frozenSets struct {
	release chan struct{}
	called  chan struct{} // a write began
	sets    atomic.Int64
}

func (s *frozenSets) Get(context.Context, Key) (*Entry, error) { return nil, nil }

func (s *frozenSets) Set(ctx context.Context, _ Key, _ *Entry, _ time.Duration) error {
	s.sets.Add(1)
	s.called <- struct{}{}
	select {
	case <-s.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestSlowStoreWriteDoesNotHoldTheResponse (issue 15): a miss's answer
// reaches its client before the entry is written to the shared store, so
// a store that hangs costs the client nothing on a miss.
func TestSlowStoreWriteDoesNotHoldTheResponse(t *testing.T) {
	store := &frozenSets{release: make(chan struct{}), called: make(chan struct{}, 8)}
	h := newHarness(t, PolicyOptions{TTL: time.Minute}, reply(200, "fresh"), withStore(store),
		func(_ *harness, o *Options, _ *Store) { o.Timeout = time.Minute })
	t.Cleanup(func() { close(store.release) }) // before the harness waits for the cache
	got := make(chan response, 1)
	go func() { got <- h.get("/a") }()
	select {
	case res := <-got:
		if res.status != 200 || res.body != "fresh" {
			t.Errorf("%d %q", res.status, res.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the client still waits for the store's write")
	}
	select {
	case <-store.called:
	case <-time.After(10 * time.Second):
		t.Fatal("the entry was never written to the store")
	}
	if store.sets.Load() != 1 {
		t.Errorf("%d writes to the store, want 1", store.sets.Load())
	}
}
