// Package storetest is the conformance suite every ratelimit.Store must
// pass. The memory and Redis stores run the same table through the same
// Limiter, which is how "identical semantics in memory and Redis" is kept
// true rather than merely intended.
package storetest

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/ratelimit"
)

// Open returns two stores that share state, as two gateway instances
// sharing one backend would see it, and that share nothing with stores
// returned by earlier calls. A single-process store may return itself
// twice.
type Open func(t *testing.T) (a, b ratelimit.Store)

// Clock is a fake clock safe for concurrent use.
type Clock struct{ ns atomic.Int64 }

// NewClock returns a Clock reading t.
func NewClock(t time.Time) *Clock {
	c := &Clock{}
	c.Set(t)
	return c
}

// Now returns the clock's time; pass it as ratelimit.Options.Now.
func (c *Clock) Now() time.Time { return time.Unix(0, c.ns.Load()).UTC() }

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) { c.ns.Store(t.UnixNano()) }

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// Run runs the whole suite against the stores open returns.
func Run(t *testing.T, open Open) {
	t.Run("Limiter", func(t *testing.T) { TestLimiter(t, open) })
	t.Run("Accuracy", func(t *testing.T) { TestAccuracy(t, open) })
	t.Run("BudgetExact", func(t *testing.T) { TestBudgetExact(t, open) })
	t.Run("WideExact", func(t *testing.T) { TestWideExact(t, open) })
	t.Run("Adjust", func(t *testing.T) { TestAdjust(t, open) })
	t.Run("Reserve", func(t *testing.T) { TestReserve(t, open) })
	t.Run("ReserveConcurrent", func(t *testing.T) { TestReserveConcurrent(t, open) })
	t.Run("Pauses", func(t *testing.T) { TestPauses(t, open) })
}

// start is a Saturday noon, far from any window edge unless a case moves it.
var start = time.Date(2026, time.March, 14, 12, 0, 0, 0, time.UTC)

// A step is one request, handled as the gateway does: AllowRate, then, if
// that allowed it, Spend.
type step struct {
	advance  time.Duration // before the request
	limiter  int           // index into the case's limiters
	instance int           // 0: store a, 1: store b
	client   string
	wide     string // the client's wide network, or ""
	repeat   int    // run the step this many times (0 means 1), each must match
	want     outcome
	headers  http.Header // if not nil, the exact headers SetHeaders writes
}

type outcome struct {
	Allowed                    bool
	Reason                     ratelimit.Reason
	Wide                       bool
	Rate, ClientBudget, Budget ratelimit.Decision
}

// request is what the gateway does with one request: the rate when it
// arrives, the budgets before it goes upstream. The outcome combines both
// results, and h, if not nil, receives both results' header fields.
func request(ctx context.Context, l *ratelimit.Limiter, c ratelimit.Client, h http.Header) (outcome, error) {
	res := l.AllowRate(ctx, c)
	if h != nil {
		res.SetHeaders(h)
	}
	got := outcome{Allowed: res.Allowed, Reason: res.Reason, Wide: res.Wide, Rate: res.Rate}
	if res.Err != nil || !res.Allowed {
		return got, res.Err
	}
	res = l.Spend(ctx, c)
	if h != nil {
		res.SetHeaders(h)
	}
	got.Allowed, got.Reason, got.Wide = res.Allowed, res.Reason, res.Wide
	got.ClientBudget, got.Budget = res.ClientBudget, res.Budget
	return got, res.Err
}

func allow(rate, cb, budget ratelimit.Decision) outcome {
	return outcome{Allowed: true, Rate: rate, ClientBudget: cb, Budget: budget}
}

func rate(remaining int64, reset time.Duration) ratelimit.Decision {
	return ratelimit.Decision{Allowed: true, Remaining: remaining, Reset: reset}
}

func money(remaining int64, reset time.Duration) ratelimit.Decision {
	return ratelimit.Decision{Allowed: true, Remaining: remaining, Unit: ratelimit.Money, Reset: reset}
}

func denied(reset, retry time.Duration) ratelimit.Decision {
	return ratelimit.Decision{Reset: reset, RetryAfter: retry}
}

var (
	tenPerSecond = ratelimit.Rate{Count: 10, Per: time.Second} // 100ms per request
	none         ratelimit.Decision
	ms           = time.Millisecond
)

