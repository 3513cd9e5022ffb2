package gateway_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/caller/apikey"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
	"github.com/keyward/keyward/internal/ratelimit"
	rlredis "github.com/keyward/keyward/internal/ratelimit/redis"
	"github.com/keyward/keyward/internal/redisstore/redistest"
)

func forwardedFor(ip string) http.Header {
	return http.Header{"X-Forwarded-For": {ip}, "Origin": {"https://app.example.com"}}
}

const limitsConfig = `
secrets:
  github: { env: GITHUB_TOKEN }
cors:
  allow_origins: ["https://app.example.com"]
client_ip: { trusted_proxies: [%s] }
routes:
  - name: repos
    path: /repos
    upstream: "{{UP}}/user/repos"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
    limits: { rate: 1/m, burst: 2 }
`

func TestRateLimitPerClient(t *testing.T) {
	h := gatewaytest.New(t, fmt.Sprintf(limitsConfig, `"127.0.0.1/32"`), nil)
	t.Cleanup(h.Scan)
	for i, want := range []int{200, 200, 429} {
		res := h.Get("/repos", forwardedFor("198.51.100.7"))
		if res.Status != want {
			t.Fatalf("request %d: status %d, want %d: %s", i, res.Status, want, res.Body)
		}
		if want == 429 {
			if !strings.Contains(res.Body, `"code":"rate_limited"`) || res.Header.Get("Retry-After") == "" {
				t.Errorf("429 lacks its code or Retry-After: %v %s", res.Header, res.Body)
			}
			if res.Header.Get("RateLimit") == "" || res.Header.Get("RateLimit-Policy") == "" {
				t.Errorf("429 lacks the RateLimit headers: %v", res.Header)
			}
			if res.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
				t.Errorf("429 without CORS headers: a page could not read it")
			}
		}
	}
	// Another forwarded client has its own allowance.
	if res := h.Get("/repos", forwardedFor("198.51.100.8")); res.Status != 200 {
		t.Errorf("second client: %d", res.Status)
	}
	if got := len(h.Up.Take()); got != 3 {
		t.Errorf("upstream received %d requests, want 3 (refused ones never reach it)", got)
	}
}

func TestSpoofedForwardedForFromUntrustedPeerChangesNothing(t *testing.T) {
	h := gatewaytest.New(t, fmt.Sprintf(limitsConfig, ""), nil)
	t.Cleanup(h.Scan)
	var codes []int
	for i := range 4 {
		codes = append(codes, h.Get("/repos", forwardedFor(fmt.Sprintf("203.0.113.%d", i))).Status)
	}
	if fmt.Sprint(codes) != "[200 200 429 429]" {
		t.Errorf("statuses %v: rotating X-Forwarded-For from an untrusted peer must not buy new allowances", codes)
	}
}

func redisStore(t *testing.T, url string) ratelimit.Store {
	t.Helper()
	return rlredis.New(redistest.Client(t, url), rlredis.Options{})
}

