package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/ratelimit"
	"github.com/keyward/keyward/internal/ratelimit/storetest"
)

var start = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)

// faultyStore fails every call with err, or, if err is nil, blocks until
// the context ends, like a Redis that accepts and never answers.
type faultyStore struct {
	err      error
	calls    atomic.Int64
	admitted []ratelimit.BudgetCell // what AdmittedOnFault was told
}

func (f *faultyStore) fail(ctx context.Context) error {
	f.calls.Add(1)
	if f.err != nil {
		return f.err
	}
	<-ctx.Done()
	return ctx.Err()
}

func (f *faultyStore) GCRA(ctx context.Context, _ time.Time, _ []ratelimit.RateCell) (bool, error) {
	return false, f.fail(ctx)
}

func (f *faultyStore) Budget(ctx context.Context, _ time.Time, _ []ratelimit.BudgetCell) (bool, error) {
	return false, f.fail(ctx)
}

func (f *faultyStore) Adjust(ctx context.Context, _, _ time.Time, _ []ratelimit.BudgetCell) error {
	return f.fail(ctx)
}

func (f *faultyStore) AdmittedOnFault(_ time.Time, cells []ratelimit.BudgetCell) {
	f.admitted = append(f.admitted, cells...)
}

func TestFaultPolicy(t *testing.T) {
	boom := errors.New("connection refused")
	tests := []struct {
		name       string
		policy     ratelimit.FaultPolicy
		storeErr   error
		wantAllow  bool
		wantReason ratelimit.Reason
		wantIs     error
	}{
		{name: "fail open on error", policy: ratelimit.FailOpen, storeErr: boom, wantAllow: true, wantIs: boom},
		{name: "fail closed on error", policy: ratelimit.FailClosed, storeErr: boom, wantReason: ratelimit.ReasonStoreError, wantIs: boom},
		{name: "fail open on timeout", policy: ratelimit.FailOpen, wantAllow: true, wantIs: context.DeadlineExceeded},
		{name: "fail closed on timeout", policy: ratelimit.FailClosed, wantReason: ratelimit.ReasonStoreError, wantIs: context.DeadlineExceeded},
	}
	steps := []struct {
		op   string
		call func(*ratelimit.Limiter, ratelimit.Client) ratelimit.Result
	}{
		{op: "rate", call: func(l *ratelimit.Limiter, c ratelimit.Client) ratelimit.Result {
			return l.AllowRate(context.Background(), c)
		}},
		{op: "budget", call: func(l *ratelimit.Limiter, c ratelimit.Client) ratelimit.Result {
			return l.Spend(context.Background(), c)
		}},
	}
	for _, tt := range tests {
		for _, st := range steps {
			t.Run(tt.name+"/"+st.op, func(t *testing.T) {
				store := &faultyStore{err: tt.storeErr}
				var reported []error
				l, err := ratelimit.New(ratelimit.Options{
					Name: "r", Store: store, OnStoreError: tt.policy, Timeout: 5 * time.Millisecond,
					Rate:         ratelimit.Rate{Count: 1, Per: time.Second},
					ClientBudget: ratelimit.Budget{Limit: 5, Window: ratelimit.Day},
					Budget:       ratelimit.Budget{Limit: 10, Window: ratelimit.Day},
					OnFault:      func(err error) { reported = append(reported, err) },
				})
				if err != nil {
					t.Fatal(err)
				}
				res := st.call(l, ratelimit.Client{Key: "2001:db8:1:2::/64", Wide: "2001:db8:1::/48"})
				if res.Allowed != tt.wantAllow || res.Reason != tt.wantReason {
					t.Errorf("allowed %v reason %v, want %v %v", res.Allowed, res.Reason, tt.wantAllow, tt.wantReason)
				}
				var serr *ratelimit.StoreError
				if !errors.As(res.Err, &serr) || serr.Op != st.op || !errors.Is(res.Err, tt.wantIs) {
					t.Errorf("Err = %v, want a *StoreError for the %s check wrapping %v", res.Err, st.op, tt.wantIs)
				}
				if len(reported) != 1 || reported[0] != res.Err {
					t.Errorf("OnFault got %v, want exactly the result's error", reported)
				}
				if store.calls.Load() != 1 {
					t.Errorf("%d store calls, want 1: every key of a step is one call", store.calls.Load())
				}
				// What fail_open lets through is still spent: the store is
				// told, so it can count it once it answers again.
				var wantAdmitted []string
				if st.op == "budget" && tt.wantAllow {
					wantAdmitted = []string{"client-budget:r:2001:db8:1:2::/64", "client-budget:r:2001:db8:1::/48", "budget:r"}
				}
				var gotAdmitted []string
				for _, c := range store.admitted {
					gotAdmitted = append(gotAdmitted, c.Key)
				}
				if diff := cmp.Diff(wantAdmitted, gotAdmitted); diff != "" {
					t.Errorf("keys reported admitted on the fault (-want +got):\n%s", diff)
				}
				h := http.Header{}
				res.SetHeaders(h)
				if len(h) != 0 {
					t.Errorf("SetHeaders after a fault wrote %v, want nothing", h)
				}
			})
		}
	}
}

