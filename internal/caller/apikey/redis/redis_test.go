package redis

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	goredis "github.com/redis/go-redis/v9"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/caller/apikey"
	"github.com/keyward/keyward/internal/ratelimit"
	"github.com/keyward/keyward/internal/redisstore/redistest"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// counter counts the commands a client sends, by name, and can hold
// HGETALLs until released.
type counter struct {
	mu    sync.Mutex
	n     map[string]int
	hold  chan struct{} // when non-nil, HGETALL waits for it to close
	enter chan struct{} // told of each held HGETALL
}

func (c *counter) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (c *counter) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		c.mu.Lock()
		c.n[cmd.Name()]++
		hold, enter := c.hold, c.enter
		c.mu.Unlock()
		if hold != nil && cmd.Name() == "hgetall" {
			enter <- struct{}{}
			<-hold
		}
		return next(ctx, cmd)
	}
}

func (c *counter) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}

func (c *counter) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[name]
}

// instance is one gateway instance's view of the keys: its own client,
// store and verifier of the kind "partners".
type instance struct {
	client goredis.UniversalClient
	store  *Store
	v      *apikey.Verifier
	cmds   *counter
}

func newInstance(t testing.TB, url string, o Options) *instance {
	t.Helper()
	if o.Timeout == 0 {
		// The default suits a Redis on the network, not a shared machine
		// running the race detector; TestTimeout tests the bound.
		o.Timeout = 5 * time.Second
	}
	in := &instance{client: redistest.Open(t, url), cmds: &counter{n: map[string]int{}}}
	in.client.AddHook(in.cmds)
	in.store = New(in.client, o)
	t.Cleanup(func() { _ = in.store.Flush() })
	in.v = apikey.New(apikey.Options{Kind: "partners", Store: in.store, Now: o.Now})
	return in
}

func (in *instance) verify(key string) (caller.Identity, error) {
	return in.v.VerifyKey(context.Background(), key)
}

