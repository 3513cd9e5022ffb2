package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
	"github.com/keyward/keyward/internal/llm"
	"github.com/keyward/keyward/internal/llm/llmtest"
	"github.com/keyward/keyward/internal/ratelimit"
	"github.com/keyward/keyward/internal/redisstore/redistest"
)

const chatBody = `{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello there"}]}`

func moneyLLM() config.LLM {
	return config.LLM{API: "openai-chat", Models: []string{"gpt-4o-mini"}, MaxTokens: 100,
		Prices: map[string]config.ModelPrice{"gpt-4o-mini": {Input: "$1", Output: "$10"}}}
}

// worstCase is what one chat request of chatBody reserves.
func worstCase(t *testing.T) config.Money {
	t.Helper()
	p, err := llm.Compile(moneyLLM())
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.Prepare([]byte(chatBody), "/v1/chat/completions")
	if err != nil {
		t.Fatal(err)
	}
	return r.Reserve().Money
}

// TestMoneyBudgetCannotOvershoot (issue 12.3): 50 concurrent streamed
// requests on two instances sharing one Redis, against a money budget that
// fits 10 worst cases: at most 10 upstream calls are ever in flight, the
// others are refused before the upstream, and once the held streams end
// and settle to what they really cost, the money comes back.
func TestMoneyBudgetCannotOvershoot(t *testing.T) {
	rs := redistest.Start(t)
	release := make(chan struct{})
	up := llmtest.NewServer(t, llmtest.Config{API: "openai-chat", Input: 5, Output: 3,
		Pace: func(ctx context.Context, chunk int) error {
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}})
	wc := worstCase(t)
	budget := wc*10 + wc/2 // ten fit, the eleventh does not
	yaml := fmt.Sprintf(`
routes:
  - name: chat
    path: /chat
    methods: [POST]
    upstream: "%s/v1/chat/completions"
    timeout: 20s
    llm:
      api: openai-chat
      models: [gpt-4o-mini]
      max_tokens: 100
      prices: { gpt-4o-mini: { input: $1, output: $10 } }
    limits: { budget: "%s/day", store_timeout: 5s }
`, up.URL, budget)
	withRedis := func(o *gateway.Options) { o.LimitStore = redisStore(t, rs.URL()) }
	h := gatewaytest.New(t, yaml, nil, withRedis)
	t.Cleanup(h.Scan)
	_, second := h.Another(withRedis)
	urls := []string{h.GW.URL, second.URL}

	var ok, refused, other atomic.Int64
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			res, err := http.Post(urls[i%2]+"/chat", "application/json", strings.NewReader(chatBody))
			if err != nil {
				t.Error(err)
				return
			}
			defer res.Body.Close()
			switch res.StatusCode {
			case 200:
				ok.Add(1)
				_, _ = io.Copy(io.Discard, res.Body)
			case 429:
				refused.Add(1)
			default:
				other.Add(1)
			}
		})
	}
	// The refusals come at once; the ten admitted streams wait for release.
	deadline := time.Now().Add(20 * time.Second)
	for refused.Load()+other.Load() < 40 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // waiting on 50 concurrent clients' answers
	}
	close(release)
	wg.Wait()
	if ok.Load() != 10 || refused.Load() != 40 || other.Load() != 0 {
		t.Errorf("200s %d, 429s %d, others %d; want exactly 10 and 40", ok.Load(), refused.Load(), other.Load())
	}
	if got := up.MaxInFlight(); got > 10 {
		t.Errorf("%d upstream calls were in flight at once; the budget fits 10", got)
	}
	// Settled to the real cost (5 in, 3 out), the budget has room again.
	res, err := http.Post(h.GW.URL+"/chat", "application/json", strings.NewReader(chatBody))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Errorf("after settling: %d, want 200 (the reservations were given back)", res.StatusCode)
	}
}