// TestBudgetAcrossInstances: 50 goroutines as 20 clients behind a trusted
// proxy, spread over two gateway instances sharing one Redis, against a
// 1000/day budget: the upstream receives exactly 1000 requests.
func TestBudgetAcrossInstances(t *testing.T) {
	rs := redistest.Start(t)
	yaml := `
client_ip: { trusted_proxies: ["127.0.0.1/32"] }
routes:
  - name: paid
    path: /paid
    upstream: "{{UP}}/paid"
    # A generous store timeout: 50 goroutines under the race detector on
    # two cores can take longer than the 50ms default, and fail_open would
    # then let requests past the budget, as it is meant to.
    limits: { budget: 1000/day, store_timeout: 5s }
`
	withRedis := func(o *gateway.Options) { o.LimitStore = redisStore(t, rs.URL()) }
	h := gatewaytest.New(t, yaml, nil, withRedis)
	_, second := h.Another(withRedis)
	urls := []string{h.GW.URL, second.URL}

	var ok, exhausted, other atomic.Int64
	var wg sync.WaitGroup
	for g := range 50 {
		wg.Go(func() {
			for i := range 24 {
				req, _ := http.NewRequest("GET", urls[(g+i)%2]+"/paid", nil)
				req.Header.Set("X-Forwarded-For", fmt.Sprintf("192.0.2.%d", g%20))
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				res.Body.Close()
				switch {
				case res.StatusCode == 200:
					ok.Add(1)
				case res.StatusCode == 429:
					exhausted.Add(1)
				default:
					other.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := len(h.Up.Take()); got != 1000 {
		t.Errorf("upstream received %d requests, want exactly 1000", got)
	}
	if ok.Load() != 1000 || exhausted.Load() != 200 || other.Load() != 0 {
		t.Errorf("200s %d, 429s %d, others %d", ok.Load(), exhausted.Load(), other.Load())
	}
}

// TestStoreOutage: with Redis gone, fail_open routes keep serving and
// fail_closed routes answer 503, each within the store timeout; both
// recover when Redis is back.
func TestStoreOutage(t *testing.T) {
	rs := redistest.Start(t)
	yaml := `
routes:
  - name: open
    path: /open
    upstream: "{{UP}}/open"
    limits: { rate: 100/s, on_store_error: fail_open }
  - name: closed
    path: /closed
    upstream: "{{UP}}/closed"
    limits: { rate: 100/s, on_store_error: fail_closed }
`
	h := gatewaytest.New(t, yaml, nil, func(o *gateway.Options) { o.LimitStore = redisStore(t, rs.URL()) })
	t.Cleanup(h.Scan)
	check := func(when string, want map[string]int, wantCode string) {
		t.Helper()
		for path, status := range want {
			start := time.Now()
			res := h.Get(path, nil)
			if took := time.Since(start); took > time.Second {
				t.Errorf("%s %s took %v: a dead store must not stall requests", when, path, took)
			}
			if res.Status != status {
				t.Errorf("%s %s: %d, want %d: %s", when, path, res.Status, status, res.Body)
			}
			if status == 503 && !strings.Contains(res.Body, wantCode) {
				t.Errorf("%s %s: body %s", when, path, res.Body)
			}
		}
	}
	check("before", map[string]int{"/open": 200, "/closed": 200}, "")
	rs.Kill()
	for range 5 {
		check("during", map[string]int{"/open": 200, "/closed": 503}, `"code":"store_unavailable"`)
	}
	if !strings.Contains(h.Logs.String(), "store error") {
		t.Error("the outage was not logged")
	}
	rs.Restart()
	// Recovery is automatic; the breaker may need its cooldown to pass.
	deadline := time.Now().Add(10 * time.Second)
	for h.Get("/closed", nil).Status != 200 {
		if time.Now().After(deadline) {
			t.Fatal("fail_closed route did not recover after Redis came back")
		}
		time.Sleep(100 * time.Millisecond) // polling an external process's recovery
	}
	check("after", map[string]int{"/open": 200, "/closed": 200}, "")
}

// TestPerCallerLimitsAcrossInstances: per-caller client budgets keyed by
// the verified caller, not the address, are exact across two instances on
// one Redis: 8 API-key callers, all from the same address, 40 goroutines,
// a client budget of 25 each: every caller gets exactly 25 calls upstream.
func TestPerCallerLimitsAcrossInstances(t *testing.T) {
	rs := redistest.Start(t)
	dir := t.TempDir()
	keysFile := filepath.Join(dir, "keys.yaml")
	store := apikey.OpenFile(keysFile, apikey.FileOptions{})
	keys := make([]string, 8)
	for i := range keys {
		key, hash, err := apikey.Generate(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = key
		if err := store.Add(t.Context(), apikey.Record{Kind: "partners", Name: fmt.Sprintf("p%d", i), Hash: hash, Created: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	yaml := `
callers:
  partners:
    api_keys: { header: X-Api-Key, keys: ` + keysFile + ` }
routes:
  - name: paid
    path: /paid
    upstream: "{{UP}}/paid"
    callers: [partners]
    limits: { client_budget: 25/day, store_timeout: 5s }
`
	withRedis := func(o *gateway.Options) { o.LimitStore = redisStore(t, rs.URL()) }
	h := gatewaytest.New(t, yaml, nil, withRedis)
	t.Cleanup(h.Scan)
	_, second := h.Another(withRedis)
	urls := []string{h.GW.URL, second.URL}
	var okBy [8]atomic.Int64
	var other atomic.Int64
	var wg sync.WaitGroup
	for g := range 40 {
		wg.Go(func() {
			for i := range 10 {
				req, _ := http.NewRequest("GET", urls[(g+i)%2]+"/paid", nil)
				req.Header.Set("X-Api-Key", keys[g%8])
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				res.Body.Close()
				switch res.StatusCode {
				case 200:
					okBy[g%8].Add(1)
				case 429:
				default:
					other.Add(1)
				}
			}
		})
	}
	wg.Wait()
	for i := range okBy {
		if got := okBy[i].Load(); got != 25 {
			t.Errorf("caller p%d got %d calls through, want exactly 25", i, got)
		}
	}
	if got := len(h.Up.Take()); got != 8*25 || other.Load() != 0 {
		t.Errorf("upstream received %d, want %d; unexpected statuses: %d", got, 8*25, other.Load())
	}
}

// frozenStore is a limit store that never answers (a frozen Redis): each
// call blocks until its context ends, and records whether that context
// had already ended when the call began.
type frozenStore struct {
	mu      sync.Mutex
	expired []bool
}

func (f *frozenStore) wait(ctx context.Context) error {
	f.mu.Lock()
	f.expired = append(f.expired, ctx.Err() != nil)
	f.mu.Unlock()
	<-ctx.Done()
	return ctx.Err()
}

func (f *frozenStore) GCRA(ctx context.Context, _ time.Time, _ []ratelimit.RateCell) (bool, error) {
	return false, f.wait(ctx)
}

func (f *frozenStore) Budget(ctx context.Context, _ time.Time, _ []ratelimit.BudgetCell) (bool, error) {
	return false, f.wait(ctx)
}

func (f *frozenStore) Adjust(ctx context.Context, _, _ time.Time, _ []ratelimit.BudgetCell) error {
	return f.wait(ctx)
}

func (f *frozenStore) AdmittedOnFault(time.Time, []ratelimit.BudgetCell) {}

// TestStoreTimeoutPerRequest: on a frozen store, a request that checks a
// rate and then a budget waits store_timeout once in all, not once per
// check: the budget check finds the time used up and the fault policy
// answers at once (issue 15's "no request slower than the store timeout").
func TestStoreTimeoutPerRequest(t *testing.T) {
	store := &frozenStore{}
	h := gatewaytest.New(t, `
routes:
  - name: paid
    path: /paid
    upstream: "{{UP}}/paid"
    limits: { rate: 100/s, budget: 1000/day, on_store_error: fail_open, store_timeout: 20ms }
`, nil, func(o *gateway.Options) { o.LimitStore = store })
	if res := h.Get("/paid", nil); res.Status != 200 {
		t.Fatalf("fail_open on a frozen store: %d %s", res.Status, res.Body)
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if want := []bool{false}; fmt.Sprint(store.expired) != fmt.Sprint(want) {
		t.Errorf("store calls (context already ended at the call): %v, want %v (the budget check must not wait a second store_timeout)", store.expired, want)
	}
}
