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
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/cache"
	"github.com/keyward/keyward/internal/cache/redis"
	"github.com/keyward/keyward/internal/redisstore/redistest"
)

// watched is the Redis store of one instance, telling the test when the
// instance finds a key's lock held by another and starts waiting.
type watched struct {
	*redis.Store
	claims  atomic.Int64
	waiting chan struct{} // one signal, when a Claim first finds the lock held
	once    sync.Once
}

func (w *watched) Claim(ctx context.Context, key cache.Key, token string, ttl, stale time.Duration) (cache.Claim, error) {
	c, err := w.Store.Claim(ctx, key, token, ttl, stale)
	w.claims.Add(1)
	if err == nil && !c.Won && c.Entry == nil {
		w.once.Do(func() { close(w.waiting) })
	}
	return c, err
}

// fleet is three gateway instances in miniature on one Redis, each with
// its own client, memory tier and Cache, proxying to one upstream.
type fleet struct {
	t      *testing.T
	ctx    context.Context   // the requests'; cancelled when the test ends
	srv    *redistest.Server // the fleet's own server; nil on a URL given
	fronts [3]*httptest.Server
	stores [3]*watched
	client *http.Client

	mu     sync.Mutex
	faults []error
}

// newFleet starts a fleet on the Redis at redisURL, or on a server of
// its own if redisURL is "".
func newFleet(t *testing.T, redisURL string, po cache.PolicyOptions, o cache.Options, upstream http.Handler) *fleet {
	t.Helper()
	f := &fleet{t: t, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	if redisURL == "" {
		f.srv = redistest.Start(t)
		redisURL = f.srv.URL()
	}
	t.Cleanup(f.client.CloseIdleConnections)
	up := httptest.NewServer(upstream)
	t.Cleanup(up.Close)
	target, _ := url.Parse(up.URL)
	p, err := cache.NewPolicy(po)
	if err != nil {
		t.Fatal(err)
	}
	// A generous store timeout: under the race detector a 50 ms Redis call
	// can time out, which is a local fetch by design but would make the
	// count depend on the machine. A dead server refuses at once.
	o.Timeout = 5 * time.Second
	o.OnFault = func(err error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.faults = append(f.faults, err)
	}
	for i := range f.fronts {
		proxy := &httputil.ReverseProxy{
			Rewrite:  func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
			ErrorLog: log.New(io.Discard, "", 0),
		}
		f.stores[i] = &watched{Store: redis.New(redistest.Open(t, redisURL), redis.Options{}), waiting: make(chan struct{})}
		c := cache.New(f.stores[i], o)
		t.Cleanup(c.Wait)
		f.fronts[i] = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			key := p.Key("prod", "route", r.URL.EscapedPath(), r.URL.Query(), r.Header)
			c.Serve(w, r, key, p, proxy.ServeHTTP)
		}))
		t.Cleanup(f.fronts[i].Close)
	}
	// Run first: a failed test leaves requests waiting, which would keep
	// the servers from closing.
	ctx, cancel := context.WithCancel(context.Background())
	f.ctx = ctx
	t.Cleanup(cancel)
	return f
}

type result struct {
	status      int
	cacheStatus string
	body        string
	err         error
}

// get sends a request for path to instance i and delivers its result.
func (f *fleet) get(i int, path string) <-chan result { return f.getCtx(f.ctx, i, path) }

// getCtx is get with a context of the caller's, derived from f.ctx.
func (f *fleet) getCtx(ctx context.Context, i int, path string) <-chan result {
	out := make(chan result, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", f.fronts[i].URL+path, nil)
		res, err := f.client.Do(req)
		if err != nil {
			out <- result{err: err}
			return
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		out <- result{status: res.StatusCode, cacheStatus: res.Header.Get("Cache-Status"), body: string(b), err: err}
	}()
	return out
}

// waitFor waits for a signal, failing the test if it does not come.
func waitFor[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// waiting waits until instances is have each found the key locked by
// another instance.
func (f *fleet) waiting(is ...int) {
	f.t.Helper()
	for _, i := range is {
		waitFor(f.t, f.stores[i].waiting, fmt.Sprintf("instance %d to wait for the lock", i))
	}
}

func (f *fleet) faultCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.faults)
}

func (f *fleet) claims() (n int64) {
	for _, s := range f.stores {
		n += s.claims.Load()
	}
	return n
}

