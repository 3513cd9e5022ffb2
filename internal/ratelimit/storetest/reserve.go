package storetest

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/ratelimit"
)

// dollars is an amount of money, for readable tables.
func dollars(d float64) config.Money { return config.Money(d * config.MicrosPerDollar) }

// TestAdjust checks Store.Adjust directly: it adds to the window of at
// (not the one of now), never takes a count below zero, and leaves a
// window that has ended alone. Adjustments are made on the instance that
// counted, as a Reservation settles on its own limiter's store (a Redis
// instance gives back only what it spent itself); the other instance
// reads the shared count.
func TestAdjust(t *testing.T, open Open) {
	a, b := open(t)
	ctx := context.Background()
	day := func(n int64) []ratelimit.BudgetCell {
		return []ratelimit.BudgetCell{{Key: "adjust", Limit: 100, Window: ratelimit.Day, N: n}}
	}
	used := func(s ratelimit.Store, now time.Time) int64 {
		t.Helper()
		cells := day(0)
		if _, err := s.Budget(ctx, now, cells); err != nil {
			t.Fatal(err)
		}
		return cells[0].Used
	}
	at := time.Date(2026, 3, 14, 23, 59, 59, 0, time.UTC)
	next := at.Add(2 * time.Second)
	if ok, err := a.Budget(ctx, at, day(30)); !ok || err != nil {
		t.Fatalf("Budget = %v, %v", ok, err)
	}
	steps := []struct {
		name   string
		at     time.Time
		now    time.Time
		n      int64
		before int64 // the count at at, before the step
		after  int64
	}{
		{name: "a refund", at: at, now: at, n: -10, before: 30, after: 20},
		{name: "an excess", at: at, now: at, n: 15, before: 20, after: 35},
		{name: "a refund beyond the count stops at zero", at: at, now: at, n: -50, before: 35, after: 0},
		{name: "an excess beyond the limit is counted", at: at, now: at, n: 120, before: 0, after: 120},
	}
	for _, st := range steps {
		if got := used(b, at); got != st.before {
			t.Fatalf("%s: count %d before, want %d", st.name, got, st.before)
		}
		if err := a.Adjust(ctx, st.at, st.now, day(st.n)); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := used(b, at); got != st.after {
			t.Errorf("%s: count %d after, want %d", st.name, got, st.after)
		}
	}
	// The next day's window starts from zero; an adjustment of the day
	// before, made now, goes to the day before or, once it has ended,
	// nowhere, and never to today.
	if ok, err := b.Budget(ctx, next, day(7)); !ok || err != nil {
		t.Fatalf("Budget on the next day = %v, %v", ok, err)
	}
	if err := a.Adjust(ctx, at, next, day(-100)); err != nil {
		t.Fatal(err)
	}
	if got := used(a, next); got != 7 {
		t.Errorf("the next day's count is %d after an adjustment of the day before, want 7", got)
	}
}