// add stores a new key kind/name created at now and returns it.
func add(t testing.TB, s *Store, kind, name string, now time.Time, mod func(*apikey.Record)) string {
	t.Helper()
	key, h, err := apikey.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r := apikey.Record{Kind: kind, Name: name, Hash: h, Created: now}
	if mod != nil {
		mod(&r)
	}
	if err := s.Add(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return key
}

func newKey(t testing.TB) string {
	key, _, err := apikey.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }

// TestAdmin: adding, revoking and listing keys, on one server and on a
// cluster, where a key's record, its name and the index that the adding
// script touches together share the prefix's hash tag.
func TestAdmin(t *testing.T) { redistest.Each(t, testAdmin) }

func testAdmin(t *testing.T, url string) {
	clk := newClock()
	in := newInstance(t, url, Options{Now: clk.Now})
	s, ctx := in.store, context.Background()
	t0 := clk.Now()
	acme := add(t, s, "partners", "acme", t0, func(r *apikey.Record) {
		r.Expires = t0.Add(90 * 24 * time.Hour)
		r.Limits = &apikey.Limits{Rate: "600/m", Burst: 50, Budget: "100000/month"}
	})
	ops := add(t, s, "internal", "ops", t0.Add(time.Hour), nil)
	beta := add(t, s, "partners", "beta", t0.Add(time.Hour), nil)

	if err := s.Add(ctx, apikey.Record{Kind: "partners", Name: "acme", Hash: apikey.HashOf(newKey(t)), Created: t0}); !errors.Is(err, apikey.ErrNameTaken) {
		t.Errorf("a name used twice: %v", err)
	}
	if err := s.Add(ctx, apikey.Record{Kind: "partners", Name: "again", Hash: apikey.HashOf(beta), Created: t0}); err == nil || !strings.Contains(err.Error(), "same hash") {
		t.Errorf("a hash stored twice: %v", err)
	}
	for _, bad := range []apikey.Record{
		{Kind: "partners", Name: "has space", Hash: apikey.HashOf("x"), Created: t0},
		{Kind: "partners", Name: "x", Hash: apikey.HashOf("x")},
		{Kind: "partners", Name: "y", Hash: apikey.HashOf("y"), Created: t0, Limits: &apikey.Limits{Rate: "lots"}},
	} {
		if err := s.Add(ctx, bad); err == nil {
			t.Errorf("Add(%+v) accepted", bad)
		}
	}
	revokedAt := t0.Add(48 * time.Hour)
	if err := s.Revoke(ctx, "partners", "acme", revokedAt); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ kind, name string }{{"partners", "acme"}, {"partners", "nobody"}, {"users", "acme"}} {
		if err := s.Revoke(ctx, tc.kind, tc.name, revokedAt); !errors.Is(err, apikey.ErrNotFound) {
			t.Errorf("revoking %s/%s: %v, want ErrNotFound", tc.kind, tc.name, err)
		}
	}
	if err := s.Add(ctx, apikey.Record{Kind: "partners", Name: "acme", Hash: apikey.HashOf(newKey(t)), Created: t0}); !errors.Is(err, apikey.ErrNameTaken) {
		t.Errorf("a revoked name reused: %v", err)
	}

	all, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	want := []apikey.Record{
		{Kind: "partners", Name: "acme", Hash: apikey.HashOf(acme), Created: t0, Expires: t0.Add(90 * 24 * time.Hour), Revoked: revokedAt,
			Limits: &apikey.Limits{Rate: "600/m", Burst: 50, Budget: "100000/month"}},
		{Kind: "internal", Name: "ops", Hash: apikey.HashOf(ops), Created: t0.Add(time.Hour)},
		{Kind: "partners", Name: "beta", Hash: apikey.HashOf(beta), Created: t0.Add(time.Hour)},
	}
	if diff := cmp.Diff(want, all); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	partners, err := s.List(ctx, "partners")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]apikey.Record{want[0], want[2]}, partners); diff != "" {
		t.Errorf("List(partners) (-want +got):\n%s", diff)
	}

	// Redis holds the hashes, never a key.
	dump := dumpRedis(t, in.client)
	for _, key := range []string{acme, ops, beta} {
		h := apikey.HashOf(key)
		if strings.Contains(dump, key) || strings.Contains(dump, key[len(apikey.Prefix):]) || !strings.Contains(dump, fmt.Sprintf("%x", h[:])) {
			t.Errorf("Redis must hold the hash of %s... and never the key:\n%s", key[:6], dump)
		}
	}
}

