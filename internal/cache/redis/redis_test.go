package redis_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/cache"
	"github.com/keyward/keyward/internal/cache/redis"
	"github.com/keyward/keyward/internal/redisstore/redistest"
)

func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }

var epoch = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)

// TestStore: the entries and locks, on one server and on a cluster,
// where each script's two keys (an entry and its lock) share the cache
// key's hash tag.
func TestStore(t *testing.T) { redistest.Each(t, testStore) }

func testStore(t *testing.T, redisURL string) {
	c := redistest.Open(t, redisURL)
	s := redis.New(c, redis.Options{})
	ctx := context.Background()
	p, err := cache.NewPolicy(cache.PolicyOptions{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	key := p.Key("prod", "r", "/private/path", url.Values{"email": {"someone@example.com"}}, nil)

	if e, err := s.Get(ctx, key); e != nil || err != nil {
		t.Fatalf("empty store: %v, %v", e, err)
	}
	want := &cache.Entry{
		Status:  200,
		Header:  http.Header{"Content-Type": {"application/json"}},
		Body:    []byte("{\"binary\":\"\x00\xff\"}"),
		Date:    epoch,
		Expires: epoch.Add(time.Minute),
	}
	if err := s.Set(ctx, key, want, 1500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}

	t.Run("key names hold no client text and expire", func(t *testing.T) {
		keys := redistest.Keys(t, c, "*")
		if diff := cmp.Diff([]string{redis.DefaultPrefix + "{" + key.String() + "}"}, keys); diff != "" {
			t.Errorf("keys (-want +got):\n%s", diff)
		}
		ttl, err := c.PTTL(ctx, keys[0]).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 0 || ttl > 1500*time.Millisecond {
			t.Errorf("PTTL %v, want in (0, 1.5s]", ttl)
		}
	})
	t.Run("corrupt record is an error", func(t *testing.T) {
		if err := c.Set(ctx, redis.DefaultPrefix+"{"+key.String()+"}", "garbage", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, key); !errors.Is(err, cache.ErrCorrupt) {
			t.Errorf("get: err = %v, want ErrCorrupt", err)
		}
		if _, err := s.Claim(ctx, key, "me", time.Second, 0); !errors.Is(err, cache.ErrCorrupt) {
			t.Errorf("claim: err = %v, want ErrCorrupt", err)
		}
	})
	t.Run("lock", func(t *testing.T) {
		key := p.Key("prod", "r", "/lock", nil, nil)
		lock := redis.DefaultPrefix + "{" + key.String() + "}:lock"
		claim := func(token string, stale time.Duration) cache.Claim {
			t.Helper()
			cl, err := s.Claim(ctx, key, token, 10*time.Second, stale)
			if err != nil {
				t.Fatal(err)
			}
			cl.TTL = cl.TTL.Round(time.Second) // Redis counts down
			return cl
		}
		unlock := func(token, note string, ttl time.Duration) {
			t.Helper()
			if err := s.Unlock(ctx, key, token, []byte(note), ttl); err != nil {
				t.Fatal(err)
			}
		}
		if diff := cmp.Diff(cache.Claim{Won: true}, claim("a", 0)); diff != "" {
			t.Errorf("first claim (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(cache.Claim{Held: []byte("a"), TTL: 10 * time.Second}, claim("b", 0)); diff != "" {
			t.Errorf("second claim (-want +got):\n%s", diff)
		}
		unlock("b", "", 0) // not b's: nothing happens
		unlock("a", "failed", 5*time.Second)
		if diff := cmp.Diff(cache.Claim{Held: []byte("failed"), TTL: 5 * time.Second}, claim("b", 0)); diff != "" {
			t.Errorf("claim of a lock with a note (-want +got):\n%s", diff)
		}
		unlock("a", "other", time.Second) // the note is not a's token any more
		if got := c.Get(ctx, lock).Val(); got != "failed" {
			t.Errorf("lock = %q after an unlock by a former holder", got)
		}
		c.Del(ctx, lock)

		claim("c", 0)
		if err := s.SetUnlock(ctx, key, want, 3*time.Second, "c"); err != nil {
			t.Fatal(err)
		}
		if n := c.Exists(ctx, lock).Val(); n != 0 {
			t.Error("SetUnlock left the lock")
		}
		if diff := cmp.Diff(cache.Claim{Entry: want}, claim("d", 2*time.Second)); diff != "" {
			t.Errorf("claim of a fresh entry (-want +got):\n%s", diff)
		}
		// With 3 s left in the store of which 5 s are the stale window,
		// the entry is stale: the claim takes the lock.
		if diff := cmp.Diff(cache.Claim{Won: true}, claim("d", 5*time.Second)); diff != "" {
			t.Errorf("claim of a stale entry (-want +got):\n%s", diff)
		}
		if err := s.SetUnlock(ctx, key, want, 3*time.Second, "x"); err != nil {
			t.Fatal(err)
		}
		if got := c.Get(ctx, lock).Val(); got != "d" {
			t.Errorf("lock = %q after SetUnlock by another token, want d's", got)
		}
	})
	t.Run("prefix", func(t *testing.T) {
		other := redis.New(c, redis.Options{Prefix: "other:"})
		if e, _ := other.Get(ctx, key); e != nil {
			t.Error("entry visible under another prefix")
		}
	})
}

// instance is one gateway instance in miniature: its own Redis client,
// Store and Cache, and a front server proxying to a shared upstream.
type instance struct {
	front   *httptest.Server
	cache   *cache.Cache
	serving sync.WaitGroup // requests in the front's handler
}

// idle waits until the front's handlers have returned: a response's
// entry is stored once its body is sent, so after the client has it.
func (in *instance) idle() { in.serving.Wait() }

func newInstance(t *testing.T, redisURL string, p *cache.Policy, upstream string, o cache.Options, so redis.Options) *instance {
	t.Helper()
	target, _ := url.Parse(upstream)
	proxy := &httputil.ReverseProxy{
		Rewrite:  func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		ErrorLog: log.New(io.Discard, "", 0),
	}
	in := &instance{cache: cache.New(redis.New(redistest.Open(t, redisURL), so), o)}
	t.Cleanup(in.cache.Wait)
	in.front = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in.serving.Add(1) // before the response, so before any idle
		defer in.serving.Done()
		key := p.Key("prod", "route", r.URL.EscapedPath(), r.URL.Query(), r.Header)
		in.cache.Serve(w, r, key, p, proxy.ServeHTTP)
	}))
	t.Cleanup(in.front.Close)
	return in
}