// TestReserve runs reservations and their settlements through limiters
// on two instances: money, tokens and requests counted together; the
// difference given back, in the window of the reservation; the spend cap
// shared by routes; which refusal is reported.
func TestReserve(t *testing.T, open Open) {
	type op struct {
		advance  time.Duration
		limiter  int // index into the case's limiters
		instance int
		client   string
		reserve  *ratelimit.Amount // reserve this (and keep the reservation)
		settle   int               // or settle reservation number settle-1
		actual   ratelimit.Amount  // with this
		want     ratelimit.Reason  // for a reserve
		// remaining, if not nil, is the Remaining of each checked budget of
		// a reserve's Result, by item name.
		remaining map[string]int64
	}
	res := func(a ratelimit.Amount) *ratelimit.Amount { return &a }
	usd := func(d float64) *ratelimit.Amount { return res(ratelimit.Amount{Money: dollars(d)}) }
	moneyBudget := func(d float64, w ratelimit.Window) ratelimit.Budget {
		return ratelimit.Budget{Limit: int64(dollars(d)), Window: w, Unit: ratelimit.Money}
	}
	tests := []struct {
		name     string
		start    time.Time
		limiters []ratelimit.Options // Store and Now are filled in; Name if empty
		ops      []op
	}{
		{
			name:     "settling gives back the difference",
			limiters: []ratelimit.Options{{Budget: moneyBudget(1, ratelimit.Day)}},
			ops: []op{
				{reserve: usd(0.4), remaining: map[string]int64{"budget": 600_000}},
				{instance: 1, reserve: usd(0.4), remaining: map[string]int64{"budget": 200_000}},
				{reserve: usd(0.4), want: ratelimit.ReasonBudget, remaining: map[string]int64{"budget": 200_000}},
				{settle: 1, actual: ratelimit.Amount{Money: dollars(0.1)}},
				{instance: 1, reserve: usd(0.4), remaining: map[string]int64{"budget": 100_000}},
				// A call that never left costs nothing.
				{settle: 2, actual: ratelimit.Amount{}},
				{reserve: usd(0.5), remaining: map[string]int64{"budget": 0}},
				{reserve: res(ratelimit.Amount{}), remaining: map[string]int64{"budget": 0}},
				{reserve: usd(0.000001), want: ratelimit.ReasonBudget},
			},
		},
		{
			name: "an excess is counted, a second settle does nothing",
			limiters: []ratelimit.Options{{
				Budget:       moneyBudget(1, ratelimit.Day),
				ClientBudget: ratelimit.Budget{Limit: 10, Window: ratelimit.Day},
			}},
			ops: []op{
				{reserve: usd(0.5), remaining: map[string]int64{"budget": 500_000, "client-budget": 9}},
				{settle: 1, actual: ratelimit.Amount{Money: dollars(1.2)}},
				{settle: 1, actual: ratelimit.Amount{}},
				// Over the limit: even a call that costs nothing in money is
				// refused, and the request it would be is not counted.
				{reserve: res(ratelimit.Amount{}), want: ratelimit.ReasonBudget, remaining: map[string]int64{"budget": 0, "client-budget": 9}},
			},
		},
		{
			name: "tokens and money together",
			limiters: []ratelimit.Options{{
				Budget:       moneyBudget(1, ratelimit.Day),
				Tokens:       ratelimit.Budget{Limit: 10_000, Window: ratelimit.Day, Unit: ratelimit.Tokens},
				ClientTokens: ratelimit.Budget{Limit: 6_000, Window: ratelimit.Day, Unit: ratelimit.Tokens},
			}},
			ops: []op{
				{client: "c1", reserve: res(ratelimit.Amount{Money: dollars(0.1), Tokens: 4_000}),
					remaining: map[string]int64{"budget": 900_000, "tokens": 6_000, "client-tokens": 2_000}},
				{client: "c1", reserve: res(ratelimit.Amount{Money: dollars(0.1), Tokens: 4_000}), want: ratelimit.ReasonClientTokens,
					remaining: map[string]int64{"budget": 900_000, "tokens": 6_000, "client-tokens": 2_000}},
				{client: "c2", instance: 1, reserve: res(ratelimit.Amount{Money: dollars(0.1), Tokens: 4_000}),
					remaining: map[string]int64{"budget": 800_000, "tokens": 2_000, "client-tokens": 2_000}},
				{client: "c3", reserve: res(ratelimit.Amount{Tokens: 4_000}), want: ratelimit.ReasonTokens,
					remaining: map[string]int64{"budget": 800_000, "tokens": 2_000, "client-tokens": 6_000}},
				{settle: 1, actual: ratelimit.Amount{Money: dollars(0.01), Tokens: 500}},
				{client: "c1", reserve: res(ratelimit.Amount{Tokens: 4_000}),
					remaining: map[string]int64{"budget": 890_000, "tokens": 1_500, "client-tokens": 1_500}},
			},
		},
		{
			name: "the spend cap is shared by routes and reported first",
			limiters: []ratelimit.Options{
				{Name: "chat", SpendCap: moneyBudget(1, ratelimit.Month), Budget: moneyBudget(0.7, ratelimit.Day)},
				{Name: "geo", SpendCap: moneyBudget(1, ratelimit.Month), Budget: moneyBudget(5, ratelimit.Day)},
			},
			ops: []op{
				{limiter: 0, reserve: usd(0.6), remaining: map[string]int64{"budget": 100_000, "spend-cap": 400_000}},
				{limiter: 1, instance: 1, reserve: usd(0.5), want: ratelimit.ReasonSpendCap, remaining: map[string]int64{"budget": 5_000_000, "spend-cap": 400_000}},
				{limiter: 0, reserve: usd(0.5), want: ratelimit.ReasonSpendCap, remaining: map[string]int64{"budget": 100_000, "spend-cap": 400_000}},
				{settle: 1, actual: ratelimit.Amount{Money: dollars(0.2)}},
				{limiter: 1, instance: 1, reserve: usd(0.5), remaining: map[string]int64{"budget": 4_500_000, "spend-cap": 300_000}},
				{limiter: 0, reserve: usd(0.3), remaining: map[string]int64{"budget": 200_000, "spend-cap": 0}},
			},
		},
		{
			// A reservation taken at 23:59:59.5 is settled after midnight:
			// its refund goes to the day it was counted in, not to the new
			// day, which would otherwise admit $0.50 it does not have.
			name:     "settling targets the reservation's window",
			start:    time.Date(2026, 3, 14, 23, 59, 59, 500_000_000, time.UTC),
			limiters: []ratelimit.Options{{Budget: moneyBudget(1, ratelimit.Day)}},
			ops: []op{
				{reserve: usd(0.9), remaining: map[string]int64{"budget": 100_000}},
				{advance: time.Second, instance: 1, reserve: usd(0.6), remaining: map[string]int64{"budget": 400_000}},
				{settle: 1, actual: ratelimit.Amount{Money: dollars(0.1)}},
				{reserve: usd(0.5), want: ratelimit.ReasonBudget, remaining: map[string]int64{"budget": 400_000}},
				{instance: 1, reserve: usd(0.4), remaining: map[string]int64{"budget": 0}},
			},
		},
	}
	names := map[int]string{
		0: "client-budget", 1: "budget", 2: "client-tokens", 3: "tokens", 4: "spend-cap",
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := open(t)
			at := start
			if !tt.start.IsZero() {
				at = tt.start
			}
			clock := NewClock(at)
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
			var reservations []*ratelimit.Reservation
			for i, o := range tt.ops {
				clock.Advance(o.advance)
				if o.reserve == nil {
					if err := reservations[o.settle-1].Settle(context.Background(), o.actual); err != nil {
						t.Fatalf("op %d: settle: %v", i, err)
					}
					continue
				}
				client := o.client
				if client == "" {
					client = "c"
				}
				r, got := limiters[o.limiter][o.instance].Reserve(context.Background(), ratelimit.Client{Key: client}, *o.reserve)
				if got.Err != nil {
					t.Fatalf("op %d: %v", i, got.Err)
				}
				if got.Reason != o.want || got.Allowed != (o.want == ratelimit.ReasonNone) {
					t.Errorf("op %d: allowed %v, reason %v; want reason %v", i, got.Allowed, got.Reason, o.want)
				}
				if got.Allowed && r.Reserved() != *o.reserve {
					t.Errorf("op %d: reservation holds %+v, want %+v", i, r.Reserved(), *o.reserve)
				}
				reservations = append(reservations, &r)
				if o.remaining != nil {
					all := []ratelimit.Decision{got.ClientBudget, got.Budget, got.ClientTokens, got.Tokens, got.SpendCap}
					rem := map[string]int64{}
					for j, d := range all {
						if d != (ratelimit.Decision{}) {
							rem[names[j]] = d.Remaining
						}
					}
					if diff := cmp.Diff(o.remaining, rem); diff != "" {
						t.Errorf("op %d: remaining (-want +got):\n%s", i, diff)
					}
				}
			}
		})
	}
}