// blocking is an upstream whose calls arrive on arrived and wait for
// release to be closed (or for their request to end) before answering
// with answer.
type blocking struct {
	calls   atomic.Int64
	arrived chan time.Time
	release chan struct{}
	answer  http.HandlerFunc
}

func newBlocking(answer http.HandlerFunc) *blocking {
	return &blocking{arrived: make(chan time.Time, 100), release: make(chan struct{}), answer: answer}
}

func (b *blocking) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.calls.Add(1)
	b.arrived <- time.Now()
	select {
	case <-b.release:
	case <-r.Context().Done():
		return
	}
	b.answer(w, r)
}

func payload(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "payload") }

// spread sends n requests for path over the three instances, after the
// first one, which is sent to instance 0 alone by the caller, and returns
// their results.
func (f *fleet) spread(n int, path string) []<-chan result {
	var out []<-chan result
	for i := range n {
		out = append(out, f.get((i+1)%3, path))
	}
	return out
}

// TestThreeInstancesOneCall (issue 13.6): 30 concurrent requests for one
// cold key spread over three instances on one Redis make one upstream
// call in total: the instance that takes the key's lock calls, the others
// wait for its entry. Before, each instance called once (3 calls).
func TestThreeInstancesOneCall(t *testing.T) { redistest.Each(t, testThreeInstancesOneCall) }

func testThreeInstancesOneCall(t *testing.T, redisURL string) {
	up := newBlocking(payload)
	f := newFleet(t, redisURL, cache.PolicyOptions{TTL: time.Minute}, cache.Options{}, up)

	first := f.get(0, "/hot")
	waitFor(t, up.arrived, "the first upstream call")
	rest := f.spread(29, "/hot")
	f.waiting(1, 2)
	close(up.release)

	for i, ch := range append(rest, first) {
		if r := waitFor(t, ch, "a response"); r.err != nil || r.status != 200 || r.body != "payload" {
			t.Errorf("request %d: %d %q %v (%s)", i, r.status, r.body, r.err, r.cacheStatus)
		}
	}
	if got := up.calls.Load(); got != 1 {
		t.Errorf("upstream calls = %d, want 1", got)
	}
	if got := f.faultCount(); got != 0 {
		t.Errorf("%d store faults: %v", got, f.faults)
	}
	// Two instances waited, each polling once per request of theirs that
	// missed and then with backoff: a few tens of calls at most.
	t.Logf("lock claims across the three instances: %d", f.claims())

	t.Run("collapsed", func(t *testing.T) {
		// An instance that waited says so, as a local waiter would.
		up2 := newBlocking(payload)
		f := newFleet(t, redisURL, cache.PolicyOptions{TTL: time.Minute}, cache.Options{}, up2)
		first := f.get(0, "/k")
		waitFor(t, up2.arrived, "the upstream call")
		other := f.get(1, "/k")
		f.waiting(1)
		close(up2.release)
		waitFor(t, first, "the first response")
		if r := waitFor(t, other, "the other response"); r.cacheStatus != "keyward; fwd=uri-miss; fwd-status=200; collapsed; ttl=59" && r.cacheStatus != "keyward; fwd=uri-miss; fwd-status=200; collapsed; ttl=60" {
			t.Errorf("Cache-Status %q", r.cacheStatus)
		}
	})
}