// TestLimiter runs the limiter table: GCRA arithmetic, rejected requests
// not counted, budgets and their windows, wide networks, what a refusal
// counts, shared state between instances, and the header fields.
func TestLimiter(t *testing.T, open Open) {
	tests := []struct {
		name     string
		start    time.Time
		limiters []ratelimit.Options // Name, Store and Now are filled in
		steps    []step
	}{
		{
			name:     "burst then deny",
			limiters: []ratelimit.Options{{Rate: tenPerSecond, Burst: 3}},
			steps: []step{
				{client: "c1", want: allow(rate(2, 100*ms), none, none)},
				{client: "c1", want: allow(rate(1, 200*ms), none, none)},
				{client: "c1", want: allow(rate(0, 300*ms), none, none)},
				{client: "c1", want: outcome{Reason: ratelimit.ReasonRate, Rate: denied(300*ms, 100*ms)}},
				{advance: 40 * ms, client: "c1", want: outcome{Reason: ratelimit.ReasonRate, Rate: denied(260*ms, 60*ms)}},
				{advance: 60 * ms, client: "c1", want: allow(rate(0, 300*ms), none, none)},
			},
		},
		{
			name:     "rejected requests are not counted",
			limiters: []ratelimit.Options{{Rate: tenPerSecond, Burst: 1}},
			steps: []step{
				{client: "c1", want: allow(rate(0, 100*ms), none, none)},
				{client: "c1", repeat: 50, want: outcome{Reason: ratelimit.ReasonRate, Rate: denied(100*ms, 100*ms)}},
				{advance: 99 * ms, client: "c1", want: outcome{Reason: ratelimit.ReasonRate, Rate: denied(1*ms, 1*ms)}},
				{advance: 1 * ms, client: "c1", want: allow(rate(0, 100*ms), none, none)},
			},
		},
		{
			name:     "burst below one means one",
			limiters: []ratelimit.Options{{Rate: tenPerSecond}},
			steps: []step{
				{client: "c1", want: allow(rate(0, 100*ms), none, none)},
				{client: "c1", want: outcome{Reason: ratelimit.ReasonRate, Rate: denied(100*ms, 100*ms)}},
			},
		},
		{
			name:     "partial and full refill",
			limiters: []ratelimit.Options{{Rate: tenPerSecond, Burst: 3}},
			steps: []step{
				{client: "c1", repeat: 3, want: outcome{Allowed: true}}, // checked loosely below
				{advance: 150 * ms, client: "c1", want: allow(rate(0, 250*ms), none, none)},
				{client: "c1", want: outcome{Reason: ratelimit.ReasonRate, Rate: denied(250*ms, 50*ms)}},
				{advance: 10 * time.Second, client: "c1", want: allow(rate(2, 100*ms), none, none)},
			},
		},
		{
			name:     "clients are independent",
			limiters: []ratelimit.Options{{Rate: tenPerSecond, Burst: 1}},
			steps: []step{
				{client: "c1", want: allow(rate(0, 100*ms), none, none)},
				{client: "c1", want: outcome{Reason: ratelimit.ReasonRate, Rate: denied(100*ms, 100*ms)}},
				{client: "c2", want: allow(rate(0, 100*ms), none, none)},
				{client: "2001:db8::/64", want: allow(rate(0, 100*ms), none, none)},
			},
		},
		{
			name:     "instances share one limit",
			limiters: []ratelimit.Options{{Rate: tenPerSecond, Burst: 2}},
			steps: []step{
				{instance: 0, client: "c1", want: allow(rate(1, 100*ms), none, none)},
				{instance: 1, client: "c1", want: allow(rate(0, 200*ms), none, none)},
				{instance: 0, client: "c1", want: outcome{Reason: ratelimit.ReasonRate, Rate: denied(200*ms, 100*ms)}},
				{instance: 1, client: "c1", want: outcome{Reason: ratelimit.ReasonRate, Rate: denied(200*ms, 100*ms)}},
			},
		},
		{
			name: "limiters with different names do not share",
			limiters: []ratelimit.Options{
				{Name: "one", Rate: tenPerSecond, Burst: 1},
				{Name: "two", Rate: tenPerSecond, Burst: 1},
			},
			steps: []step{
				{limiter: 0, client: "c1", want: allow(rate(0, 100*ms), none, none)},
				{limiter: 1, client: "c1", want: allow(rate(0, 100*ms), none, none)},
			},
		},
		{
			name:     "route budget across clients and instances",
			limiters: []ratelimit.Options{{Budget: ratelimit.Budget{Limit: 3, Window: ratelimit.Minute}}},
			steps: []step{
				{instance: 0, client: "c1", want: allow(none, none, rate(2, time.Minute))},
				{instance: 1, client: "c2", want: allow(none, none, rate(1, time.Minute))},
				{advance: 30 * time.Second, instance: 0, client: "c3", want: allow(none, none, rate(0, 30*time.Second))},
				{instance: 1, client: "c4", want: outcome{Reason: ratelimit.ReasonBudget, Budget: denied(30*time.Second, 30*time.Second)}},
				{advance: 10 * time.Second, instance: 0, client: "c4", want: outcome{Reason: ratelimit.ReasonBudget, Budget: denied(20*time.Second, 20*time.Second)}},
				{advance: 20 * time.Second, instance: 1, client: "c4", want: allow(none, none, rate(2, time.Minute))},
			},
		},
		{
			name:     "monthly budget rolls over at the calendar month",
			start:    time.Date(2026, time.January, 31, 23, 59, 59, 0, time.UTC),
			limiters: []ratelimit.Options{{Budget: ratelimit.Budget{Limit: 1, Window: ratelimit.Month}}},
			steps: []step{
				{client: "c1", want: allow(none, none, rate(0, time.Second))},
				{client: "c1", want: outcome{Reason: ratelimit.ReasonBudget, Budget: denied(time.Second, time.Second)}},
				{advance: time.Second, client: "c1", want: allow(none, none, rate(0, 28*24*time.Hour))},
			},
		},
		{
			name: "client budget is per client",
			limiters: []ratelimit.Options{{
				ClientBudget: ratelimit.Budget{Limit: 2, Window: ratelimit.Hour},
				Budget:       ratelimit.Budget{Limit: 100, Window: ratelimit.Day},
			}},
			steps: []step{
				{client: "c1", want: allow(none, rate(1, time.Hour), rate(99, 12*time.Hour))},
				{client: "c1", want: allow(none, rate(0, time.Hour), rate(98, 12*time.Hour))},
				{client: "c1", want: outcome{Reason: ratelimit.ReasonClientBudget, ClientBudget: denied(time.Hour, time.Hour), Budget: rate(98, 12*time.Hour)}},
				{client: "c2", want: allow(none, rate(1, time.Hour), rate(97, 12*time.Hour))},
			},
		},
		{
			// A request the budget refuses was still sent: the rate counts
			// it, as it counts one the gateway refuses for a bad parameter.
			// The second limiter has the same name and rate but no budget:
			// it reads the rate state the first one left behind.
			name: "a budget refusal costs the client rate",
			limiters: []ratelimit.Options{
				{Rate: tenPerSecond, Burst: 2, Budget: ratelimit.Budget{Limit: 1, Window: ratelimit.Minute}},
				{Rate: tenPerSecond, Burst: 2},
			},
			steps: []step{
				{client: "c1", want: allow(rate(1, 100*ms), none, rate(0, time.Minute))},
				{instance: 1, client: "c1", want: outcome{Reason: ratelimit.ReasonBudget, Rate: rate(0, 200*ms), Budget: denied(time.Minute, time.Minute)}},
				{limiter: 1, client: "c1", want: outcome{Reason: ratelimit.ReasonRate, Rate: denied(200*ms, 100*ms)}},
			},
		},
		{
			name: "a client budget refusal costs the client rate",
			limiters: []ratelimit.Options{
				{Rate: tenPerSecond, Burst: 2, ClientBudget: ratelimit.Budget{Limit: 1, Window: ratelimit.Minute}},
				{Rate: tenPerSecond, Burst: 2},
			},
			steps: []step{
				{client: "c1", want: allow(rate(1, 100*ms), rate(0, time.Minute), none)},
				{client: "c1", want: outcome{Reason: ratelimit.ReasonClientBudget, Rate: rate(0, 200*ms), ClientBudget: denied(time.Minute, time.Minute)}},
				{limiter: 1, client: "c1", want: outcome{Reason: ratelimit.ReasonRate, Rate: denied(200*ms, 100*ms)}},
			},
		},
		{
			name: "a route budget refusal does not count the client budget",
			limiters: []ratelimit.Options{
				{ClientBudget: ratelimit.Budget{Limit: 5, Window: ratelimit.Hour}, Budget: ratelimit.Budget{Limit: 1, Window: ratelimit.Hour}},
				{ClientBudget: ratelimit.Budget{Limit: 5, Window: ratelimit.Hour}},
			},
			steps: []step{
				{client: "c1", want: allow(none, rate(4, time.Hour), rate(0, time.Hour))},
				// The first limiter's budget is spent; a fresh instance does not
				// know yet and asks the store.
				{instance: 1, client: "c1", want: outcome{Reason: ratelimit.ReasonBudget, ClientBudget: rate(4, time.Hour), Budget: denied(time.Hour, time.Hour)}},
				{limiter: 1, client: "c1", want: allow(none, rate(3, time.Hour), none)},
			},
		},
		{
			// Rate 10/s and burst 1 per client; the network, twice that:
			// 20/s (50ms a request) and burst 2.
			name:     "a wide network shares WideFactor clients' rate",
			limiters: []ratelimit.Options{{Rate: tenPerSecond, Burst: 1, WideFactor: 2}},
			steps: []step{
				{client: "n1:1", wide: "n1", want: allow(rate(0, 100*ms), none, none)},
				{instance: 1, client: "n1:2", wide: "n1", want: allow(rate(0, 100*ms), none, none)},
				// A third client of n1 has its own allowance; the network has
				// none left until 50ms from now.
				{client: "n1:3", wide: "n1", repeat: 3, want: outcome{Reason: ratelimit.ReasonRate, Wide: true,
					Rate: ratelimit.Decision{Reset: 100 * ms, RetryAfter: 50 * ms}}},
				{client: "n2:1", wide: "n2", want: allow(rate(0, 100*ms), none, none)},
				{client: "v4", want: allow(rate(0, 100*ms), none, none)},
				// n1:3's refusals were counted neither at n1:3 nor at n1: one
				// emission of the network later it is admitted, and nobody
				// else is.
				{advance: 50 * ms, instance: 1, client: "n1:3", wide: "n1", want: allow(rate(0, 100*ms), none, none)},
				{client: "n1:4", wide: "n1", want: outcome{Reason: ratelimit.ReasonRate, Wide: true,
					Rate: ratelimit.Decision{Reset: 100 * ms, RetryAfter: 50 * ms}}},
			},
		},
		{
			name:     "a client's own refusal does not count its network",
			limiters: []ratelimit.Options{{Rate: tenPerSecond, Burst: 1, WideFactor: 2}},
			steps: []step{
				{client: "n1:1", wide: "n1", want: allow(rate(0, 100*ms), none, none)},
				{client: "n1:1", wide: "n1", repeat: 5, want: outcome{Reason: ratelimit.ReasonRate,
					Rate: ratelimit.Decision{Reset: 100 * ms, RetryAfter: 100 * ms}}},
				{instance: 1, client: "n1:2", wide: "n1", want: allow(rate(0, 100*ms), none, none)},
			},
		},
		{
			// Client budget 2/h per client, so 4/h for the network.
			name: "a wide network shares WideFactor client budgets",
			limiters: []ratelimit.Options{{
				WideFactor:   2,
				ClientBudget: ratelimit.Budget{Limit: 2, Window: ratelimit.Hour},
				Budget:       ratelimit.Budget{Limit: 100, Window: ratelimit.Day},
			}},
			steps: []step{
				{client: "n1:1", wide: "n1", want: allow(none, rate(1, time.Hour), rate(99, 12*time.Hour))},
				{instance: 1, client: "n1:1", wide: "n1", want: allow(none, rate(0, time.Hour), rate(98, 12*time.Hour))},
				// Refused by its own budget: the network and the route count
				// nothing.
				{client: "n1:1", wide: "n1", repeat: 3, want: outcome{Reason: ratelimit.ReasonClientBudget,
					ClientBudget: denied(time.Hour, time.Hour), Budget: rate(98, 12*time.Hour)}},
				{client: "n1:2", wide: "n1", want: allow(none, rate(1, time.Hour), rate(97, 12*time.Hour))},
				{instance: 1, client: "n1:2", wide: "n1", want: allow(none, rate(0, time.Hour), rate(96, 12*time.Hour))},
				// Refused by the network: n1:3 and the route count nothing.
				{client: "n1:3", wide: "n1", repeat: 3, want: outcome{Reason: ratelimit.ReasonClientBudget, Wide: true,
					ClientBudget: denied(time.Hour, time.Hour), Budget: rate(96, 12*time.Hour)}},
				{client: "n2:1", wide: "n2", want: allow(none, rate(1, time.Hour), rate(95, 12*time.Hour))},
				{client: "v4", want: allow(none, rate(1, time.Hour), rate(94, 12*time.Hour))},
			},
		},
		{
			name: "headers when the wide network refuses",
			limiters: []ratelimit.Options{{
				Rate: tenPerSecond, Burst: 1, WideFactor: 1,
				ClientBudget: ratelimit.Budget{Limit: 5, Window: ratelimit.Hour},
			}},
			steps: []step{
				{client: "n1:1", wide: "n1", want: allow(rate(0, 100*ms), rate(4, time.Hour), none)},
				{advance: 40 * ms, client: "n1:2", wide: "n1", want: outcome{Reason: ratelimit.ReasonRate, Wide: true,
					Rate: ratelimit.Decision{Reset: 60 * ms, RetryAfter: 60 * ms}}, headers: http.Header{
					"Ratelimit-Policy": {`"rate";q=10;w=1`},
					"Ratelimit":        {`"rate";r=0;t=1`},
					"Retry-After":      {"1"},
				}},
			},
		},
		{
			name: "headers when allowed",
			limiters: []ratelimit.Options{{
				Rate: tenPerSecond, Burst: 3,
				Budget: ratelimit.Budget{Limit: 3, Window: ratelimit.Minute},
			}},
			steps: []step{
				{client: "c1", want: allow(rate(2, 100*ms), none, rate(2, time.Minute)), headers: http.Header{
					"Ratelimit-Policy": {`"rate";q=10;w=1, "budget";q=3;w=60`},
					"Ratelimit":        {`"rate";r=2;t=1, "budget";r=2;t=60`},
				}},
			},
		},
		{
			name:     "headers when rate limited",
			limiters: []ratelimit.Options{{Rate: ratelimit.Rate{Count: 1, Per: 10 * time.Second}, Burst: 1}},
			steps: []step{
				{client: "c1", want: allow(rate(0, 10*time.Second), none, none)},
				{advance: 2500 * ms, client: "c1", want: outcome{Reason: ratelimit.ReasonRate, Rate: denied(7500*ms, 7500*ms)}, headers: http.Header{
					"Ratelimit-Policy": {`"rate";q=1;w=10`},
					"Ratelimit":        {`"rate";r=0;t=8`},
					"Retry-After":      {"8"},
				}},
			},
		},
		{
			name: "headers when the budget is spent",
			limiters: []ratelimit.Options{{
				ClientBudget: ratelimit.Budget{Limit: 100, Window: ratelimit.Month},
				Budget:       ratelimit.Budget{Limit: 1, Window: ratelimit.Day},
			}},
			steps: []step{
				{client: "c1", want: allow(none, rate(99, 18*24*time.Hour-12*time.Hour), rate(0, 12*time.Hour))},
				{client: "c1", want: outcome{Reason: ratelimit.ReasonBudget, ClientBudget: rate(99, 18*24*time.Hour-12*time.Hour), Budget: denied(12*time.Hour, 12*time.Hour)}, headers: http.Header{
					"Ratelimit-Policy": {`"client-budget";q=100;w=2592000, "budget";q=1;w=86400`},
					"Ratelimit":        {`"client-budget";r=99;t=1512000, "budget";r=0;t=43200`},
					"Retry-After":      {"43200"},
				}},
				// Now this instance knows the budget is spent and does not ask
				// the store, so the client budget is not checked at all.
				{client: "c1", want: outcome{Reason: ratelimit.ReasonBudget, Budget: denied(12*time.Hour, 12*time.Hour)}, headers: http.Header{
					"Ratelimit-Policy": {`"client-budget";q=100;w=2592000, "budget";q=1;w=86400`},
					"Ratelimit":        {`"budget";r=0;t=43200`},
					"Retry-After":      {"43200"},
				}},
			},
		},
		{
			// A price of $0.25 a call against $0.60 a day per client and $1
			// a day for the route, in micro-dollars.
			name: "money budgets count the price",
			limiters: []ratelimit.Options{{
				Price:        250_000,
				ClientBudget: ratelimit.Budget{Limit: 600_000, Window: ratelimit.Day, Unit: ratelimit.Money},
				Budget:       ratelimit.Budget{Limit: 1_000_000, Window: ratelimit.Day, Unit: ratelimit.Money},
			}},
			steps: []step{
				{client: "c1", want: allow(none, money(350_000, 12*time.Hour), money(750_000, 12*time.Hour))},
				{instance: 1, client: "c1", want: allow(none, money(100_000, 12*time.Hour), money(500_000, 12*time.Hour))},
				// Refused, with $0.10 left: Remaining says what is left, even
				// when it is less than a call costs.
				{client: "c1", want: outcome{Reason: ratelimit.ReasonClientBudget,
					ClientBudget: ratelimit.Decision{Remaining: 100_000, Unit: ratelimit.Money, Reset: 12 * time.Hour, RetryAfter: 12 * time.Hour}, Budget: money(500_000, 12*time.Hour)}},
				{client: "c2", want: allow(none, money(350_000, 12*time.Hour), money(250_000, 12*time.Hour))},
				{instance: 1, client: "c3", want: allow(none, money(350_000, 12*time.Hour), money(0, 12*time.Hour)), headers: http.Header{
					"Ratelimit-Policy": {`"client-budget";q=600000;qu="usd-micros";w=86400, "budget";q=1000000;qu="usd-micros";w=86400`},
					"Ratelimit":        {`"client-budget";r=350000;t=43200, "budget";r=0;t=43200`},
				}},
				{client: "c4", want: outcome{Reason: ratelimit.ReasonBudget, ClientBudget: money(600_000, 12*time.Hour),
					Budget: ratelimit.Decision{Unit: ratelimit.Money, Reset: 12 * time.Hour, RetryAfter: 12 * time.Hour}}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := open(t)
			startAt := start
			if !tt.start.IsZero() {
				startAt = tt.start
			}
			clock := NewClock(startAt)
			limiters := make([][2]*ratelimit.Limiter, len(tt.limiters))
			for i, o := range tt.limiters {
				if o.Name == "" {
					o.Name = "route"
				}
				o.Now = clock.Now
				for j, s := range []ratelimit.Store{a, b} {
					o.Store = s
					l, err := ratelimit.New(o)
					if err != nil {
						t.Fatal(err)
					}
					limiters[i][j] = l
				}
			}
			for i, s := range tt.steps {
				clock.Advance(s.advance)
				for n := range max(s.repeat, 1) {
					h := http.Header{}
					got, err := request(context.Background(), limiters[s.limiter][s.instance], ratelimit.Client{Key: s.client, Wide: s.wide}, h)
					if err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
					want := s.want
					if want == (outcome{Allowed: true}) {
						want = got
					}
					if diff := cmp.Diff(want, got); diff != "" {
						t.Fatalf("step %d (request %d): result mismatch (-want +got):\n%s", i, n, diff)
					}
					if s.headers != nil {
						if diff := cmp.Diff(s.headers, h); diff != "" {
							t.Errorf("step %d: headers mismatch (-want +got):\n%s", i, diff)
						}
					}
				}
			}
		})
	}
}

// TestAccuracy is the acceptance test: four concurrent clients
// hammer one key at rate 100/s with burst 10 for ten seconds, on one
// instance and split over two instances. Time is simulated in 2 ms rounds
// in which each client sends one request, concurrently with the others, so
// the offered load is 2000 requests per second, twenty times the rate, and
// the test takes as long as 20,000 store calls, not ten seconds.
func TestAccuracy(t *testing.T, open Open) {
	const (
		clients = 4
		seconds = 10
		round   = 2 * time.Millisecond
		rounds  = int(seconds * time.Second / round)
		perSec  = 100
		burst   = 10
	)
	for _, instances := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d instances", instances), func(t *testing.T) {
			a, b := open(t)
			clock := NewClock(start)
			var ls [2]*ratelimit.Limiter
			for i, s := range []ratelimit.Store{a, b} {
				l, err := ratelimit.New(ratelimit.Options{
					Name: "accuracy", Rate: ratelimit.Rate{Count: perSec, Per: time.Second}, Burst: burst,
					Store: s, Now: clock.Now, Timeout: 5 * time.Second,
				})
				if err != nil {
					t.Fatal(err)
				}
				ls[i] = l
			}
			var perSecond [seconds]atomic.Int64
			var tick [clients]chan int
			var done sync.WaitGroup
			errs := make(chan error, clients)
			for c := range clients {
				tick[c] = make(chan int)
				l := ls[c%instances]
				go func() {
					for r := range tick[c] {
						res := l.AllowRate(context.Background(), ratelimit.Client{Key: "one-key"})
						if res.Err != nil {
							errs <- res.Err
						}
						if res.Allowed {
							perSecond[r*int(round)/int(time.Second)].Add(1)
						}
						done.Done()
					}
				}()
			}
			for r := range rounds {
				clock.Set(start.Add(time.Duration(r) * round))
				done.Add(clients)
				for c := range clients {
					tick[c] <- r
				}
				done.Wait()
			}
			for c := range clients {
				close(tick[c])
			}
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			total := int64(0)
			for s := range seconds {
				n := perSecond[s].Load()
				total += n
				want := int64(perSec)
				if s == 0 {
					want += burst // the first second also spends the burst
				}
				if n < want-2 || n > want+2 {
					t.Errorf("second %d: %d accepted, want %d ± 2%%", s, n, want)
				}
			}
			if want := int64(seconds*perSec + burst); total < want*98/100 || total > want*102/100 {
				t.Errorf("%d accepted in %d s, want %d ± 2%%", total, seconds, want)
			}
			t.Logf("%d accepted in %d simulated seconds", total, seconds)
		})
	}
}