// TestReserveConcurrent is the proof issue 12 asks for: 50 concurrent
// calls, over two instances, against a budget that fits 10 worst cases.
// First all 50 reserve at once, none settling: exactly 10 are admitted.
// Then they run as a gateway's requests do, reserving, calling, settling
// for less than the worst case, and trying again when refused: at no
// moment are more than 10 calls between their reservation and their
// settlement, the sum of the settled costs stays within the budget, and
// the store's count is exactly that sum.
func TestReserveConcurrent(t *testing.T, open Open) {
	const (
		calls  = 50
		worst  = config.Money(100_000) // $0.10
		budget = 10 * worst
	)
	a, b := open(t)
	clock := NewClock(start)
	var ls [2]*ratelimit.Limiter
	for i, s := range []ratelimit.Store{a, b} {
		l, err := ratelimit.New(ratelimit.Options{
			Name: "proof", Store: s, Now: clock.Now, Timeout: 5 * time.Second, OnStoreError: ratelimit.FailClosed,
			Budget: ratelimit.Budget{Limit: int64(budget), Window: ratelimit.Day, Unit: ratelimit.Money},
		})
		if err != nil {
			t.Fatal(err)
		}
		ls[i] = l
	}
	ctx := context.Background()
	reserve := func(g int) (ratelimit.Reservation, bool) {
		r, res := ls[g%2].Reserve(ctx, ratelimit.Client{Key: fmt.Sprint("c", g)}, ratelimit.Amount{Money: worst})
		if res.Err != nil {
			t.Error(res.Err)
		}
		return r, res.Allowed
	}

	// All at once.
	var wg sync.WaitGroup
	var admitted atomic.Int64
	held := make([]ratelimit.Reservation, calls)
	ok := make([]bool, calls)
	begin := make(chan struct{})
	for g := range calls {
		wg.Go(func() {
			<-begin
			held[g], ok[g] = reserve(g)
			if ok[g] {
				admitted.Add(1)
			}
		})
	}
	close(begin)
	wg.Wait()
	if got := admitted.Load(); got != 10 {
		t.Fatalf("%d of %d simultaneous reservations admitted, want exactly 10", got, calls)
	}
	var settled atomic.Int64 // micro-dollars
	for g := range calls {
		if ok[g] {
			if err := held[g].Settle(ctx, ratelimit.Amount{Money: worst / 4}); err != nil {
				t.Fatal(err)
			}
			settled.Add(int64(worst / 4))
		}
	}

	// As a gateway runs them.
	var inFlight, most atomic.Int64
	for g := range calls {
		wg.Go(func() {
			for k := 0; ; k++ {
				r, allowed := reserve(g)
				if t.Failed() {
					return
				}
				if !allowed {
					if inFlight.Load() == 0 && settled.Load() > int64(budget-worst) {
						return // nothing will be given back: the budget is spent
					}
					runtime.Gosched()
					continue
				}
				n := inFlight.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				// The upstream call: let others run meanwhile.
				for range 3 {
					runtime.Gosched()
				}
				cost := worst/10 + config.Money((g*7+k*13)%9)*worst/10 // $0.01 to $0.09
				inFlight.Add(-1)
				if err := r.Settle(ctx, ratelimit.Amount{Money: cost}); err != nil {
					t.Error(err)
					return
				}
				settled.Add(int64(cost))
			}
		})
	}
	wg.Wait()
	if got := most.Load(); got > 10 {
		t.Errorf("%d calls in flight at once, want at most 10", got)
	}
	if got := settled.Load(); got > int64(budget) {
		t.Errorf("settled spend %v, above the budget %v", config.Money(got), budget)
	}
	_, res := ls[0].Reserve(ctx, ratelimit.Client{Key: "check"}, ratelimit.Amount{})
	if want := int64(budget) - settled.Load(); res.Budget.Remaining != want {
		t.Errorf("the store has %v left of %v, want %v: the settled costs, exactly", config.Money(res.Budget.Remaining), budget, config.Money(want))
	}
	t.Logf("%v settled of %v; at most %d in flight", config.Money(settled.Load()), budget, most.Load())
}

