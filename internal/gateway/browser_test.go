package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
)

// browserStepTimeout bounds each browser step (navigation, one fetch, one
// wait for an event). Starting the browser gets a little longer, since a
// cold start on a busy CI runner takes a few seconds.
const (
	browserStepTimeout  = 10 * time.Second
	browserStartTimeout = 60 * time.Second
)

// browserCanary is the upstream API key. It must reach the upstream and
// never anything a page can see.
const browserCanary = "kw-canary-7d31f0c2e9b84a56"

// TestBrowserCORS proves the gateway's CORS in a real browser: pages on two
// loopback origins (one allowed, one not) fetch the gateway on a third, and
// for each case the test checks what the page saw, what the upstream
// received, and why Chromium blocked a response (Network.loadingFailed).
// startBrowser below holds the launch options and why each is needed.
func TestBrowserCORS(t *testing.T) {
	chromium := findChromium()
	if chromium == "" {
		const msg = "headless Chromium not found (looked for /usr/bin/chromium and chromium in PATH); install it with `apt-get install -y chromium` or run `make test`"
		if os.Getenv("CI") != "" {
			t.Fatal(msg + "; CI is set, so a missing browser is a failure")
		}
		t.Skip(msg)
	}

	upstream := &upstreamRecorder{}
	upSrv := httptest.NewServer(upstream)
	t.Cleanup(upSrv.Close)
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, "<!doctype html><title>keyward browser test</title><p>page</p>\n")
	})
	allowedSrv := httptest.NewServer(page)
	t.Cleanup(allowedSrv.Close)
	otherSrv := httptest.NewServer(page)
	t.Cleanup(otherSrv.Close)

	yaml := fmt.Sprintf(`
secrets:
  api: { env: KEYWARD_BROWSER_API_KEY }
cors:
  allow_origins: [%q]
  expose_headers: [X-Upstream-Echo]
  max_age: 10m
routes:
  - name: items
    path: /items/{id}
    methods: [GET]
    upstream: "%s/v1/items/{id}"
    query:
      set: { key: "{secret.api}" }
    headers:
      set: { Authorization: "Bearer {secret.api}" }
  - name: create
    path: /create/{id}
    methods: [POST]
    upstream: "%s/v1/create/{id}"
    headers:
      allow: [X-Trace-Id]
      set: { Authorization: "Bearer {secret.api}" }
`, allowedSrv.URL, upSrv.URL, upSrv.URL)
	f, err := config.Parse("browser.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("parsing config: %v", err)
	}
	var logs gatewaytest.SyncBuffer
	g, warnings, err := gateway.Compile(f, gateway.Options{
		Getenv: func(name string) string {
			if name == "KEYWARD_BROWSER_API_KEY" {
				return browserCanary
			}
			return ""
		},
		Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatalf("compiling config: %v", err)
	}
	for _, w := range warnings {
		t.Logf("config warning: %v", w)
	}
	seen := &methodRecorder{next: g}
	gwSrv := httptest.NewServer(seen)
	t.Cleanup(gwSrv.Close)

	b := startBrowser(t, chromium)
	tabs := map[string]*tab{
		"allowed": b.openTab(t, allowedSrv.URL+"/"),
		"other":   b.openTab(t, otherSrv.URL+"/"),
	}

	tests := []struct {
		name string
		tab  string
		path string         // gateway path, unique per case: browsers cache preflights
		init map[string]any // fetch options; cache: no-store is added
		// What the page saw: a status and, for gateway errors, the JSON
		// error code; or a thrown error.
		wantStatus    int
		wantErrorCode string
		wantThrown    string
		wantBody      map[string]any // for upstream responses
		// What reached the gateway and the upstream.
		wantGateway  []string
		wantUpstream []upstreamRequest
		// Chromium's CORS reason (Network.loadingFailed corsErrorStatus)
		// for the request, or "" when none must be reported.
		wantCORSError network.CorsError
	}{
		{
			name:        "allowed origin reads the upstream JSON",
			tab:         "allowed",
			path:        "/items/a",
			init:        map[string]any{"method": "GET"},
			wantStatus:  200,
			wantBody:    map[string]any{"method": "GET", "path": "/v1/items/a"},
			wantGateway: []string{"GET /items/a"},
			wantUpstream: []upstreamRequest{{Method: "GET", Path: "/v1/items/a", Query: "key=" + browserCanary,
				Authorization: "Bearer " + browserCanary}},
		},
		{
			name: "JSON POST with a custom header passes its preflight",
			tab:  "allowed",
			path: "/create/b",
			init: map[string]any{"method": "POST", "body": `{"title":"b"}`,
				"headers": map[string]string{"Content-Type": "application/json", "X-Trace-Id": "trace-b"}},
			wantStatus:  200,
			wantBody:    map[string]any{"method": "POST", "path": "/v1/create/b"},
			wantGateway: []string{"OPTIONS /create/b", "POST /create/b"},
			wantUpstream: []upstreamRequest{{Method: "POST", Path: "/v1/create/b", Authorization: "Bearer " + browserCanary,
				TraceID: "trace-b", ContentType: "application/json", Body: `{"title":"b"}`}},
		},
		{
			name:          "other origin is blocked and the upstream is not called",
			tab:           "other",
			path:          "/items/c",
			init:          map[string]any{"method": "GET"},
			wantThrown:    "TypeError: Failed to fetch",
			wantGateway:   []string{"GET /items/c"},
			wantCORSError: network.CorsErrorMissingAllowOriginHeader,
		},
		{
			name: "other origin's preflight is refused",
			tab:  "other",
			path: "/create/c2",
			init: map[string]any{"method": "POST", "body": `{}`,
				"headers": map[string]string{"Content-Type": "application/json"}},
			wantThrown:    "TypeError: Failed to fetch",
			wantGateway:   []string{"OPTIONS /create/c2"},
			wantCORSError: network.CorsErrorPreflightMissingAllowOriginHeader,
		},
		{
			name:          "allowed origin reads a 405 from the gateway",
			tab:           "allowed",
			path:          "/items/d",
			init:          map[string]any{"method": "POST", "body": "hello", "headers": map[string]string{"Content-Type": "text/plain"}},
			wantStatus:    405,
			wantErrorCode: "method_not_allowed",
			wantGateway:   []string{"POST /items/d"},
		},
		{
			name:          "allowed origin reads a 404 from the gateway",
			tab:           "allowed",
			path:          "/nowhere/e",
			init:          map[string]any{"method": "GET"},
			wantStatus:    404,
			wantErrorCode: "not_found",
			wantGateway:   []string{"GET /nowhere/e"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := tabs[tc.tab]
			target := gwSrv.URL + tc.path
			got := tb.fetch(t, target, tc.init)

			if tc.wantThrown != "" {
				if got.Thrown != tc.wantThrown {
					t.Errorf("page: thrown %q (status %d), want %q", got.Thrown, got.Status, tc.wantThrown)
				}
			} else {
				if got.Thrown != "" || got.Status != tc.wantStatus {
					t.Fatalf("page: status %d, thrown %q; want status %d", got.Status, got.Thrown, tc.wantStatus)
				}
				var body map[string]any
				if err := json.Unmarshal([]byte(got.Body), &body); err != nil {
					t.Fatalf("page: body %q is not JSON: %v", got.Body, err)
				}
				if tc.wantErrorCode != "" {
					e, _ := body["error"].(map[string]any)
					if code, _ := e["code"].(string); code != tc.wantErrorCode {
						t.Errorf("page: error code %q in %s, want %q", code, got.Body, tc.wantErrorCode)
					}
				} else if diff := cmp.Diff(tc.wantBody, body); diff != "" {
					t.Errorf("page: body mismatch (-want +got):\n%s", diff)
				}
			}
			if tc.wantUpstream != nil {
				// The upstream echoes the secrets it received; the gateway
				// must redact them before the page can read the header.
				echo := got.Headers["x-upstream-echo"]
				if echo == "" || !strings.Contains(echo, "[REDACTED]") {
					t.Errorf("page: X-Upstream-Echo = %q, want the upstream's echo with secrets redacted", echo)
				}
			}

			if diff := cmp.Diff(tc.wantGateway, seen.forPath(tc.path)); diff != "" {
				t.Errorf("requests reaching the gateway (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantUpstream, upstream.forPath(strings.Replace(tc.path, "/", "/v1/", 1))); diff != "" {
				t.Errorf("requests reaching the upstream (-want +got):\n%s", diff)
			}

			if tc.wantCORSError != "" {
				fail, err := tb.events.waitFailure(target, browserStepTimeout)
				if err != nil {
					t.Fatalf("Network.loadingFailed for %s: %v", target, err)
				}
				if fail.CorsErrorStatus == nil || fail.CorsErrorStatus.CorsError != tc.wantCORSError {
					t.Errorf("Network.loadingFailed for %s: corsErrorStatus %+v (errorText %q), want %s",
						target, fail.CorsErrorStatus, fail.ErrorText, tc.wantCORSError)
				}
			} else if fail, ok := tb.events.failure(target); ok {
				t.Errorf("Network.loadingFailed for %s: %q, corsErrorStatus %+v; want none", target, fail.ErrorText, fail.CorsErrorStatus)
			}
		})
	}

	// Nothing the pages saw (fetch results, response headers as received
	// by the browser) and nothing logged holds the secret.
	for name, tb := range tabs {
		if where := tb.events.find(browserCanary); where != "" {
			t.Errorf("tab %s: the canary secret reached the browser in %s", name, where)
		}
	}
	if strings.Contains(logs.String(), browserCanary) {
		t.Errorf("the canary secret appears in the gateway log:\n%s", logs.String())
	}
}

// findChromium returns Debian's Chromium, or "" when it is not installed.
func findChromium() string {
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	return ""
}

// upstreamRecorder is the third-party API: it records every request and
// answers JSON, echoing what it received in a header so the test can see
// that the gateway redacts secrets in responses.
type upstreamRecorder struct {
	mu   sync.Mutex
	reqs []upstreamRequest
}

// upstreamRequest is what the upstream noted of one request.
type upstreamRequest struct {
	Method, Path, Query, Authorization, TraceID, ContentType, Body string
}

func (u *upstreamRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.reqs = append(u.reqs, upstreamRequest{
		Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery,
		Authorization: r.Header.Get("Authorization"), TraceID: r.Header.Get("X-Trace-Id"),
		ContentType: r.Header.Get("Content-Type"), Body: string(body),
	})
	u.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Upstream-Echo", "auth="+r.Header.Get("Authorization")+"; uri="+r.RequestURI)
	json.NewEncoder(w).Encode(map[string]string{"method": r.Method, "path": r.URL.Path})
}

func (u *upstreamRecorder) forPath(path string) []upstreamRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []upstreamRequest
	for _, r := range u.reqs {
		if r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

// methodRecorder notes "METHOD /path" for each request reaching the
// gateway, to prove a preflight was sent and answered by the gateway.
type methodRecorder struct {
	next http.Handler
	mu   sync.Mutex
	reqs [][2]string
}

func (m *methodRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	m.reqs = append(m.reqs, [2]string{r.Method, r.URL.Path})
	m.mu.Unlock()
	m.next.ServeHTTP(w, r)
}

func (m *methodRecorder) forPath(path string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, r := range m.reqs {
		if r[1] == path {
			out = append(out, r[0]+" "+r[1])
		}
	}
	return out
}

// browser is one headless Chromium for the test.
type browser struct {
	ctx       context.Context // the first tab's context; it owns the browser
	firstUsed bool
}

// startBrowser launches Chromium with the options known to work on these
// machines and, when the test ends, closes it before its profile is removed.
func startBrowser(t *testing.T, execPath string) *browser {
	t.Helper()
	dir := t.TempDir() // removed after the cleanup below has stopped the browser
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(execPath),
		chromedp.UserDataDir(filepath.Join(dir, "profile")),
		chromedp.NoSandbox, // required as root
		chromedp.Headless,
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-crash-reporter", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("no-pings", true),
		// Without this Chromium resolves Google hosts at start; without the
		// EXCLUDEs it cannot load the loopback pages.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost"),
		// Keep every file of the browser (its crash handler's too) under
		// dir, and the test process's environment away from the browser.
		chromedp.NoInheritEnv,
		chromedp.Env("PATH="+os.Getenv("PATH"), "HOME="+dir,
			"XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "XDG_CACHE_HOME="+filepath.Join(dir, "cache")),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(ctx, browserStepTimeout)
		defer cancel()
		if err := chromedp.Cancel(cctx); err != nil && !errors.Is(err, context.Canceled) {
			t.Logf("closing the browser: %v", err)
		}
		cancelBrowser()
		cancelAlloc()
	})
	// The browser lives as long as the context of its first Run, so that
	// context carries no deadline; a timer cancels it instead.
	start := time.Now()
	timer := time.AfterFunc(browserStartTimeout, cancelBrowser)
	err := chromedp.Do(ctx)
	if !timer.Stop() {
		t.Fatalf("starting %s: no browser within %v: %v", execPath, browserStartTimeout, err)
	}
	if err != nil {
		t.Fatalf("starting %s: %v", execPath, err)
	}
	t.Logf("browser started in %v", time.Since(start).Round(time.Millisecond))
	return &browser{ctx: ctx}
}

// tab is one browser tab showing a page of one origin.
type tab struct {
	ctx    context.Context
	events *networkLog
}

// openTab opens a tab on pageURL and records its network events. The
// first call reuses the tab the browser started with.
func (b *browser) openTab(t *testing.T, pageURL string) *tab {
	t.Helper()
	ctx := b.ctx
	if b.firstUsed {
		var cancel context.CancelFunc
		ctx, cancel = chromedp.NewContext(b.ctx)
		t.Cleanup(cancel)
	}
	b.firstUsed = true
	tb := &tab{ctx: ctx, events: newNetworkLog()}
	if err := chromedp.Listen(ctx, tb.events.record); err != nil {
		t.Fatalf("listening to network events of the tab for %s: %v", pageURL, err)
	}
	sctx, cancel := context.WithTimeout(ctx, browserStepTimeout)
	defer cancel()
	if err := chromedp.Do(sctx, chromedp.Navigate(pageURL)); err != nil {
		t.Fatalf("opening %s: %v", pageURL, err)
	}
	return tb
}

// pageResult is what a page's fetch saw: a response, or a thrown error.
type pageResult struct {
	Status  int               `json:"status"`
	Body    string            `json:"body"`
	Headers map[string]string `json:"headers"` // only those CORS lets the page read
	Thrown  string            `json:"thrown"`  // "TypeError: Failed to fetch"
}

// fetchJS runs fetch(url, init) in the page. Both arguments are JSON.
const fetchJS = `(async (url, init) => {
	try {
		const res = await fetch(url, init);
		const headers = {};
		res.headers.forEach((v, k) => { headers[k] = v; });
		return {status: res.status, body: await res.text(), headers: headers, thrown: ""};
	} catch (e) {
		return {status: 0, body: "", headers: {}, thrown: e.name + ": " + e.message};
	}
})(%s, %s)`

// fetch runs fetch(url, init) in the tab's page, without the HTTP cache, so
// no case reuses another's response or preflight.
func (tb *tab) fetch(t *testing.T, url string, init map[string]any) pageResult {
	t.Helper()
	opts := map[string]any{"cache": "no-store", "mode": "cors"}
	for k, v := range init {
		opts[k] = v
	}
	u, err := json.Marshal(url)
	if err != nil {
		t.Fatal(err)
	}
	o, err := json.Marshal(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(tb.ctx, browserStepTimeout)
	defer cancel()
	res, err := chromedp.Run(ctx, chromedp.Evaluate[pageResult](fmt.Sprintf(fetchJS, u, o), chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("fetch(%s, %s) in the page: %v", u, o, err)
	}
	raw, _ := json.Marshal(res)
	tb.events.saw("fetch result for "+url, string(raw))
	return res
}

// networkLog keeps a tab's network events: which request went where, which
// failed and why, and every response header the browser received.
type networkLog struct {
	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change
	urls     map[network.RequestID]string
	failures map[network.RequestID]*network.EventLoadingFailed
	seen     []sighting // everything the browser received
}

// sighting is text the browser received, and where.
type sighting struct{ where, what string }

func newNetworkLog() *networkLog {
	return &networkLog{changed: make(chan struct{}),
		urls: map[network.RequestID]string{}, failures: map[network.RequestID]*network.EventLoadingFailed{}}
}

// record is the tab's event listener; it only stores, as chromedp.Listen
// requires.
func (l *networkLog) record(ev any) {
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		l.update(func() { l.urls[ev.RequestID] = ev.Request.URL })
	case *network.EventLoadingFailed:
		l.update(func() { l.failures[ev.RequestID] = ev })
	case *network.EventResponseReceived:
		raw, _ := json.Marshal(ev.Response.Headers)
		l.saw("response headers of "+ev.Response.URL, string(raw))
	case *network.EventResponseReceivedExtraInfo:
		raw, _ := json.Marshal(ev.Headers)
		l.saw("raw response headers of request "+string(ev.RequestID), string(raw)+ev.HeadersText)
	}
}

func (l *networkLog) update(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f()
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *networkLog) saw(where, what string) {
	l.update(func() { l.seen = append(l.seen, sighting{where, what}) })
}

// failure returns the Network.loadingFailed event of a request to url,
// preferring one that carries a CORS reason (a blocked request may also
// report its preflight).
func (l *networkLog) failure(url string) (*network.EventLoadingFailed, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var found *network.EventLoadingFailed
	for id, ev := range l.failures {
		if l.urls[id] != url {
			continue
		}
		if found == nil || found.CorsErrorStatus == nil {
			found = ev
		}
	}
	return found, found != nil
}

// waitFailure waits until a request to url failed with a CORS reason, and
// returns that failure (or, at the timeout, any failure seen for url).
func (l *networkLog) waitFailure(url string, timeout time.Duration) (*network.EventLoadingFailed, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		changed := l.changed
		l.mu.Unlock()
		if ev, ok := l.failure(url); ok && ev.CorsErrorStatus != nil {
			return ev, nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			if ev, ok := l.failure(url); ok {
				return ev, nil
			}
			return nil, fmt.Errorf("no event within %v", timeout)
		}
	}
}

// find returns where the browser saw needle, or "".
func (l *networkLog) find(needle string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.seen {
		if strings.Contains(s.what, needle) {
			return s.where + ": " + s.what
		}
	}
	return ""
}
