package redis_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/ratelimit"
	"github.com/keyward/keyward/internal/ratelimit/redis"
	"github.com/keyward/keyward/internal/ratelimit/storetest"
	"github.com/keyward/keyward/internal/redisstore/redistest"
)

const lossHold = time.Second

// instances is two gateway instances sharing one Redis: each its own
// client, Store (and so ledger) and Limiter, on one fake clock.
type instances struct {
	clock    *storetest.Clock
	stores   [2]*redis.Store
	limiters [2]*ratelimit.Limiter
	admin    goredis.UniversalClient // for the test's own commands
	prefix   string
	money    bool // the route budget counts money
}

func newInstances(t *testing.T, url string, o ratelimit.Options) *instances {
	t.Helper()
	in := &instances{clock: storetest.NewClock(start), admin: redistest.Open(t, url), prefix: uniquePrefix(), money: o.Budget.Unit == ratelimit.Money}
	for i := range in.stores {
		in.stores[i] = redis.New(redistest.Open(t, url), redis.Options{Prefix: in.prefix, Hold: lossHold, Now: in.clock.Now})
		o := o
		o.Name, o.Store, o.Now, o.Timeout = "route", in.stores[i], in.clock.Now, 5*time.Second
		l, err := ratelimit.New(o)
		if err != nil {
			t.Fatal(err)
		}
		in.limiters[i] = l
	}
	return in
}

var start = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)

// deployment is the Redis the instances of a test share, with what its
// loss needs: one server, a master and replica watched by a Sentinel,
// or a cluster whose master of the limiter's slot has a replica.
type deployment struct {
	url      string
	srv      *redistest.Server
	sentinel *redistest.Sentinel
	cluster  *redistest.Cluster
	replica  *redistest.Server // of the cluster's master of the limiter's keys
}

func oneServer(t *testing.T) *deployment {
	srv := redistest.Start(t)
	return &deployment{url: srv.URL(), srv: srv}
}

func withSentinel(t *testing.T) *deployment {
	st := redistest.StartSentinel(t)
	return &deployment{url: st.URL(), sentinel: st}
}

func clusterWithReplica(t *testing.T) *deployment {
	c := redistest.StartCluster(t, 3)
	return &deployment{url: c.URL(), cluster: c}
}

// prepare readies d for the instances: a cluster gets a replica of the
// master of their slot.
func (d *deployment) prepare(in *instances) {
	if d.cluster != nil {
		d.replica = d.cluster.AddReplica(d.cluster.MasterOf(in.prefix))
	}
}

// spend makes n requests on instance i, each from its own client, and
// fails the test unless every one is admitted.
func (in *instances) spend(t *testing.T, i, n int) {
	t.Helper()
	for k := range n {
		res := in.limiters[i].Spend(context.Background(), ratelimit.Client{Key: fmt.Sprintf("c%d-%d", i, k)})
		if !res.Allowed || res.Err != nil {
			t.Fatalf("instance %d, request %d: allowed %v, %v %v; want admitted", i, k, res.Allowed, res.Reason, res.Err)
		}
	}
}

// probe does what Run does on every instance at a tick, and again at the
// next ticks while an instance's client has not found the new server
// after a restart or a failover.
func (in *instances) probe(t *testing.T) {
	t.Helper()
	for i, s := range in.stores {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) { // pacing, not waiting for a state
			err := s.Probe(context.Background(), in.clock.Now())
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("instance %d: probe: %v", i, err)
			}
		}
	}
}