// TestBudgetExact is the budget acceptance test: 50 goroutines
// acting for 20 clients, split over two instances, against a 1000/day route
// budget must be admitted exactly 1000 times. A per-client rate and a
// per-client budget run alongside, so give-backs happen concurrently too.
func TestBudgetExact(t *testing.T, open Open) {
	tests := []struct {
		name         string
		clientBudget int64
		want         int64
	}{
		{name: "route budget", want: 1000},
		{name: "client budgets below route budget", clientBudget: 30, want: 20 * 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := open(t)
			clock := NewClock(start)
			var ls [2]*ratelimit.Limiter
			for i, s := range []ratelimit.Store{a, b} {
				o := ratelimit.Options{
					Name: "budget", Store: s, Now: clock.Now, Timeout: 5 * time.Second,
					Rate: ratelimit.Rate{Count: 10000, Per: time.Second}, Burst: 10000,
					Budget: ratelimit.Budget{Limit: 1000, Window: ratelimit.Day},
				}
				if tt.clientBudget > 0 {
					o.ClientBudget = ratelimit.Budget{Limit: tt.clientBudget, Window: ratelimit.Day}
				}
				l, err := ratelimit.New(o)
				if err != nil {
					t.Fatal(err)
				}
				ls[i] = l
			}
			var allowed atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, 50)
			for g := range 50 {
				wg.Go(func() {
					l := ls[g%2]
					client := fmt.Sprintf("198.51.100.%d", g%20)
					for range 200 {
						got, err := request(context.Background(), l, ratelimit.Client{Key: client}, nil)
						if err != nil {
							errs <- err
							return
						}
						if got.Allowed {
							allowed.Add(1)
						} else if got.Reason == ratelimit.ReasonBudget || got.Reason == ratelimit.ReasonClientBudget {
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if got := allowed.Load(); got != tt.want {
				t.Errorf("%d requests allowed, want exactly %d", got, tt.want)
			}
		})
	}
}

// TestWideExact is the acceptance test of wide networks: 64 clients (/64s)
// in each of two networks (/48s), sent by 32 goroutines over two
// instances, each client asking for twice its own allowance. With the
// clock standing still, each network must admit exactly WideFactor
// clients' allowance — not one request more, because every check is
// atomic, and not one less, because a refused request is counted nowhere
// — and no client more than its own. Then, one step of the network's rate
// later, exactly that many more. The route budget, one request above what
// the clients can spend, must then admit exactly one more: a request the
// client or network budget refused never counted there.
func TestWideExact(t *testing.T, open Open) {
	const (
		networks = 2
		perNet   = 64
		factor   = 8
		own      = 4 // the burst, or the client budget
	)
	tests := []struct {
		name string
		o    ratelimit.Options
		// refill is how long the clock moves before the second round, and
		// more how many requests each network admits then.
		refill time.Duration
		more   int64
	}{
		{
			// Per client 10/s, burst 4; per network 80/s (12.5ms a
			// request), burst 32.
			name:   "rate",
			o:      ratelimit.Options{Rate: tenPerSecond, Burst: own},
			refill: 10 * 12500 * time.Microsecond,
			more:   10,
		},
		{
			name: "client budget",
			o: ratelimit.Options{
				ClientBudget: ratelimit.Budget{Limit: own, Window: ratelimit.Day},
				Budget:       ratelimit.Budget{Limit: networks*factor*own + 1, Window: ratelimit.Day},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := open(t)
			clock := NewClock(start)
			var ls [2]*ratelimit.Limiter
			for i, s := range []ratelimit.Store{a, b} {
				o := tt.o
				o.Name, o.Store, o.Now, o.Timeout, o.WideFactor = "wide", s, clock.Now, 5*time.Second, factor
				l, err := ratelimit.New(o)
				if err != nil {
					t.Fatal(err)
				}
				ls[i] = l
			}
			var clients []ratelimit.Client
			for n := range networks {
				for c := range perNet {
					clients = append(clients, ratelimit.Client{
						Key:  fmt.Sprintf("2001:db8:%x:%x::/64", n, c),
						Wide: fmt.Sprintf("2001:db8:%x::/48", n),
					})
				}
			}
			round := func() (perNetwork [networks]int64, perClient []int64) {
				perClient = make([]int64, len(clients))
				counts := make([]atomic.Int64, len(clients))
				var wg sync.WaitGroup
				errs := make(chan error, 32)
				for g := range 32 {
					wg.Go(func() {
						l := ls[g%2]
						// Each goroutine cycles through its clients, so
						// that the clients of a network race for its
						// allowance.
						for range 2 * own {
							for i := g; i < len(clients); i += 32 {
								got, err := request(context.Background(), l, clients[i], nil)
								if err != nil {
									errs <- err
									return
								}
								if got.Allowed {
									counts[i].Add(1)
								}
							}
						}
					})
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Fatal(err)
				}
				for i := range clients {
					perClient[i] = counts[i].Load()
					perNetwork[i/perNet] += perClient[i]
				}
				return perNetwork, perClient
			}
			perNetwork, perClient := round()
			for n, got := range perNetwork {
				if got != factor*own {
					t.Errorf("network %d admitted %d requests, want exactly %d (%d clients' allowance of %d)", n, got, factor*own, factor, own)
				}
			}
			for i, got := range perClient {
				if got > own {
					t.Errorf("client %s admitted %d requests, more than its own %d", clients[i].Key, got, own)
				}
			}
			if tt.refill > 0 {
				clock.Advance(tt.refill)
				perNetwork, _ = round()
				for n, got := range perNetwork {
					if got != tt.more {
						t.Errorf("after %v network %d admitted %d more requests, want exactly %d", tt.refill, n, got, tt.more)
					}
				}
			}
			if !tt.o.Budget.IsZero() {
				v4 := ratelimit.Client{Key: "198.51.100.1"}
				for i, want := range []ratelimit.Reason{ratelimit.ReasonNone, ratelimit.ReasonBudget} {
					if res := ls[i].Spend(context.Background(), v4); res.Err != nil || res.Reason != want {
						t.Errorf("route budget request %d: %v (%v), want %v", i, res.Reason, res.Err, want)
					}
				}
			}
		})
	}
}

// Bench measures what a limiter adds to each request of a busy gateway
// (AllowRate, Spend and their SetHeaders) over 1024 IPv4 clients from 8
// goroutines per CPU, so that benchmarks of different stores measure the
// same thing. The concurrency lets a networked store pipeline round trips
// as it would in production. The limiter must allow every request.
func Bench(b *testing.B, l *ratelimit.Limiter) {
	clients := make([]ratelimit.Client, 1024)
	for i := range clients {
		clients[i] = ratelimit.Client{Key: fmt.Sprintf("198.51.%d.%d", i/256, i%256)}
	}
	bench(b, l, clients)
}

// BenchIPv6 is Bench with 1024 IPv6 clients (/64s) in 16 wide networks
// (/48s), so that every step also checks the network. As with Bench, the
// limiter must allow every request: the bursts of each client and each
// network (WideFactor times the client's) must last the whole run.
func BenchIPv6(b *testing.B, l *ratelimit.Limiter) {
	clients := make([]ratelimit.Client, 1024)
	for i := range clients {
		clients[i] = ratelimit.Client{
			Key:  fmt.Sprintf("2001:db8:%x:%x::/64", i%16, i/16),
			Wide: fmt.Sprintf("2001:db8:%x::/48", i%16),
		}
	}
	bench(b, l, clients)
}

// BenchSettle is Bench for a metered route: each request reserves worst
// and settles actual, as a model call does.
func BenchSettle(b *testing.B, l *ratelimit.Limiter, worst, actual ratelimit.Amount) {
	clients := make([]ratelimit.Client, 1024)
	for i := range clients {
		clients[i] = ratelimit.Client{Key: fmt.Sprintf("198.51.%d.%d", i/256, i%256)}
	}
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		h := http.Header{}
		i := 0
		for pb.Next() {
			c := clients[i%len(clients)]
			rate := l.AllowRate(context.Background(), c)
			r, res := l.Reserve(context.Background(), c, worst)
			if !rate.Allowed || !res.Allowed {
				b.Errorf("request denied: %v %v %v", rate.Reason, res.Reason, res.Err)
				return
			}
			rate.SetHeaders(h)
			res.SetHeaders(h)
			if err := r.Settle(context.Background(), actual); err != nil {
				b.Error(err)
				return
			}
			clear(h)
			i++
		}
	})
}

func bench(b *testing.B, l *ratelimit.Limiter, clients []ratelimit.Client) {
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		h := http.Header{}
		i := 0
		for pb.Next() {
			c := clients[i%len(clients)]
			for _, res := range [2]ratelimit.Result{l.AllowRate(context.Background(), c), l.Spend(context.Background(), c)} {
				if !res.Allowed {
					b.Errorf("request denied: %v %v", res.Reason, res.Err)
					return
				}
				res.SetHeaders(h)
			}
			clear(h)
			i++
		}
	})
}