// TestLockHolderHangs (issue 13.6): when the instance holding a key's
// lock never finishes its upstream call (it hangs, or its process died),
// another instance takes the lock over once it expires (the route's
// upstream timeout plus cache.LockSlack) and calls the upstream: two
// calls in all, not one per instance, and the takeover comes no sooner
// than the lock's expiry.
func TestLockHolderHangs(t *testing.T) {
	const timeout = 200 * time.Millisecond
	var hung atomic.Bool
	hangFirst := make(chan struct{})
	var calls atomic.Int64
	second := make(chan time.Time, 10)
	arrived := make(chan time.Time, 1)
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if hung.CompareAndSwap(false, true) {
			arrived <- time.Now()
			select {
			case <-hangFirst:
			case <-r.Context().Done():
				return
			}
		} else {
			second <- time.Now()
		}
		io.WriteString(w, "payload")
	})
	f := newFleet(t, "", cache.PolicyOptions{TTL: time.Minute, UpstreamTimeout: timeout}, cache.Options{}, upstream)

	first := f.get(0, "/hot")
	start := waitFor(t, arrived, "the first upstream call")
	// The holder's own instance gets none: its requests would wait for
	// its hung call, as they would in a dead process.
	var rest []<-chan result
	for i := range 20 {
		rest = append(rest, f.get(1+i%2, "/hot"))
	}
	f.waiting(1, 2)
	for i, ch := range rest {
		if r := waitFor(t, ch, "a response"); r.err != nil || r.status != 200 || r.body != "payload" {
			t.Errorf("request %d: %d %q %v (%s)", i, r.status, r.body, r.err, r.cacheStatus)
		}
	}
	if got := calls.Load(); got != 2 {
		t.Errorf("upstream calls = %d, want 2 (the hung one and one takeover)", got)
	}
	if took := waitFor(t, second, "the takeover").Sub(start); took < timeout+cache.LockSlack-100*time.Millisecond {
		t.Errorf("took over %v after the first call, before the lock expired (%v)", took, timeout+cache.LockSlack)
	}
	close(hangFirst)
	if r := waitFor(t, first, "the hung response"); r.status != 200 {
		t.Errorf("hung request: %d %v", r.status, r.err)
	}
	if got := f.faultCount(); got != 0 {
		t.Errorf("%d store faults: %v", got, f.faults)
	}
}

// TestLockHolderGone (issue 13.6): when the client of the request holding
// a key's lock goes away mid-call, the lock is released at once and
// another instance calls the upstream for everyone waiting: two calls in
// all, and nobody waits for the lock to expire.
func TestLockHolderGone(t *testing.T) { redistest.Each(t, testLockHolderGone) }

func testLockHolderGone(t *testing.T, redisURL string) {
	up := newBlocking(payload)
	// An upstream timeout far longer than the test: a waiter that waited
	// for the lock to expire would time the test out.
	f := newFleet(t, redisURL, cache.PolicyOptions{TTL: time.Minute, UpstreamTimeout: time.Hour}, cache.Options{}, up)

	ctx, cancel := context.WithCancel(f.ctx)
	first := f.getCtx(ctx, 0, "/hot")
	waitFor(t, up.arrived, "the first upstream call")
	rest := f.spread(29, "/hot")
	f.waiting(1, 2)
	cancel()
	if r := waitFor(t, first, "the cancelled request"); !errors.Is(r.err, context.Canceled) {
		t.Errorf("cancelled request: %d %v", r.status, r.err)
	}
	waitFor(t, up.arrived, "the takeover")
	close(up.release)
	for i, ch := range rest {
		if r := waitFor(t, ch, "a response"); r.err != nil || r.status != 200 || r.body != "payload" {
			t.Errorf("request %d: %d %q %v (%s)", i, r.status, r.body, r.err, r.cacheStatus)
		}
	}
	if got := up.calls.Load(); got != 2 {
		t.Errorf("upstream calls = %d, want 2 (the abandoned one and one takeover)", got)
	}
}

// TestRedisKilledWhileWaiting (issue 13.6): when Redis dies while
// instances wait for another's lock, each stops waiting and calls the
// upstream itself, once per instance (coalescing locally), and nobody
// hangs: three calls for 30 requests.
func TestRedisKilledWhileWaiting(t *testing.T) {
	up := newBlocking(payload)
	f := newFleet(t, "", cache.PolicyOptions{TTL: time.Minute, UpstreamTimeout: time.Hour}, cache.Options{}, up)

	first := f.get(0, "/hot")
	waitFor(t, up.arrived, "the first upstream call")
	rest := f.spread(29, "/hot")
	f.waiting(1, 2)
	f.srv.Kill()
	waitFor(t, up.arrived, "the second instance's own call")
	waitFor(t, up.arrived, "the third instance's own call")
	close(up.release)
	for i, ch := range append(rest, first) {
		if r := waitFor(t, ch, "a response"); r.err != nil || r.status != 200 || r.body != "payload" {
			t.Errorf("request %d: %d %q %v (%s)", i, r.status, r.body, r.err, r.cacheStatus)
		}
	}
	if got := up.calls.Load(); got != 3 {
		t.Errorf("upstream calls = %d, want 3 (one per instance)", got)
	}
	if f.faultCount() == 0 {
		t.Error("no store fault reported")
	}
}

// TestFailureShared (issue 13.6): a failing upstream fails once across
// instances: the waiting instances answer with the leader's failure, and
// so does an instance that had not seen the key, within the failure
// window, which the lock's note carries.
func TestFailureShared(t *testing.T) { redistest.Each(t, testFailureShared) }