// dumpRedis returns every key and value in the database, as text.
func dumpRedis(t *testing.T, c goredis.UniversalClient) string {
	t.Helper()
	ctx := context.Background()
	keys := redistest.Keys(t, c, "*")
	var b strings.Builder
	for _, k := range keys {
		typ, err := c.Type(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		var v any
		switch typ {
		case "string":
			v, err = c.Get(ctx, k).Result()
		case "hash":
			v, err = c.HGetAll(ctx, k).Result()
		case "list":
			v, err = c.LRange(ctx, k, 0, -1).Result()
		default:
			t.Fatalf("unexpected %s key %s", typ, k)
		}
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s = %v\n", k, v)
	}
	return b.String()
}

func TestVerify(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	in := newInstance(t, srv.URL(), Options{Now: clk.Now})
	t0 := clk.Now()
	acme := add(t, in.store, "partners", "acme", t0, func(r *apikey.Record) {
		r.Limits = &apikey.Limits{Rate: "600/m", Burst: 50, Budget: "100000/month"}
	})
	soon := add(t, in.store, "partners", "soon", t0, func(r *apikey.Record) { r.Expires = t0.Add(time.Hour) })
	other := add(t, in.store, "internal", "ops", t0, nil)
	gone := add(t, in.store, "partners", "gone", t0, nil)
	if err := in.store.Revoke(context.Background(), "partners", "gone", t0); err != nil {
		t.Fatal(err)
	}
	id, err := in.verify(acme)
	if err != nil {
		t.Fatal(err)
	}
	want := caller.Identity{Kind: "partners", ID: "acme", Limits: &caller.Plan{
		Rate: ratelimit.Rate{Count: 600, Per: time.Minute}, Burst: 50,
		Budget: ratelimit.Budget{Limit: 100000, Window: ratelimit.Month}}}
	if diff := cmp.Diff(want, id); diff != "" {
		t.Errorf("identity (-want +got):\n%s", diff)
	}
	if id, err := in.verify(soon); err != nil || id.ID != "soon" || id.Limits != nil {
		t.Errorf("soon: %+v, %v", id, err)
	}
	for _, tc := range []struct {
		name, key string
		want      caller.Reason
	}{
		{"unknown", newKey(t), caller.UnknownKey},
		{"another kind's key", other, caller.UnknownKey},
		{"revoked", gone, caller.Revoked},
	} {
		if _, err := in.verify(tc.key); caller.ReasonOf(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
	clk.Advance(time.Hour)
	if _, err := in.verify(soon); caller.ReasonOf(err) != caller.Expired {
		t.Errorf("expired key: %v", err)
	}
}

// TestCache: a key's answer is reused for CacheTTL, so a revocation by
// another instance is seen once it expires; unknown keys are not cached.
func TestCache(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	a := newInstance(t, srv.URL(), Options{Now: clk.Now})
	cli := newInstance(t, srv.URL(), Options{})
	key := add(t, cli.store, "partners", "acme", clk.Now(), nil)
	for range 3 {
		if _, err := a.verify(key); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.cmds.count("hgetall"); n != 1 {
		t.Errorf("3 lookups within the TTL: %d HGETALLs, want 1", n)
	}
	if err := cli.store.Revoke(context.Background(), "partners", "acme", clk.Now()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(DefaultCacheTTL - time.Millisecond)
	if _, err := a.verify(key); err != nil {
		t.Errorf("within the TTL the cached answer holds: %v", err)
	}
	clk.Advance(time.Millisecond)
	if _, err := a.verify(key); caller.ReasonOf(err) != caller.Revoked {
		t.Errorf("once the TTL is over: %v, want revoked", err)
	}
	if n := a.cmds.count("hgetall"); n != 2 {
		t.Errorf("%d HGETALLs, want 2", n)
	}
	unknown := newKey(t)
	for range 2 {
		if _, err := a.verify(unknown); caller.ReasonOf(err) != caller.UnknownKey {
			t.Fatal(err)
		}
	}
	if n := a.cmds.count("hgetall"); n != 4 {
		t.Errorf("an unknown key looked up twice: %d HGETALLs in all, want 4 (never cached)", n)
	}
}

// TestRevocationReachesEveryInstance: a key created and accepted by two
// instances sharing a real redis-server is refused by both within a
// second of a revocation made elsewhere, on real clocks.
func TestRevocationReachesEveryInstance(t *testing.T) {
	redistest.Each(t, testRevocationReachesEveryInstance)
}

func testRevocationReachesEveryInstance(t *testing.T, url string) {
	a := newInstance(t, url, Options{})
	b := newInstance(t, url, Options{})
	cli := newInstance(t, url, Options{})
	key := add(t, cli.store, "partners", "acme", time.Now(), nil)
	for _, in := range []*instance{a, b} {
		if _, err := in.verify(key); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if err := cli.store.Revoke(context.Background(), "partners", "acme", start); err != nil {
		t.Fatal(err)
	}
	refusedBy := func(in *instance) bool {
		_, err := in.verify(key)
		return caller.ReasonOf(err) == caller.Revoked
	}
	waitFor(t, time.Second, func() bool { return refusedBy(a) && refusedBy(b) })
	t.Logf("revocation seen by both instances after %v", time.Since(start))
}

// waitFor polls cond until it holds, failing the test if it does not
// within limit.
func waitFor(t *testing.T, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", limit)
		}
		select {
		case <-time.After(time.Millisecond):
		case <-t.Context().Done():
			t.FailNow()
		}
	}
}

// TestOutage: while Redis is down, a key this instance checked less than
// CacheTTL ago keeps working; any other key, and then that one too, is
// refused (store_failed), never let in. Lookups recover with Redis.
func TestOutage(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	in := newInstance(t, srv.URL(), Options{Now: clk.Now})
	key := add(t, in.store, "partners", "acme", clk.Now(), nil)
	other := add(t, in.store, "partners", "beta", clk.Now(), nil)
	if _, err := in.verify(key); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	if _, err := in.verify(key); err != nil {
		t.Errorf("a key checked just before the outage: %v", err)
	}
	for name, k := range map[string]string{"a stored key not checked yet": other, "an unknown key": newKey(t)} {
		_, err := in.verify(k)
		if caller.ReasonOf(err) != caller.StoreFailed {
			t.Errorf("%s during the outage: %v, want store_failed", name, err)
		}
		if err != nil && strings.Contains(err.Error(), k[len(apikey.Prefix):]) {
			t.Errorf("the error quotes the key: %v", err)
		}
	}
	clk.Advance(DefaultCacheTTL)
	if _, err := in.verify(key); caller.ReasonOf(err) != caller.StoreFailed {
		t.Errorf("the checked key after the TTL: %v, want store_failed", err)
	}
	// Three faults in a row open the breaker: lookups fail without a dial.
	before := in.cmds.count("hgetall")
	if _, err := in.verify(key); !errors.Is(err, ErrUnavailable) {
		t.Errorf("with the breaker open: %v", err)
	}
	if n := in.cmds.count("hgetall"); n != before {
		t.Errorf("a lookup with the breaker open asked Redis")
	}
	// A Redis without persistence comes back empty: the key is unknown,
	// which is an answer, not a fault.
	srv.Restart()
	clk.Advance(DefaultCooldown)
	if _, err := in.verify(key); caller.ReasonOf(err) != caller.UnknownKey {
		t.Errorf("after the restart: %v, want unknown_key", err)
	}
}

// TestLastUsed: a key's last use is written at most once a minute, per
// instance and across instances, and never creates a record.
func TestLastUsed(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	a := newInstance(t, srv.URL(), Options{Now: clk.Now})
	b := newInstance(t, srv.URL(), Options{Now: clk.Now})
	t0 := clk.Now()
	key := add(t, a.store, "partners", "acme", t0, nil)
	h := apikey.HashOf(key)
	lastUsed := func() time.Time {
		t.Helper()
		_ = a.store.Flush()
		_ = b.store.Flush()
		list, err := a.store.List(context.Background(), "partners")
		if err != nil || len(list) != 1 {
			t.Fatalf("list: %+v, %v", list, err)
		}
		return list[0].LastUsed
	}
	steps := []struct {
		name string
		in   *instance
		at   time.Duration
		want time.Duration
	}{
		{"first use", a, time.Second, time.Second},
		{"same instance, 30s later", a, 31 * time.Second, time.Second},
		{"other instance, 40s later", b, 41 * time.Second, time.Second},
		{"a minute later", a, 61 * time.Second, 61 * time.Second},
		{"other instance, a minute after its try", b, 101 * time.Second, 61 * time.Second},
		{"other instance, a minute after its last try", b, 161 * time.Second, 161 * time.Second},
	}
	runs := a.cmds.count("evalsha") // the Add's
	for _, st := range steps {
		st.in.store.Used(h, t0.Add(st.at))
		if got := lastUsed(); !got.Equal(t0.Add(st.want)) {
			t.Errorf("%s: last used %v, want %v", st.name, got, t0.Add(st.want))
		}
	}
	a.store.Used(apikey.HashOf(newKey(t)), t0.Add(time.Hour))
	_ = a.store.Flush()
	if list, err := a.store.List(context.Background(), ""); err != nil || len(list) != 1 {
		t.Errorf("a use of an unknown key made a record: %+v, %v", list, err)
	}
	// Each write is one script run, which starts with EVALSHA.
	if n := a.cmds.count("evalsha") - runs; n != 3 {
		t.Errorf("the first instance tried %d last-use writes, want 3 (at 1s, 61s, 1h)", n)
	}
}

// TestCoalescing: lookups of one key that arrive while it is being read
// wait for that read instead of sending their own.
func TestCoalescing(t *testing.T) {
	srv := redistest.Start(t)
	in := newInstance(t, srv.URL(), Options{})
	key := add(t, in.store, "partners", "acme", time.Now(), nil)
	const n = 8
	hold, enter := make(chan struct{}), make(chan struct{}, n)
	var release sync.Once
	defer release.Do(func() { close(hold) })
	in.cmds.mu.Lock()
	in.cmds.hold, in.cmds.enter = hold, enter
	in.cmds.mu.Unlock()

	errs := make(chan error, n)
	verify := func() {
		_, err := in.verify(key)
		errs <- err
	}
	go verify()
	<-enter // the first lookup is reading
	for range n - 1 {
		go verify()
	}
	waiting := func() bool {
		in.store.mu.Lock()
		defer in.store.mu.Unlock()
		c := in.store.flight[apikey.HashOf(key)]
		return c != nil && c.waiters == n-1
	}
	waitFor(t, 5*time.Second, waiting)
	release.Do(func() { close(hold) })
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if got := in.cmds.count("hgetall"); got != 1 {
		t.Errorf("%d concurrent lookups sent %d HGETALLs, want 1", n, got)
	}
}

// TestCacheBound: the cache never holds more than CacheSize answers.
func TestCacheBound(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	in := newInstance(t, srv.URL(), Options{Now: clk.Now, CacheSize: 2})
	for i := range 5 {
		key := add(t, in.store, "partners", fmt.Sprint("p", i), clk.Now(), nil)
		if _, err := in.verify(key); err != nil {
			t.Fatal(err)
		}
		in.store.mu.Lock()
		size := len(in.store.cache)
		in.store.mu.Unlock()
		if size > 2 {
			t.Fatalf("after %d keys the cache holds %d", i+1, size)
		}
	}
}

// TestBadRecord: a record Redis holds but that cannot be decoded refuses
// the key (store_failed) and is reported by List.
func TestBadRecord(t *testing.T) {
	srv := redistest.Start(t)
	in := newInstance(t, srv.URL(), Options{})
	key := add(t, in.store, "partners", "acme", time.Now(), nil)
	h := apikey.HashOf(key)
	if err := in.client.HSet(context.Background(), in.store.recordKey(h), "created", "yesterday").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := in.verify(key); caller.ReasonOf(err) != caller.StoreFailed || !strings.Contains(err.Error(), `bad created "yesterday"`) {
		t.Errorf("verify: %v", err)
	}
	if _, err := in.store.List(context.Background(), ""); err == nil {
		t.Error("List hid a bad record")
	}
}

// TestTimeout: a Redis that does not answer within Timeout fails the
// lookup in about Timeout, even under a request without a deadline.
func TestTimeout(t *testing.T) {
	// A listener that accepts and never answers.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var conns sync.WaitGroup
	var stop atomic.Bool
	conns.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil || stop.Load() {
				return
			}
			defer c.Close()
		}
	})
	defer func() { stop.Store(true); l.Close(); conns.Wait() }()
	client := redistest.Client(t, "redis://"+l.Addr().String()+"/0?protocol=2")
	s := New(client, Options{Timeout: 50 * time.Millisecond})
	start := time.Now()
	_, _, err = s.Lookup(context.Background(), apikey.HashOf(newKey(t)))
	if err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("lookup on a silent server: %v after %v", err, time.Since(start))
	}
}

var benchRuns atomic.Int64 // names are never reused: each run adds its own

// go test -run '^$' -bench Lookup -benchmem ./internal/caller/apikey/redis/
func BenchmarkLookup(b *testing.B) {
	srv := redistest.Start(b)
	for _, bc := range []struct {
		name string
		ttl  time.Duration
	}{{"cached", 0}, {"uncached", -1}} {
		b.Run(bc.name, func(b *testing.B) {
			in := newInstance(b, srv.URL(), Options{CacheTTL: bc.ttl})
			key := add(b, in.store, "partners", fmt.Sprintf("bench-%s-%d", bc.name, benchRuns.Add(1)), time.Now(), nil)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := in.verify(key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// Every request of every connection checks the same key at once.
	b.Run("cached-parallel", func(b *testing.B) {
		in := newInstance(b, srv.URL(), Options{})
		key := add(b, in.store, "partners", fmt.Sprintf("bench-parallel-%d", benchRuns.Add(1)), time.Now(), nil)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := in.verify(key); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