func get(t *testing.T, client *http.Client, u string) (status int, cacheStatus, body string) {
	t.Helper()
	res, err := client.Get(u)
	if err != nil {
		t.Error(err)
		return 0, "", ""
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Error(err)
	}
	return res.StatusCode, res.Header.Get("Cache-Status"), string(b)
}

// TestTwoInstances: 200 concurrent requests for one cold key, spread over
// two instances sharing one Redis, make at most two upstream calls (one
// per instance: coalescing is per instance), and all get the response.
func TestTwoInstances(t *testing.T) { redistest.Each(t, testTwoInstances) }

func testTwoInstances(t *testing.T, redisURL string) {
	var calls atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		io.WriteString(w, "payload")
	}))
	t.Cleanup(upstream.Close)
	p, _ := cache.NewPolicy(cache.PolicyOptions{TTL: time.Minute})
	// A generous timeout: under the race detector and 200 concurrent
	// requests a 50 ms Redis call can time out, which is a miss by design
	// but would make the count depend on the machine.
	o := cache.Options{Timeout: 5 * time.Second}
	a := newInstance(t, redisURL, p, upstream.URL, o, redis.Options{})
	b := newInstance(t, redisURL, p, upstream.URL, o, redis.Options{})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	t.Cleanup(client.CloseIdleConnections)

	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		front := a.front
		if i%2 == 1 {
			front = b.front
		}
		wg.Go(func() {
			if status, cs, body := get(t, client, front.URL+"/hot?page=1"); status != 200 || body != "payload" {
				t.Errorf("got %d %q (%s)", status, body, cs)
			}
		})
	}
	wg.Wait()
	if got := calls.Load(); got < 1 || got > 2 {
		t.Errorf("upstream calls = %d, want 1 or 2", got)
	}

	t.Run("an entry stored by one instance is a hit on the other", func(t *testing.T) {
		before := calls.Load()
		get(t, client, a.front.URL+"/other")
		a.idle()
		if _, cs, body := get(t, client, b.front.URL+"/other"); !strings.HasPrefix(cs, "keyward; hit; ttl=") || body != "payload" {
			t.Errorf("instance b: %q %q", cs, body)
		}
		if got := calls.Load() - before; got != 1 {
			t.Errorf("upstream calls = %d, want 1", got)
		}
	})
}

