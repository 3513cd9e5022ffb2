package security_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/cache"
	cacheredis "github.com/keyward/keyward/internal/cache/redis"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
	"github.com/keyward/keyward/internal/redisstore/redistest"
)

// cacheFaultsTimeout is the cached route's timeout and idle timeout.
const cacheFaultsTimeout = time.Second

// cacheFaultsConfig caches one route whose stale entries may replace an
// upstream failure for ten minutes.
const cacheFaultsConfig = `
cors:
  allow_origins: ["https://app.example.com"]
routes:
  - name: cached
    path: /cached
    upstream: "{{UP}}/api/cached"
    timeout: 1s
    idle_timeout: 1s
    cache: { ttl: 60s, stale_if_error: 10m }
`

// fakeClock is the cache's clock, moved by hand so an entry goes stale
// without waiting.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// switchable is an upstream whose behaviour a test changes between steps.
type switchable struct {
	h atomic.Pointer[http.HandlerFunc]
}

func (s *switchable) set(h http.HandlerFunc) { s.h.Store(&h) }

func (s *switchable) serve(w http.ResponseWriter, r *http.Request) { (*s.h.Load())(w, r) }

const cachedBody = `{"fresh":"once"}`

func cachedOK(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, cachedBody)
}

// slowFailure holds a failing answer back long enough for concurrent
// requests to join the call, as a struggling upstream does.
const slowFailure = 100 * time.Millisecond

// cutAfter answers a Content-Length of total and closes the connection
// after half of it.
func cutAfter(total int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		<-time.After(slowFailure)
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", total, strings.Repeat("x", total/2))
		_ = buf.Flush()
	}
}

type cachedResult struct {
	status              int
	cacheStatus, body   string
	allowOrigin, errMsg string
	elapsed             time.Duration
}

// short cuts a body to what an error message needs.
func short(body string) string {
	if len(body) > 80 {
		return body[:80] + "..."
	}
	return body
}

// concurrentGets sends n concurrent GET /cached from a page's origin.
func concurrentGets(h *gatewaytest.Harness, n int) []cachedResult {
	results := make([]cachedResult, n)
	tr := h.GW.NewTransport()
	tr.MaxIdleConnsPerHost, tr.DisableKeepAlives = n, true
	client := &http.Client{Transport: tr}
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			start := time.Now()
			res := &results[i]
			defer func() { res.elapsed = time.Since(start) }()
			req, _ := http.NewRequest(http.MethodGet, h.GW.URL+"/cached", nil)
			req.Header.Set("Origin", "https://app.example.com")
			r, err := client.Do(req)
			if err != nil {
				res.errMsg = err.Error()
				return
			}
			defer r.Body.Close()
			b, err := io.ReadAll(r.Body)
			if err != nil {
				res.errMsg = err.Error()
			}
			res.status, res.cacheStatus, res.body, res.allowOrigin = r.StatusCode, r.Header.Get("Cache-Status"), string(b), r.Header.Get("Access-Control-Allow-Origin")
		})
	}
	wg.Wait()
	return results
}

