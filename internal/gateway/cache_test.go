package gateway_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/cache"
	cacheredis "github.com/keyward/keyward/internal/cache/redis"
	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
	rlredis "github.com/keyward/keyward/internal/ratelimit/redis"
	"github.com/keyward/keyward/internal/redisstore/redistest"
)

const cacheConfig = `
secrets:
  github: { env: GITHUB_TOKEN }
routes:
  - name: repos
    path: /repos
    upstream: "{{UP}}/user/repos"
    query: { allow: [page] }
    headers: { set: { Authorization: "Bearer {secret.github}" } }
    cache: { ttl: 1h, vary: [Accept-Language] }
    limits: { budget: 3/day }
  - name: cookie
    path: /cookie
    upstream: "{{UP}}/cookie"
    cache: { ttl: 1h }
`

// echoingUpstream answers with a body that quotes the credential, so a
// stored entry that was not scrubbed would show it.
func echoingUpstream(w http.ResponseWriter, r *http.Request) {
	if strings.HasSuffix(r.URL.Path, "/cookie") {
		w.Header().Set("Set-Cookie", "session=1")
	}
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"auth":"`+r.Header.Get("Authorization")+`","lang":"`+r.Header.Get("Accept-Language")+`"}`)
}

func TestCache(t *testing.T) {
	h := gatewaytest.New(t, cacheConfig, echoingUpstream)
	t.Cleanup(h.Scan)

	first := h.Get("/repos?page=1&x=ignored", nil)
	if first.Status != 200 || !strings.Contains(first.Header.Get("Cache-Status"), "fwd=uri-miss") {
		t.Fatalf("first: %d %q", first.Status, first.Header.Get("Cache-Status"))
	}
	if strings.Contains(first.Body, gatewaytest.GitHub) || !strings.Contains(first.Body, "[REDACTED]") {
		t.Errorf("first body not scrubbed: %s", first.Body)
	}
	// A parameter the route does not allow is not part of the key.
	hit := h.Get("/repos?page=1", nil)
	if !strings.HasPrefix(hit.Header.Get("Cache-Status"), "keyward; hit") || hit.Body != first.Body {
		t.Errorf("second: %q %s", hit.Header.Get("Cache-Status"), hit.Body)
	}
	if got := len(h.Up.Take()); got != 1 {
		t.Errorf("upstream calls: %d, want 1", got)
	}
	if vary := strings.Join(hit.Header.Values("Vary"), ", "); !strings.Contains(vary, "Accept-Language") {
		t.Errorf("Vary %q lacks the cache's vary header", vary)
	}

	// Hits do not spend the route budget (3/day): it bounds upstream calls.
	for range 10 {
		if res := h.Get("/repos?page=1", nil); res.Status != 200 {
			t.Fatalf("hit refused: %d %s", res.Status, res.Body)
		}
	}
	if res := h.Get("/repos?page=2", http.Header{"Accept-Language": {"de"}}); res.Status != 200 {
		t.Fatalf("second miss: %d", res.Status)
	}
	if res := h.Get("/repos?page=3", nil); res.Status != 200 {
		t.Fatalf("third miss: %d", res.Status)
	}
	if res := h.Get("/repos?page=4", nil); res.Status != 429 || !strings.Contains(res.Body, "budget_exhausted") {
		t.Errorf("fourth miss: %d %s, want the budget spent", res.Status, res.Body)
	}
	if got := len(h.Up.Take()); got != 2 {
		t.Errorf("upstream calls: %d, want 2", got)
	}

	// A response that set a cookie is not stored (and the cookie is dropped).
	for range 2 {
		res := h.Get("/cookie", nil)
		if res.Header.Get("Set-Cookie") != "" || strings.Contains(res.Header.Get("Cache-Status"), "hit") {
			t.Errorf("cookie response: %v", res.Header)
		}
	}
	if got := len(h.Up.Take()); got != 2 {
		t.Errorf("cookie upstream calls: %d, want 2", got)
	}
}

// counting counts requests that entered the gateway, so the upstream can
// hold its answer until every concurrent request is waiting.
type counting struct {
	next    http.Handler
	entered atomic.Int64
}

func (c *counting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.entered.Add(1)
	c.next.ServeHTTP(w, r)
}

// coalesce sends n identical requests at once, spread over the servers,
// with the upstream answering only when all n have entered a gateway.
func coalesce(t *testing.T, n int, up *gatewaytest.Upstream, gateways ...http.Handler) []string {
	var cs []*counting
	var urls []string
	for _, g := range gateways {
		c := &counting{next: g}
		srv := httptest.NewServer(c)
		t.Cleanup(srv.Close)
		cs = append(cs, c)
		urls = append(urls, srv.URL)
	}
	entered := func() int64 {
		var sum int64
		for _, c := range cs {
			sum += c.entered.Load()
		}
		return sum
	}
	up.Handler = func(w http.ResponseWriter, r *http.Request) {
		deadline := time.Now().Add(10 * time.Second)
		for entered() < int64(n) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond) // waiting for the test's own clients
		}
		echoingUpstream(w, r)
	}
	bodies := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			res, err := http.Get(urls[i%len(urls)] + "/repos?page=9")
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 {
				t.Errorf("status %d: %s", res.StatusCode, b)
			}
			bodies[i] = string(b)
		})
	}
	wg.Wait()
	return bodies
}

func TestCacheCoalescesConcurrentMisses(t *testing.T) {
	h := gatewaytest.New(t, strings.Replace(cacheConfig, "budget: 3/day", "budget: 1000/day", 1), nil)
	t.Cleanup(h.Scan)
	bodies := coalesce(t, 200, h.Up, h.Gateway)
	if got := len(h.Up.Take()); got != 1 {
		t.Errorf("200 concurrent misses made %d upstream calls, want 1", got)
	}
	for i, b := range bodies {
		if b != bodies[0] || !strings.Contains(b, "[REDACTED]") {
			t.Fatalf("response %d differs: %q vs %q", i, b, bodies[0])
		}
	}
}

func TestCacheCoalescesAcrossInstancesOnRedis(t *testing.T) {
	rs := redistest.Start(t)
	shared := func(o *gateway.Options) {
		c := redistest.Client(t, rs.URL())
		o.LimitStore = rlredis.New(c, rlredis.Options{})
		o.Cache = cache.New(cacheredis.New(c, cacheredis.Options{}), cache.Options{Timeout: 5 * time.Second})
	}
	yaml := strings.Replace(cacheConfig, "budget: 3/day", "budget: 1000/day, store_timeout: 5s", 1)
	h := gatewaytest.New(t, yaml, nil, shared)
	second, _ := h.Another(shared)
	third, _ := h.Another(shared)
	coalesce(t, 200, h.Up, h.Gateway, second, third)
	// One lock in Redis: one upstream call in total, not one per instance.
	if got := len(h.Up.Take()); got != 1 {
		t.Errorf("200 concurrent misses on three instances made %d upstream calls, want exactly 1", got)
	}
}

// TestCachedRouteCannotTransformItsRequest: the cache keys on the
// client's GET; a request transform (or another upstream method) would
// build a request the key does not describe.
func TestCachedRouteCannotTransformItsRequest(t *testing.T) {
	f, err := config.Parse("keyward.yaml", []byte(`
routes:
  - name: search
    path: /search
    upstream: "https://api.example.com/search"
    cache: { ttl: 1m }
    transform: { request: '{q: $query.q}', method: POST }
`))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = gateway.Compile(f, gateway.Options{})
	if err == nil || !strings.Contains(err.Error(), "keyward.yaml:6: routes[0].cache: a cached route cannot have a request transform") {
		t.Errorf("compile error: %v", err)
	}
}