func TestNewErrors(t *testing.T) {
	m := ratelimit.NewMemory(0)
	tests := []struct {
		name string
		o    ratelimit.Options
		want []string
	}{
		{name: "everything missing", o: ratelimit.Options{Timeout: -1},
			want: []string{"needs a name", "needs a store", "timeout -1ns is negative"}},
		{name: "bad rate", o: ratelimit.Options{Name: "r", Store: m, Rate: ratelimit.Rate{Count: 1, Per: 0}},
			want: []string{"count and period must be positive"}},
		{name: "burst too large", o: ratelimit.Options{Name: "r", Store: m, Rate: ratelimit.Rate{Count: 1, Per: time.Hour}, Burst: 1 << 40},
			want: []string{"ten years"}},
		{name: "bad budget window", o: ratelimit.Options{Name: "r", Store: m, Budget: ratelimit.Budget{Limit: 1, Window: 9}},
			want: []string{"budget 1/Window(9)"}},
		{name: "bad policy", o: ratelimit.Options{Name: "r", Store: m, OnStoreError: 7},
			want: []string{"unknown store error policy FaultPolicy(7)"}},
		{name: "bad wide factor", o: ratelimit.Options{Name: "r", Store: m, WideFactor: -1},
			want: []string{"wide factor -1: want 1 to 1048576"}},
		{name: "units", o: ratelimit.Options{Name: "r", Store: m, Price: -1,
			Budget:   ratelimit.Budget{Limit: 5, Window: ratelimit.Day, Unit: ratelimit.Tokens},
			Tokens:   ratelimit.Budget{Limit: 5, Window: ratelimit.Day, Unit: ratelimit.Money},
			SpendCap: ratelimit.Budget{Limit: 5, Window: ratelimit.Day}},
			want: []string{"price -$0.000001 is negative", "budget 5/day: counts tokens, want [requests usd-micros]",
				"token budget $0.000005/day: counts usd-micros, want [tokens]", "spend cap 5/day: counts requests, want [usd-micros]"}},
		{name: "limit beyond exact", o: ratelimit.Options{Name: "r", Store: m, ClientBudget: ratelimit.Budget{Limit: 1<<53 + 1, Window: ratelimit.Day}},
			want: []string{"at most 2^53"}},
		{name: "wide burst too large", o: ratelimit.Options{Name: "r", Store: m, Rate: ratelimit.Rate{Count: 1_000_000, Per: time.Second}, Burst: 1 << 30, WideFactor: 1 << 20},
			want: []string{"times wide factor 1048576"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ratelimit.New(tt.o)
			if err == nil {
				t.Fatal("New succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestParseFaultPolicy(t *testing.T) {
	for in, want := range map[string]ratelimit.FaultPolicy{"": ratelimit.FailOpen, "fail_open": ratelimit.FailOpen, "fail_closed": ratelimit.FailClosed} {
		if got, err := ratelimit.ParseFaultPolicy(in); err != nil || got != want {
			t.Errorf("ParseFaultPolicy(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ratelimit.ParseFaultPolicy("open"); err == nil || !strings.Contains(err.Error(), `"open"`) {
		t.Errorf("ParseFaultPolicy(open) error = %v, want one naming the value", err)
	}
}

// TestMemoryBounded floods a small Memory store with new clients and
// checks it never holds more than its limit, forgets idle clients, and
// refuses new budget keys rather than forgetting counting ones.
func TestMemoryBounded(t *testing.T) {
	const maxKeys = 64 * 8 // 8 per shard
	m := ratelimit.NewMemory(maxKeys)
	ctx := context.Background()
	now := start
	for i := range 10 * maxKeys {
		ok, err := m.GCRA(ctx, now, []ratelimit.RateCell{{Key: fmt.Sprint("client-", i), Emission: time.Second, Limit: time.Second}})
		if err != nil || !ok {
			t.Fatalf("GCRA for new client %d = %v, %v", i, ok, err)
		}
	}
	if n := m.Len(); n > maxKeys {
		t.Errorf("store holds %d keys, want at most %d", n, maxKeys)
	}
	// Every GCRA key is idle a second later; budgets fill the store.
	now = now.Add(2 * time.Second)
	full := 0
	for i := range 2 * maxKeys {
		_, err := m.Budget(ctx, now, []ratelimit.BudgetCell{{Key: fmt.Sprint("budget-", i), Limit: 10, Window: ratelimit.Day, N: 1}})
		if errors.Is(err, ratelimit.ErrFull) {
			full++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if full == 0 {
		t.Error("no ErrFull after twice the key limit of budget keys")
	}
	if n := m.Len(); n > maxKeys {
		t.Errorf("store holds %d keys, want at most %d", n, maxKeys)
	}
	// A day later the budget windows are over: their keys are swept and
	// new ones fit again.
	now = now.Add(25 * time.Hour)
	for i := range 64 {
		if _, err := m.Budget(ctx, now, []ratelimit.BudgetCell{{Key: fmt.Sprint("next-day-", i), Limit: 10, Window: ratelimit.Day, N: 1}}); err != nil {
			t.Fatalf("new budget key %d after the window: %v", i, err)
		}
	}
}

// TestMemoryIdleKeysSwept checks that keys of clients that went quiet are
// deleted by later traffic, without a background goroutine.
func TestMemoryIdleKeysSwept(t *testing.T) {
	m := ratelimit.NewMemory(0)
	ctx := context.Background()
	for i := range 50_000 {
		if _, err := m.GCRA(ctx, start, []ratelimit.RateCell{{Key: fmt.Sprint("old-", i), Emission: time.Second, Limit: time.Second}}); err != nil {
			t.Fatal(err)
		}
	}
	later := start.Add(time.Minute)
	for i := range 50_000 {
		if _, err := m.GCRA(ctx, later, []ratelimit.RateCell{{Key: fmt.Sprint("new-", i), Emission: time.Second, Limit: time.Second}}); err != nil {
			t.Fatal(err)
		}
	}
	if n := m.Len(); n >= 100_000 {
		t.Errorf("store holds %d keys, want the idle ones swept", n)
	}
}

func TestSetHeadersAllocs(t *testing.T) {
	clock := storetest.NewClock(start)
	l, err := ratelimit.New(ratelimit.Options{
		Name: "r", Store: ratelimit.NewMemory(0), Now: clock.Now,
		Rate: ratelimit.Rate{Count: 100, Per: time.Second}, Burst: 10,
		ClientBudget: ratelimit.Budget{Limit: 50, Window: ratelimit.Hour},
		Budget:       ratelimit.Budget{Limit: 1 << 40, Window: ratelimit.Day},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := ratelimit.Client{Key: "c"}
	rate, spend := l.AllowRate(context.Background(), c), l.Spend(context.Background(), c)
	h := http.Header{}
	// One string and one slice for the rate's RateLimit, one string for
	// the budgets added to it; the policy is shared.
	if n := testing.AllocsPerRun(100, func() { clear(h); rate.SetHeaders(h); spend.SetHeaders(h) }); n > 3 {
		t.Errorf("SetHeaders of both steps allocates %v times, want at most 3", n)
	}
	want := http.Header{
		"Ratelimit-Policy": {`"rate";q=100;w=1, "client-budget";q=50;w=3600, "budget";q=1099511627776;w=86400`},
		"Ratelimit":        {`"rate";r=9;t=1, "client-budget";r=49;t=3600, "budget";r=1099511627775;t=43200`},
	}
	if diff := cmp.Diff(want, h); diff != "" {
		t.Errorf("headers of both steps mismatch (-want +got):\n%s", diff)
	}
	// On a header without this limiter's rate line, a budget result
	// replaces what is there.
	spend.SetHeaders(h)
	want = http.Header{
		"Ratelimit-Policy": {`"client-budget";q=50;w=3600, "budget";q=1099511627776;w=86400`},
		"Ratelimit":        {`"client-budget";r=49;t=3600, "budget";r=1099511627775;t=43200`},
	}
	if diff := cmp.Diff(want, h); diff != "" {
		t.Errorf("headers of the budget step alone mismatch (-want +got):\n%s", diff)
	}
}

func BenchmarkNoLimiter(b *testing.B) {
	// The baseline: what the gateway does per request without a limiter.
	h := http.Header{}
	b.ReportAllocs()
	for b.Loop() {
		h.Set("X-Baseline", "1")
	}
}

func BenchmarkMemoryLimiter(b *testing.B) {
	benchmarks := []struct {
		name   string
		o      ratelimit.Options
		ipv6   bool
		settle ratelimit.Amount // see BenchmarkRedisLimiter
	}{
		{name: "rate", o: ratelimit.Options{Rate: ratelimit.Rate{Count: 1_000_000, Per: time.Second}, Burst: 1 << 20}},
		{name: "rate+budget", o: ratelimit.Options{
			Rate: ratelimit.Rate{Count: 1_000_000, Per: time.Second}, Burst: 1 << 20,
			Budget: ratelimit.Budget{Limit: 1 << 50, Window: ratelimit.Day},
		}},
		{name: "rate+money-budget", o: ratelimit.Options{
			Rate: ratelimit.Rate{Count: 1_000_000, Per: time.Second}, Burst: 1 << 20, Price: 5000,
			Budget: ratelimit.Budget{Limit: 1 << 50, Window: ratelimit.Day, Unit: ratelimit.Money},
		}},
		{name: "rate+reserve+settle", settle: ratelimit.Amount{Money: 40_000, Tokens: 4000}, o: ratelimit.Options{
			Rate: ratelimit.Rate{Count: 1_000_000, Per: time.Second}, Burst: 1 << 20,
			Budget:   ratelimit.Budget{Limit: 1 << 50, Window: ratelimit.Day, Unit: ratelimit.Money},
			Tokens:   ratelimit.Budget{Limit: 1 << 50, Window: ratelimit.Day, Unit: ratelimit.Tokens},
			SpendCap: ratelimit.Budget{Limit: 1 << 50, Window: ratelimit.Month, Unit: ratelimit.Money},
		}},
		{name: "ipv6/rate", ipv6: true, o: ratelimit.Options{Rate: ratelimit.Rate{Count: 1000, Per: time.Second}, Burst: 1 << 20}},
		{name: "ipv6/rate+budgets", ipv6: true, o: ratelimit.Options{
			Rate: ratelimit.Rate{Count: 1000, Per: time.Second}, Burst: 1 << 20,
			ClientBudget: ratelimit.Budget{Limit: 1 << 50, Window: ratelimit.Day},
			Budget:       ratelimit.Budget{Limit: 1 << 50, Window: ratelimit.Day},
		}},
	}
	for _, bm := range benchmarks {
		b.Run(bm.name, func(b *testing.B) {
			bm.o.Name, bm.o.Store = "bench", ratelimit.NewMemory(0)
			l, err := ratelimit.New(bm.o)
			if err != nil {
				b.Fatal(err)
			}
			switch {
			case bm.settle != (ratelimit.Amount{}):
				storetest.BenchSettle(b, l, bm.settle, ratelimit.Amount{Money: bm.settle.Money / 4, Tokens: bm.settle.Tokens / 4})
			case bm.ipv6:
				storetest.BenchIPv6(b, l)
			default:
				storetest.Bench(b, l)
			}
		})
	}
}

// TestReserveOnFault: under fail_open a reservation the store could not
// count is still returned, and told to the store, so that settling it
// later keeps the ledger right; under fail_closed nothing is reserved. A
// settle the store cannot apply is reported and returned.
func TestReserveOnFault(t *testing.T) {
	boom := errors.New("connection refused")
	for _, p := range []ratelimit.FaultPolicy{ratelimit.FailOpen, ratelimit.FailClosed} {
		t.Run(p.String(), func(t *testing.T) {
			store := &faultyStore{err: boom}
			var reported []error
			l, err := ratelimit.New(ratelimit.Options{
				Name: "r", Store: store, OnStoreError: p,
				Budget:   ratelimit.Budget{Limit: 1_000_000, Window: ratelimit.Day, Unit: ratelimit.Money},
				SpendCap: ratelimit.Budget{Limit: 5_000_000, Window: ratelimit.Month, Unit: ratelimit.Money},
				OnFault:  func(err error) { reported = append(reported, err) },
			})
			if err != nil {
				t.Fatal(err)
			}
			r, res := l.Reserve(context.Background(), ratelimit.Client{Key: "c"}, ratelimit.Amount{Money: 300_000})
			if res.Allowed != (p == ratelimit.FailOpen) || !errors.Is(res.Err, boom) {
				t.Fatalf("allowed %v, %v", res.Allowed, res.Err)
			}
			want := []string(nil)
			if p == ratelimit.FailOpen {
				want = []string{"budget-usd:r", ratelimit.SpendCapKey}
			}
			var got []string
			for _, c := range store.admitted {
				got = append(got, c.Key)
				if c.N != 300_000 {
					t.Errorf("%s: told %d admitted, want the reservation, 300000", c.Key, c.N)
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("cells told admitted on the fault (-want +got):\n%s", diff)
			}
			calls := store.calls.Load()
			err = r.Settle(context.Background(), ratelimit.Amount{Money: 100_000})
			if p == ratelimit.FailClosed {
				if err != nil || store.calls.Load() != calls {
					t.Errorf("settling nothing reserved: %v, %d store calls; want no call", err, store.calls.Load()-calls)
				}
				return
			}
			var serr *ratelimit.StoreError
			if !errors.As(err, &serr) || serr.Op != "settle" || !errors.Is(err, boom) {
				t.Errorf("settle error %v, want a *StoreError for the settle wrapping the fault", err)
			}
			if len(reported) != 2 || reported[1] != err {
				t.Errorf("OnFault got %v, want the reserve's and the settle's faults", reported)
			}
		})
	}
}

// expiredAtCall records, for each store call, whether its context had
// already ended when the call began; every call blocks until it ends.
type expiredAtCall struct {
	faultyStore
	expired []bool
}

func (e *expiredAtCall) GCRA(ctx context.Context, _ time.Time, _ []ratelimit.RateCell) (bool, error) {
	e.expired = append(e.expired, ctx.Err() != nil)
	return false, e.fail(ctx)
}

func (e *expiredAtCall) Budget(ctx context.Context, _ time.Time, _ []ratelimit.BudgetCell) (bool, error) {
	e.expired = append(e.expired, ctx.Err() != nil)
	return false, e.fail(ctx)
}

// TestStoreTimeoutBoundsTheRequest: store_timeout bounds all the store
// calls of one request together. On a store that never answers, the rate
// check uses up the timeout and the budget check that follows in the same
// request fails at once instead of waiting as long again; a request of
// its own gets the whole timeout.
func TestStoreTimeoutBoundsTheRequest(t *testing.T) {
	store := &expiredAtCall{}
	l, err := ratelimit.New(ratelimit.Options{
		Name: "r", Store: store, OnStoreError: ratelimit.FailOpen, Timeout: 5 * time.Millisecond,
		Rate:   ratelimit.Rate{Count: 1, Per: time.Second},
		Budget: ratelimit.Budget{Limit: 10, Window: ratelimit.Day},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := ratelimit.Client{Key: "1.2.3.4", Wait: &ratelimit.Wait{}}
	if res := l.AllowRate(context.Background(), c); !res.Allowed || !errors.Is(res.Err, context.DeadlineExceeded) {
		t.Fatalf("rate: %+v", res)
	}
	if res := l.Spend(context.Background(), c); !res.Allowed || !errors.Is(res.Err, context.DeadlineExceeded) {
		t.Fatalf("budget: %+v", res)
	}
	other := ratelimit.Client{Key: "1.2.3.5", Wait: &ratelimit.Wait{}}
	l.Spend(context.Background(), other)
	// The budget check of the first request never reached the store (nor
	// its breaker); the other request's did, with a live deadline.
	if want := []bool{false, false}; !slices.Equal(store.expired, want) {
		t.Errorf("store calls (context already ended at the call): %v, want %v", store.expired, want)
	}
}

// slowStore answers every call, after delay: a healthy but slow Redis.
type slowStore struct {
	expiredAtCall
	delay time.Duration
}

func (s *slowStore) GCRA(ctx context.Context, _ time.Time, cells []ratelimit.RateCell) (bool, error) {
	s.expired = append(s.expired, ctx.Err() != nil)
	time.Sleep(s.delay) // the store's latency, not a wait for a state
	return true, nil
}

func (s *slowStore) Budget(ctx context.Context, _ time.Time, cells []ratelimit.BudgetCell) (bool, error) {
	s.expired = append(s.expired, ctx.Err() != nil)
	return true, nil
}

// TestSlowAnswerDoesNotStarveTheNextCall: a store that answers, however
// slowly, takes nothing from the request's next store call: only calls
// that time out use up store_timeout (else a slow but healthy Redis
// would turn every budget check into a fault).
func TestSlowAnswerDoesNotStarveTheNextCall(t *testing.T) {
	store := &slowStore{delay: 20 * time.Millisecond}
	l, err := ratelimit.New(ratelimit.Options{
		Name: "r", Store: store, OnStoreError: ratelimit.FailClosed, Timeout: 10 * time.Millisecond,
		Rate:   ratelimit.Rate{Count: 1, Per: time.Second},
		Budget: ratelimit.Budget{Limit: 10, Window: ratelimit.Day},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := ratelimit.Client{Key: "1.2.3.4", Wait: &ratelimit.Wait{}}
	if res := l.AllowRate(context.Background(), c); !res.Allowed || res.Err != nil {
		t.Fatalf("rate: %+v", res)
	}
	if res := l.Spend(context.Background(), c); !res.Allowed || res.Err != nil {
		t.Errorf("budget after a slow but successful rate check: %+v", res)
	}
	if want := []bool{false, false}; !slices.Equal(store.expired, want) {
		t.Errorf("context already ended at each call: %v, want %v", store.expired, want)
	}
}