// drain makes requests on the given instances from 8 goroutines each
// until the route budget refuses, and returns how many were admitted.
func (in *instances) drain(t *testing.T, active ...int) int64 {
	t.Helper()
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for _, i := range active {
		for g := range 8 {
			wg.Go(func() {
				for k := 0; ; k++ {
					res := in.limiters[i].Spend(context.Background(), ratelimit.Client{Key: fmt.Sprintf("d%d-%d-%d", i, g, k)})
					switch {
					case res.Err != nil:
						t.Errorf("instance %d: %v", i, res.Err)
						return
					case res.Allowed:
						admitted.Add(1)
					case res.Reason == ratelimit.ReasonBudget:
						return
					default:
						t.Errorf("instance %d: refused for %v", i, res.Reason)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	return admitted.Load()
}

// total reads the route budget's count as Redis holds it.
func (in *instances) total(t *testing.T) int64 {
	t.Helper()
	kind := "budget:"
	if in.limiters[0] != nil && in.money {
		kind = "budget-usd:"
	}
	key := in.prefix + kind + "route:" + strconv.FormatInt(ratelimit.Day.Start(in.clock.Now()).Unix(), 10) + ":spent"
	n, err := in.admin.HGet(context.Background(), key, "t").Int64()
	if err != nil {
		t.Fatalf("reading %s: %v", key, err)
	}
	return n
}

// TestBudgetSurvivesLoss is issue 15.6: a Redis that loses its data must
// not let a budget through twice. Two instances spend 600 of a 1000/day
// budget, Redis loses it in one of the ways it can, and the instances go
// on until the budget refuses: exactly 1000 are admitted in all, whether
// both instances go on or one sits idle (and only probes, as Run does).
// Before the restore, the budget admitted 1000 more after the loss.
func TestBudgetSurvivesLoss(t *testing.T) {
	const budget = 1000
	tests := []struct {
		name string
		// snapshot: Redis saves a snapshot after the first 600, and the
		// instances spend 100 more each before it restarts from it.
		snapshot bool
		loss     func(t *testing.T, d *deployment, in *instances)
		// deploy starts the Redis the case needs; nil: oneServer.
		deploy func(t *testing.T) *deployment
		active []int // instances that go on after the loss
		// noHold: the loss keeps the epoch, so nothing holds and each
		// instance restores its own share at its next call.
		noHold bool
	}{
		{name: "FLUSHALL, both go on", active: []int{0, 1}, loss: flushAll},
		{name: "FLUSHALL, one idle", active: []int{0}, loss: flushAll},
		{name: "restart empty, both go on", active: []int{0, 1}, loss: restart},
		{name: "restart empty, one idle", active: []int{1}, loss: restart},
		{name: "restart from an older snapshot, one idle", snapshot: true, active: []int{0}, loss: restart},
		// A failover to a replica that has every count (the test waits
		// for it) still holds: the new master cannot tell what it lacks.
		{name: "Sentinel failover, both go on", deploy: withSentinel, active: []int{0, 1}, loss: sentinelFailover},
		{name: "Sentinel failover, one idle", deploy: withSentinel, active: []int{1}, loss: sentinelFailover},
		{name: "cluster master dies, its replica takes over, one idle", deploy: clusterWithReplica, active: []int{0}, loss: clusterFailover},
		{name: "budget key evicted, both go on", noHold: true, active: []int{0, 1}, loss: func(t *testing.T, _ *deployment, in *instances) {
			key := in.prefix + "budget:route:" + strconv.FormatInt(ratelimit.Day.Start(in.clock.Now()).Unix(), 10) + ":spent"
			if n, err := in.admin.Del(context.Background(), key).Result(); n != 1 || err != nil {
				t.Fatalf("deleting %s: %d, %v", key, n, err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.deploy == nil {
				tt.deploy = oneServer
			}
			d := tt.deploy(t)
			in := newInstances(t, d.url, ratelimit.Options{
				OnStoreError: ratelimit.FailClosed,
				Budget:       ratelimit.Budget{Limit: budget, Window: ratelimit.Day},
				ClientBudget: ratelimit.Budget{Limit: 10, Window: ratelimit.Day},
			})
			d.prepare(in)
			in.spend(t, 0, 300)
			in.spend(t, 1, 300)
			in.probe(t) // as Run does: learns the server's run id
			spent := int64(600)
			if tt.snapshot {
				if err := in.admin.Save(context.Background()).Err(); err != nil {
					t.Fatal(err)
				}
				in.spend(t, 0, 100)
				in.spend(t, 1, 100)
				spent += 200
			}
			tt.loss(t, d, in)
			if !tt.noHold {
				// The first call after the loss finds it and counts
				// nothing; until every instance has restored its spend and
				// the hold is over, nobody admits.
				for _, i := range tt.active {
					in.findLoss(t, i)
				}
				in.probe(t)
				in.clock.Advance(lossHold - time.Millisecond)
				res := in.limiters[tt.active[0]].Spend(context.Background(), ratelimit.Client{Key: "held"})
				if res.Allowed || !errors.Is(res.Err, redis.ErrRestoring) {
					t.Fatalf("during the hold: allowed %v, %v; want refused while restoring", res.Allowed, res.Err)
				}
				in.clock.Advance(time.Millisecond)
			}
			after := in.drain(t, tt.active...)
			if got := spent + after; got != budget {
				t.Errorf("%d admitted before the loss and %d after: %d in all, want exactly the budget, %d", spent, after, got, budget)
			}
			if got := in.total(t); got != budget {
				t.Errorf("redis counts %d, want %d", got, budget)
			}
		})
	}
}

// findLoss makes calls on instance i until one finds the loss (and so
// starts the hold and the instance's restore), failing the test if one
// is admitted. Until the instance's client has found the new server
// (a restart, a failover), calls fail as during an outage.
func (in *instances) findLoss(t *testing.T, i int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		res := in.limiters[i].Spend(context.Background(), ratelimit.Client{Key: "first"})
		if res.Allowed {
			t.Fatalf("instance %d, first call after the loss: admitted; want refused while restoring", i)
		}
		if errors.Is(res.Err, redis.ErrRestoring) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %d, calls after the loss for 10s: %v %v; want refused while restoring", i, res.Reason, res.Err)
		}
		in.clock.Advance(redis.DefaultCooldown) // past the breaker, if it opened
		time.Sleep(10 * time.Millisecond)       // pacing, not waiting for a state
	}
}

func flushAll(t *testing.T, _ *deployment, in *instances) { redistest.FlushAll(t, in.admin) }

func restart(t *testing.T, d *deployment, in *instances) {
	d.srv.Restart()
}

// sentinelFailover promotes the replica once it has every count.
func sentinelFailover(t *testing.T, d *deployment, in *instances) {
	d.sentinel.WaitReplicated()
	d.sentinel.Failover()
}

// clusterFailover kills the master of the limiter's slot, once its
// replica has every count, and promotes the replica.
func clusterFailover(t *testing.T, d *deployment, in *instances) {
	m := d.cluster.MasterOf(in.prefix)
	m.Do("WAIT", 1, 5000)
	m.Kill()
	d.cluster.Failover(d.replica, true)
}

// TestBudgetLossUnderLoad: Redis loses everything while two instances
// are admitting requests concurrently. The main goroutine then does what
// Run does on each instance, probing, while the clock moves on in steps
// shorter than the hold: not one request beyond the budget is admitted.
func TestBudgetLossUnderLoad(t *testing.T) {
	redistest.Each(t, testBudgetLossUnderLoad)
}

func testBudgetLossUnderLoad(t *testing.T, url string) {
	const budget = 2000
	in := newInstances(t, url, ratelimit.Options{
		OnStoreError: ratelimit.FailClosed,
		Budget:       ratelimit.Budget{Limit: budget, Window: ratelimit.Day},
	})
	var admitted, refused atomic.Int64
	var done atomic.Bool
	var wg sync.WaitGroup
	for i := range in.limiters {
		for g := range 4 {
			wg.Go(func() {
				for k := 0; !done.Load(); k++ {
					res := in.limiters[i].Spend(context.Background(), ratelimit.Client{Key: fmt.Sprintf("u%d-%d-%d", i, g, k)})
					switch {
					case res.Allowed:
						admitted.Add(1)
					case res.Reason == ratelimit.ReasonBudget:
						refused.Add(1)
					case !errors.Is(res.Err, redis.ErrRestoring):
						t.Errorf("instance %d: refused for %v: %v", i, res.Reason, res.Err)
						return
					}
				}
			})
		}
	}
	// stuck fails the test if the requests stop making progress, rather
	// than letting it hang until the test binary's timeout.
	deadline := time.Now().Add(30 * time.Second)
	stuck := func(what string) bool {
		if time.Now().Before(deadline) {
			return false
		}
		e, _ := in.admin.HGetAll(context.Background(), in.prefix+"epoch").Result()
		t.Errorf("no progress in 30s %s: %d admitted, %d refused; epoch %v at %v", what, admitted.Load(), refused.Load(), e, in.clock.Now().UnixMicro())
		return true
	}
	for admitted.Load() < budget/3 && !t.Failed() && !stuck("before the flush") {
		time.Sleep(time.Millisecond) // pacing the check, not waiting for a state
	}
	flushAll(t, nil, in)
	lost := admitted.Load()
	for refused.Load() < 100 && !t.Failed() && !stuck("after the flush") {
		in.probe(t)
		in.clock.Advance(lossHold / 4)
		time.Sleep(time.Millisecond) // give the request goroutines the CPU
	}
	done.Store(true)
	wg.Wait()
	t.Logf("%d admitted before the flush, %d in all", lost, admitted.Load())
	if got := admitted.Load(); got != budget {
		t.Errorf("%d admitted, want exactly the budget, %d", got, budget)
	}
}

// TestFailOpenSpendIsCounted: what fail_open admits while Redis cannot
// count is not free: the instance's ledger holds it, and it joins the
// shared count when Redis answers again, whether Redis kept its data
// (a stall) or lost it (a crash).
func TestFailOpenSpendIsCounted(t *testing.T) {
	const budget = 100
	for _, tt := range []struct {
		name   string
		outage func(t *testing.T, d *deployment, in *instances) (end func())
	}{
		{name: "stall", outage: func(t *testing.T, _ *deployment, in *instances) func() {
			if err := in.admin.Do(context.Background(), "CLIENT", "PAUSE", 10_000, "WRITE").Err(); err != nil {
				t.Fatal(err)
			}
			return func() {
				if err := in.admin.Do(context.Background(), "CLIENT", "UNPAUSE").Err(); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{name: "crash", outage: func(t *testing.T, d *deployment, in *instances) func() {
			d.srv.Kill()
			return func() { restart(t, d, in) }
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := oneServer(t)
			in := newInstances(t, d.url, ratelimit.Options{
				OnStoreError: ratelimit.FailOpen,
				Budget:       ratelimit.Budget{Limit: budget, Window: ratelimit.Day},
			})
			// During the outage, a short store timeout, so that it costs
			// little; before and after, the usual instances.
			short, err := ratelimit.New(ratelimit.Options{Name: "route", Store: in.stores[0], Now: in.clock.Now, Timeout: 50 * time.Millisecond,
				OnStoreError: ratelimit.FailOpen, Budget: ratelimit.Budget{Limit: budget, Window: ratelimit.Day}})
			if err != nil {
				t.Fatal(err)
			}
			in.spend(t, 0, 30)
			in.probe(t)
			end := tt.outage(t, d, in)
			for k := range 20 {
				res := short.Spend(context.Background(), ratelimit.Client{Key: fmt.Sprintf("o%d", k)})
				if !res.Allowed || res.Err == nil {
					t.Fatalf("during the outage: allowed %v, %v; want admitted on a fault", res.Allowed, res.Err)
				}
			}
			end()
			in.clock.Advance(time.Second) // past the breaker's cooldown
			in.probe(t)
			in.clock.Advance(lossHold)
			if after := in.drain(t, 0, 1); after != budget-50 {
				t.Errorf("%d admitted after the outage, want %d: the 50 admitted before and during it count", after, budget-50)
			}
		})
	}
}

// TestSettledSpendSurvivesLoss: what is restored after a loss is what
// each instance spent net of what it gave back, and a reservation still
// in flight at the loss settles against the restored count.
func TestSettledSpendSurvivesLoss(t *testing.T) {
	redistest.Each(t, testSettledSpendSurvivesLoss)
}

func testSettledSpendSurvivesLoss(t *testing.T, url string) {
	const budget = 1_000_000 // $1
	in := newInstances(t, url, ratelimit.Options{
		OnStoreError: ratelimit.FailClosed,
		Budget:       ratelimit.Budget{Limit: budget, Window: ratelimit.Day, Unit: ratelimit.Money},
	})
	ctx := context.Background()
	reserve := func(i int, micros int64) ratelimit.Reservation {
		t.Helper()
		r, res := in.limiters[i].Reserve(ctx, ratelimit.Client{Key: "c"}, ratelimit.Amount{Money: config.Money(micros)})
		if !res.Allowed || res.Err != nil {
			t.Fatalf("instance %d: reserving %d: %v %v", i, micros, res.Reason, res.Err)
		}
		return r
	}
	settle := func(r *ratelimit.Reservation, micros int64) {
		t.Helper()
		if err := r.Settle(ctx, ratelimit.Amount{Money: config.Money(micros)}); err != nil {
			t.Fatal(err)
		}
	}
	a1 := reserve(0, 400_000)
	settle(&a1, 100_000)
	b1 := reserve(1, 300_000)
	settle(&b1, 250_000)
	inFlight := reserve(0, 200_000) // settled after the loss
	in.probe(t)
	flushAll(t, nil, in)
	in.probe(t)
	in.clock.Advance(lossHold)
	if got, want := in.total(t), int64(100_000+250_000+200_000); got != want {
		t.Errorf("restored count %d, want %d: what each instance spent, net of refunds", got, want)
	}
	settle(&inFlight, 50_000)
	if got, want := in.total(t), int64(100_000+250_000+50_000); got != want {
		t.Errorf("after settling the reservation in flight: count %d, want %d", got, want)
	}
}

// TestPauseSurvivesLoss: an emergency stop must not lift itself when
// Redis loses its data: an instance that saw the pause writes it back.
func TestPauseSurvivesLoss(t *testing.T) {
	redistest.Each(t, testPauseSurvivesLoss)
}

func testPauseSurvivesLoss(t *testing.T, url string) {
	in := newInstances(t, url, ratelimit.Options{})
	clock, stores, prefix, admin := in.clock, in.stores, in.prefix, in.admin
	ctx := context.Background()
	if err := stores[0].Pause(ctx, "chat", true); err != nil {
		t.Fatal(err)
	}
	if p, err := stores[1].Paused(ctx, "chat"); !p || err != nil {
		t.Fatalf("paused %v, %v; want true", p, err)
	}
	flushAll(t, nil, in)
	clock.Advance(redis.DefaultPauseRefresh)
	if p, err := stores[1].Paused(ctx, "chat"); !p || err != nil {
		t.Errorf("after the loss: paused %v, %v; want still paused", p, err)
	}
	redis.WaitPauseRefresh(stores[1]) // the refresh it started writes the pause back
	if fields, err := admin.HKeys(ctx, prefix+"paused").Result(); err != nil || !slices.Contains(fields, "r:chat") {
		t.Errorf("pause fields in redis after the loss: %v, %v; want r:chat written back", fields, err)
	}
	// A resume after the loss is obeyed.
	if err := stores[1].Pause(ctx, "chat", false); err != nil {
		t.Fatal(err)
	}
	clock.Advance(redis.DefaultPauseRefresh)
	stores[0].Paused(ctx, "chat") // stale: starts a refresh, answers from the view it has
	redis.WaitPauseRefresh(stores[0])
	if p, err := stores[0].Paused(ctx, "chat"); p || err != nil {
		t.Errorf("after the resume: paused %v, %v; want not", p, err)
	}
}