// TestSpendCapAndPause (issue 12.5): a spend cap shared by every route
// stops them all with 503 spend_cap_reached (or the route's degraded
// answer); a pause set on one instance stops another within a second,
// without a reload.
func TestSpendCapAndPause(t *testing.T) {
	rs := redistest.Start(t)
	up := llmtest.NewServer(t, llmtest.Config{API: "openai-chat", Input: 5, Output: 3})
	wc := worstCase(t)
	yaml := fmt.Sprintf(`
spend_cap: "%s/month"
routes:
  - name: chat
    path: /chat
    methods: [POST]
    upstream: "%s/v1/chat/completions"
    llm:
      api: openai-chat
      models: [gpt-4o-mini]
      max_tokens: 100
      prices: { gpt-4o-mini: { input: $1, output: $10 } }
  - name: lookup
    path: /lookup
    upstream: "{{UP}}/lookup"
    price: "%s"
    capped_response: { status: 200, body: '{"degraded":true}' }
`, wc+wc/4, up.URL, wc*3/4)
	withRedis := func(o *gateway.Options) { o.LimitStore = redisStore(t, rs.URL()) }
	h := gatewaytest.New(t, yaml, nil, withRedis)
	t.Cleanup(h.Scan)
	_, second := h.Another(withRedis)

	post := func(base string) (int, string) {
		res, err := http.Post(base+"/chat", "application/json", strings.NewReader(chatBody))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	// The cap holds one chat worst case and a quarter: the first chat call
	// fits and settles to 5 in + 3 out ($0.000035); a lookup (three
	// quarters of a worst case) fits too, a second one does not, nor does
	// another chat reservation.
	if code, body := post(h.GW.URL); code != 200 {
		t.Fatalf("first chat: %d %s", code, body)
	}
	if res := h.Get("/lookup", nil); res.Status != 200 || strings.Contains(res.Body, "degraded") {
		t.Fatalf("lookup under the cap: %d %s", res.Status, res.Body)
	}
	if res := h.Get("/lookup", nil); res.Status != 200 || !strings.Contains(res.Body, `{"degraded":true}`) {
		t.Errorf("lookup past the cap: %d %s, want the capped_response", res.Status, res.Body)
	}
	if code, body := post(second.URL); code != 503 || !strings.Contains(body, "spend_cap_reached") {
		t.Errorf("chat past the cap on the other instance: %d %s", code, body)
	}
	h.Up.Take()
}

// TestPauseReachesEveryInstance: `keyward pause` writes to the store; an
// instance that did not receive the command stops calling the upstream
// within a second, and resumes as fast.
func TestPauseReachesEveryInstance(t *testing.T) {
	rs := redistest.Start(t)
	withRedis := func(o *gateway.Options) { o.LimitStore = redisStore(t, rs.URL()) }
	h := gatewaytest.New(t, `
routes:
  - { name: lookup, path: /lookup, upstream: "{{UP}}/lookup" }
`, nil, withRedis)
	t.Cleanup(h.Scan)
	admin, ok := redisStore(t, rs.URL()).(ratelimit.Pauses)
	if !ok {
		t.Fatal("the Redis store keeps no pauses")
	}
	if res := h.Get("/lookup", nil); res.Status != 200 {
		t.Fatalf("before: %d", res.Status)
	}
	wait := func(want int) {
		t.Helper()
		start := time.Now()
		for {
			res := h.Get("/lookup", nil)
			if res.Status == want {
				if want == 503 && errCodeOf(res.Body) != "paused" {
					t.Errorf("paused answer %s", res.Body)
				}
				return
			}
			if time.Since(start) > time.Second {
				t.Fatalf("status %d after %v, want %d within a second", res.Status, time.Since(start), want)
			}
			time.Sleep(20 * time.Millisecond) // polling another instance's view of the store
		}
	}
	if err := admin.Pause(t.Context(), "lookup", true); err != nil {
		t.Fatal(err)
	}
	h.Up.Take()
	wait(503)
	if err := admin.Pause(t.Context(), ratelimit.AllRoutes, false); err != nil {
		t.Fatal(err)
	}
	wait(200)
	h.Up.Take()
}

func errCodeOf(body string) string {
	_, rest, _ := strings.Cut(body, `"code":"`)
	code, _, _ := strings.Cut(rest, `"`)
	return code
}