// TestCacheStaleIfErrorCoversFailures (issue 15.3): with a stale entry
// within stale_if_error, 20 concurrent requests for a key whose upstream
// cuts a Content-Length body midway (before or after keyward sent the
// head), hangs past the route timeout or answers 503 all get the stale
// entry, the upstream sees exactly one call, and nobody waits much longer
// than one route timeout. Before the fix a body cut after the head gave
// the leader's client a cut response, and each waiter called the upstream
// itself once the leader failed: 20 calls, and twice the timeout.
func TestCacheStaleIfErrorCoversFailures(t *testing.T) {
	const n = 20
	tests := []struct {
		name      string
		upstream  http.HandlerFunc
		fwdStatus int
	}{
		{"body cut after the head", cutAfter(256 << 10), http.StatusBadGateway},
		{"body cut before the head", cutAfter(1000), http.StatusBadGateway},
		{"hang past the route timeout", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, http.StatusGatewayTimeout},
		{"503", func(w http.ResponseWriter, r *http.Request) {
			<-time.After(slowFailure)
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "down")
		}, http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &fakeClock{t: time.Now()}
			up := &switchable{}
			up.set(cachedOK)
			h := gatewaytest.New(t, cacheFaultsConfig, up.serve, func(o *gateway.Options) {
				o.Cache = cache.New(cache.NewMemory(0, clk.Now), cache.Options{Now: clk.Now})
			})
			t.Cleanup(h.Scan)
			if res := h.Get("/cached", nil); res.Status != http.StatusOK || res.Body != cachedBody {
				t.Fatalf("filling the cache: %d %q", res.Status, res.Body)
			}
			only(t, h)
			clk.Advance(70 * time.Second)
			up.set(tt.upstream)

			results := concurrentGets(h, n)
			if got := h.Up.Take(); len(got) != 1 {
				t.Errorf("upstream calls = %d, want 1", len(got))
			}
			want := fmt.Sprintf("keyward; fwd=stale; fwd-status=%d; ttl=-10; detail=stale-if-error", tt.fwdStatus)
			for i, res := range results {
				if res.errMsg != "" || res.status != http.StatusOK || res.body != cachedBody || res.cacheStatus != want || res.allowOrigin != "https://app.example.com" {
					t.Errorf("request %d: %d %q (%d bytes) %q CORS %q err %q; want the stale entry (%s)", i, res.status, short(res.body), len(res.body), res.cacheStatus, res.allowOrigin, res.errMsg, want)
				}
				if res.elapsed > cacheFaultsTimeout*3/2 {
					t.Errorf("request %d took %v, want about one route timeout (%v) at most", i, res.elapsed, cacheFaultsTimeout)
				}
			}
		})
	}
}

// TestCacheFailureSharedWithoutStale (issue 15.3): without a stale entry,
// 20 concurrent requests for a key whose upstream hangs make one upstream
// call and all get the gateway's JSON 504, with their CORS headers, after
// one route timeout: the waiters get the leader's failure instead of
// calling the upstream themselves.
func TestCacheFailureSharedWithoutStale(t *testing.T) {
	const n = 20
	h := newHarness(t, cacheFaultsConfig, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	results := concurrentGets(h, n)
	if got := h.Up.Take(); len(got) != 1 {
		t.Errorf("upstream calls = %d, want 1", len(got))
	}
	collapsed := 0
	for i, res := range results {
		if res.status != http.StatusGatewayTimeout || errCode(res.body) != "upstream_timeout" || res.allowOrigin != "https://app.example.com" {
			t.Errorf("request %d: %d %q CORS %q err %q; want the JSON 504", i, res.status, short(res.body), res.allowOrigin, res.errMsg)
		}
		if res.cacheStatus == "keyward; fwd=uri-miss; fwd-status=504; collapsed" {
			collapsed++
		}
		if res.elapsed > cacheFaultsTimeout*3/2 {
			t.Errorf("request %d took %v, want about one route timeout (%v) at most", i, res.elapsed, cacheFaultsTimeout)
		}
	}
	if collapsed != n-1 {
		t.Errorf("%d responses passed on from the leader's call, want %d", collapsed, n-1)
	}
}

// TestCacheSurvivesRedisOutage (issue 15.6): with `store: redis` and
// Redis stopped mid-test, repeated requests for a cached key make no more
// upstream calls than with Redis up. Before the memory tier every request
// during the outage was a miss: a cached route's upstream calls went from
// 1 to 22,000 per 5 s.
func TestCacheSurvivesRedisOutage(t *testing.T) {
	rs := redistest.Start(t)
	h := gatewaytest.New(t, cacheFaultsConfig, cachedOK, func(o *gateway.Options) {
		o.Cache = cache.New(cacheredis.New(redistest.Client(t, rs.URL()), cacheredis.Options{}), cache.Options{})
	})
	t.Cleanup(h.Scan)
	calls := func(n int) int {
		t.Helper()
		for i := range n {
			if res := h.Get("/cached", nil); res.Status != http.StatusOK || res.Body != cachedBody {
				t.Fatalf("request %d: %d %q", i, res.Status, res.Body)
			}
		}
		return len(h.Up.Take())
	}
	if got := calls(1); got != 1 {
		t.Fatalf("filling the cache: %d upstream calls", got)
	}
	up := calls(50)
	rs.Kill()
	if down := calls(50); down > up {
		t.Errorf("with Redis stopped: %d upstream calls for 50 requests of a cached key, with Redis up %d", down, up)
	}
}