// TestRedisKilled: without a memory tier, with Redis gone, requests are
// still served, as misses, and every fault is reported; the breaker then
// spares the requests the timeout; once Redis is back the cache works
// again on its own.
func TestRedisKilled(t *testing.T) {
	srv := redistest.Start(t)
	var calls atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		fmt.Fprint(w, "payload")
	}))
	t.Cleanup(upstream.Close)
	p, _ := cache.NewPolicy(cache.PolicyOptions{TTL: time.Minute})

	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	advance := func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(d)
	}
	var faults []error
	// A dead server refuses at once, so a generous timeout costs the test
	// nothing and keeps a loaded machine from turning hits into misses.
	o := cache.Options{Now: clock, Timeout: 2 * time.Second, MemoryTier: -1, OnFault: func(err error) {
		mu.Lock()
		defer mu.Unlock()
		faults = append(faults, err)
	}}
	faultCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(faults)
	}
	in := newInstance(t, srv.URL(), p, upstream.URL, o, redis.Options{Now: clock})
	client := &http.Client{}
	t.Cleanup(client.CloseIdleConnections)
	u := in.front.URL + "/a"

	get(t, client, u)
	if _, cs, _ := get(t, client, u); cs != "keyward; hit; ttl=60" {
		t.Fatalf("before the outage: %q", cs)
	}

	srv.Kill()
	before := calls.Load()
	for i := range 10 {
		status, cs, body := get(t, client, u)
		if status != 200 || body != "payload" || cs != "keyward; fwd=uri-miss; fwd-status=200; stored; ttl=60" {
			t.Errorf("request %d during the outage: %d %q %q", i, status, body, cs)
		}
	}
	if got := calls.Load() - before; got != 10 {
		t.Errorf("upstream calls during the outage = %d, want 10", got)
	}
	in.idle() // the last request's store, after its response
	if got := faultCount(); got != 20 {
		t.Errorf("%d faults reported, want 20 (a get and a set per request)", got)
	}
	mu.Lock()
	var serr *cache.StoreError
	last := faults[len(faults)-1]
	mu.Unlock()
	if !errors.As(last, &serr) || !errors.Is(last, redis.ErrUnavailable) {
		t.Errorf("after three faults the breaker should answer: last fault %v", last)
	}

	srv.Restart()
	// Recovery needs no action: once the cooldown is over, the next call
	// probes Redis. The first call on a pooled connection to the dead
	// server may still fail, so allow a few rounds.
	for i := 0; ; i++ {
		advance(redis.DefaultCooldown)
		get(t, client, u)
		if _, cs, _ := get(t, client, u); cs == "keyward; hit; ttl=60" {
			break
		}
		if i == 10 {
			t.Fatal("cache did not recover after Redis restarted")
		}
	}
}

// TestRedisStopped (issue 15.6): with Redis stopped mid-test, repeated
// requests for cached keys, on two instances, make no more upstream calls
// than with Redis up: each instance serves what it served from its memory
// tier. Before the tier every request was a miss (22,000 upstream calls
// per 5 s under load). A key an instance first sees during the outage
// costs it one call, with its faults reported, and is then served from
// memory too; once Redis is back, instances share entries again.
func TestRedisStopped(t *testing.T) {
	srv := redistest.Start(t)
	var calls atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		fmt.Fprint(w, "payload")
	}))
	t.Cleanup(upstream.Close)
	p, _ := cache.NewPolicy(cache.PolicyOptions{TTL: time.Minute})

	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	var faults atomic.Int64
	// A dead server refuses at once, so a generous timeout costs the test
	// nothing and keeps a loaded machine from turning hits into misses.
	o := cache.Options{Now: clock, Timeout: 2 * time.Second, OnFault: func(error) { faults.Add(1) }}
	a := newInstance(t, srv.URL(), p, upstream.URL, o, redis.Options{Now: clock})
	b := newInstance(t, srv.URL(), p, upstream.URL, o, redis.Options{Now: clock})
	client := &http.Client{}
	t.Cleanup(client.CloseIdleConnections)

	// requests sends n requests for path, alternating between the
	// instances, and returns the upstream calls they made.
	requests := func(path string, n int) int64 {
		t.Helper()
		before := calls.Load()
		for i := range n {
			in := a
			if i%2 == 1 {
				in = b
			}
			if status, cs, body := get(t, client, in.front.URL+path); status != 200 || body != "payload" {
				t.Errorf("%s: %d %q (%s)", path, status, body, cs)
			}
		}
		return calls.Load() - before
	}

	if got := requests("/a", 2); got != 1 {
		t.Fatalf("warming up: %d upstream calls, want 1 (b reads a's entry from Redis)", got)
	}
	up := requests("/a", 20)

	srv.Kill()
	if down := requests("/a", 20); down > up {
		t.Errorf("with Redis stopped: %d upstream calls for a cached key, with Redis up %d", down, up)
	}
	if got := faults.Load(); got != 0 {
		t.Errorf("%d faults for hits served from memory, want 0", got)
	}
	if got := requests("/new", 20); got != 2 {
		t.Errorf("a key first seen during the outage: %d upstream calls, want 2 (one per instance)", got)
	}
	if got := faults.Load(); got < 2 {
		t.Errorf("%d faults reported for the new key's misses, want its gets and sets", got)
	}

	srv.Restart()
	// Recovery needs no action: once the cooldown is over, the next call
	// probes Redis. The first call on a pooled connection to the dead
	// server may still fail, so allow a few rounds.
	for i := 0; ; i++ {
		mu.Lock()
		now = now.Add(redis.DefaultCooldown)
		mu.Unlock()
		path := fmt.Sprintf("/after/%d", i)
		get(t, client, a.front.URL+path)
		if _, cs, _ := get(t, client, b.front.URL+path); strings.HasPrefix(cs, "keyward; hit") {
			break
		}
		if i == 10 {
			t.Fatal("instances do not share entries after Redis restarted")
		}
	}
}