func testFailureShared(t *testing.T, redisURL string) {
	up := newBlocking(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "down")
	})
	f := newFleet(t, redisURL, cache.PolicyOptions{TTL: time.Minute}, cache.Options{FailureWindow: time.Hour}, up)

	first := f.get(0, "/hot")
	waitFor(t, up.arrived, "the first upstream call")
	var rest []<-chan result
	for range 20 {
		rest = append(rest, f.get(1, "/hot"))
	}
	f.waiting(1)
	close(up.release)
	for i, ch := range append(rest, first) {
		if r := waitFor(t, ch, "a response"); r.err != nil || r.status != 503 || r.body != "down" {
			t.Errorf("request %d: %d %q %v (%s)", i, r.status, r.body, r.err, r.cacheStatus)
		}
	}
	for i := range 3 {
		r := waitFor(t, f.get(i, "/hot"), "a response")
		if r.status != 503 || r.body != "down" || r.cacheStatus != "keyward; fwd=uri-miss; fwd-status=503; collapsed" {
			t.Errorf("instance %d within the failure window: %d %q %q", i, r.status, r.body, r.cacheStatus)
		}
	}
	if got := up.calls.Load(); got != 1 {
		t.Errorf("upstream calls = %d, want 1", got)
	}
	if r := waitFor(t, f.get(2, "/other"), "a response"); r.status != 503 {
		t.Errorf("another key: %d", r.status)
	}
	if got := up.calls.Load(); got != 2 {
		t.Errorf("upstream calls = %d, want 2 (one per key)", got)
	}
}

// TestNotStorableShared (issue 13.6): when the leader's response turns
// out not storable, the waiting instances learn it from its head and call
// the upstream themselves at once, without waiting for a body that may
// never end, nor for the lock to expire.
func TestNotStorableShared(t *testing.T) { redistest.Each(t, testNotStorableShared) }

func testNotStorableShared(t *testing.T, redisURL string) {
	endStream := make(chan struct{})
	var calls atomic.Int64
	arrived := make(chan struct{})
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "private")
		if calls.Add(1) == 1 {
			close(arrived)
			w.WriteHeader(200)
			io.WriteString(w, "stream ")
			http.NewResponseController(w).Flush()
			select {
			case <-endStream:
			case <-r.Context().Done():
			}
			return
		}
		io.WriteString(w, "own")
	})
	f := newFleet(t, redisURL, cache.PolicyOptions{TTL: time.Minute, UpstreamTimeout: time.Hour}, cache.Options{}, upstream)

	first := f.get(0, "/hot")
	<-arrived
	var rest []<-chan result
	for i := range 10 {
		rest = append(rest, f.get(1+i%2, "/hot"))
	}
	for i, ch := range rest {
		if r := waitFor(t, ch, "a response"); r.status != 200 || r.body != "own" || !strings.HasSuffix(r.cacheStatus, "detail=private") {
			t.Errorf("request %d: %d %q %v (%s)", i, r.status, r.body, r.err, r.cacheStatus)
		}
	}
	close(endStream)
	if r := waitFor(t, first, "the stream"); r.body != "stream " {
		t.Errorf("stream: %q %v", r.body, r.err)
	}
}

// TestFailureSharedWithoutWindow: with no failure window, the requests
// waiting on other instances still get the failure of the call they
// waited for, as local waiters do, rather than one of them calling the
// failing upstream again once the lock is gone.
func TestFailureSharedWithoutWindow(t *testing.T) {
	up := newBlocking(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "down")
	})
	f := newFleet(t, "", cache.PolicyOptions{TTL: time.Minute}, cache.Options{FailureWindow: -1}, up)

	first := f.get(0, "/hot")
	waitFor(t, up.arrived, "the first upstream call")
	rest := f.spread(29, "/hot")
	f.waiting(1, 2)
	close(up.release)
	for i, ch := range append(rest, first) {
		if r := waitFor(t, ch, "a response"); r.err != nil || r.status != 503 || r.body != "down" {
			t.Errorf("request %d: %d %q %v (%s)", i, r.status, r.body, r.err, r.cacheStatus)
		}
	}
	if got := up.calls.Load(); got != 1 {
		t.Errorf("upstream calls = %d, want 1", got)
	}
}