// TestPauses checks the kill switch through both instances: a pause
// written on one reaches the other within a second, whole-gateway
// pauses and resumes, and listing.
func TestPauses(t *testing.T, open Open) {
	a, b := open(t)
	pa, okA := a.(ratelimit.Pauses)
	pb, okB := b.(ratelimit.Pauses)
	if !okA || !okB {
		t.Fatal("the store does not implement ratelimit.Pauses")
	}
	ctx := context.Background()
	// seen waits until the other instance sees route as want, and fails
	// the test if that takes more than a second.
	seen := func(route string, want bool) {
		t.Helper()
		began := time.Now()
		for {
			got, err := pb.Paused(ctx, route)
			if err != nil {
				t.Fatal(err)
			}
			if got == want {
				return
			}
			if since := time.Since(began); since > time.Second {
				t.Fatalf("route %q: paused %v after %v, want %v within a second", route, got, since, want)
			}
			time.Sleep(10 * time.Millisecond) // pacing the probe, not waiting for a state
		}
	}
	step := func(route string, paused bool) {
		t.Helper()
		if err := pa.Pause(ctx, route, paused); err != nil {
			t.Fatal(err)
		}
		if got, err := pa.Paused(ctx, route); err != nil || got != paused {
			t.Fatalf("the instance that paused %q: paused %v, %v; want %v at once", route, got, err, paused)
		}
	}
	seen("chat", false) // b has a view before the pause
	step("chat", true)
	seen("chat", true)
	seen("geo", false)
	step(ratelimit.AllRoutes, true)
	seen("geo", true)
	// Resuming one route while all are paused leaves it paused.
	if err := pa.Pause(ctx, "geo", false); err != nil {
		t.Fatal(err)
	}
	seen("geo", true)
	all, routes, err := pa.PausedRoutes(ctx)
	if err != nil || !all || !cmp.Equal(routes, []string{"chat"}) {
		t.Errorf("PausedRoutes = %v, %v, %v; want all, [chat]", all, routes, err)
	}
	step(ratelimit.AllRoutes, false)
	seen("chat", false)
	seen("geo", false)
	if all, routes, err := pb.PausedRoutes(ctx); err != nil || all || len(routes) != 0 {
		t.Errorf("after resuming everything, PausedRoutes = %v, %v, %v; want nothing", all, routes, err)
	}
}