// BenchmarkServeHit is a cache hit on a Redis store, without HTTP: from
// Redis alone (key, GET, decode and writing the response), and from the
// memory tier in front of it; compare with the memory store's
// BenchmarkServeHit in package cache.
func BenchmarkServeHit(b *testing.B) {
	srv := redistest.Start(b)
	client := redistest.Client(b, srv.URL())
	b.Run("redis", func(b *testing.B) {
		benchmarkServeHit(b, cache.New(redis.New(client, redis.Options{}), cache.Options{MemoryTier: -1}))
	})
	b.Run("memory-tier", func(b *testing.B) {
		benchmarkServeHit(b, cache.New(redis.New(client, redis.Options{}), cache.Options{}))
	})
}

func benchmarkServeHit(b *testing.B, c *cache.Cache) {
	p, _ := cache.NewPolicy(cache.PolicyOptions{TTL: time.Hour})
	body := strings.Repeat(`{"id":12345,"name":"keyward","full_name":"keyward/keyward"},`, 30)
	fetch := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	}
	r := httptest.NewRequest("GET", "/repos/keyward/keyward/issues?page=2", nil)
	key := p.Key("prod", "issues", r.URL.EscapedPath(), r.URL.Query(), r.Header)
	c.Serve(httptest.NewRecorder(), r, key, p, fetch)
	// A Redis call slower than the 50 ms timeout (a loaded machine) is a
	// miss by design; count those rather than fail.
	var misses atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w := httptest.NewRecorder()
			c.Serve(w, r, key, p, fetch)
			if w.Body.Len() != len(body) {
				b.Errorf("served %d bytes", w.Body.Len())
				return
			}
			if !strings.HasPrefix(w.Header().Get("Cache-Status"), "keyward; hit") {
				misses.Add(1)
			}
		}
	})
	b.ReportMetric(float64(misses.Load())/float64(b.N), "misses/op")
}

// BenchmarkServeMiss is a cache miss on a Redis store, without HTTP: the
// lookups (memory tier, Redis), an in-process fetch and storing the
// response, for a new key each time; what coalescing across instances
// adds to a miss shows here.
func BenchmarkServeMiss(b *testing.B) {
	srv := redistest.Start(b)
	client := redistest.Client(b, srv.URL())
	c := cache.New(redis.New(client, redis.Options{}), cache.Options{})
	p, _ := cache.NewPolicy(cache.PolicyOptions{TTL: time.Hour})
	body := strings.Repeat(`{"id":12345,"name":"keyward","full_name":"keyward/keyward"},`, 30)
	fetch := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	}
	r := httptest.NewRequest("GET", "/repos/keyward/keyward/issues", nil)
	var n atomic.Int64
	var hits atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			page := strconv.FormatInt(n.Add(1), 10)
			key := p.Key("prod", "issues", r.URL.EscapedPath(), url.Values{"page": {page}}, r.Header)
			w := httptest.NewRecorder()
			c.Serve(w, r, key, p, fetch)
			if w.Body.Len() != len(body) {
				b.Errorf("served %d bytes", w.Body.Len())
				return
			}
			if strings.HasPrefix(w.Header().Get("Cache-Status"), "keyward; hit") {
				hits.Add(1)
			}
		}
	})
	b.ReportMetric(float64(hits.Load())/float64(b.N), "hits/op")
}
