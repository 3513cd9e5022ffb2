// Package cache is the gateway's response cache: it answers repeated GET
// and HEAD requests from a stored copy so that the upstream — and the bill
// its key runs up — sees each distinct request once per TTL.
//
// A Cache sits in the request path after the limits and before the proxy.
// For each request the gateway computes a Key with the route's Policy and
// calls Serve with a fetch function that proxies upstream. Serve either
// answers from the Store or calls fetch with a ResponseWriter that streams
// the response to the client while keeping a copy to store.
//
// Concurrent misses for one key are coalesced: one request (the leader)
// calls fetch, the others wait and are answered from its response. Memory
// is the single-instance Store; package cache/redis shares entries between
// instances.
//
// # Coalescing across instances
//
// A shared Store that is also a Locker (cache/redis) lets n instances
// missing one key make one upstream call between them, not n: a cold key
// on a fleet costs the upstream (and the bill) what it costs one
// instance. Each instance still coalesces its own requests first, so
// only one request per instance and key takes part:
//
//   - Its leader claims the key's lock in the store (Locker.Claim: SET NX
//     PX with a random token, in one script with a look at the entry, so
//     that an entry stored just before is found rather than fetched
//     again). The lock lives for the route's upstream timeout plus
//     LockSlack (PolicyOptions.UpstreamTimeout).
//   - The instance that wins calls the upstream, then stores the response
//     and deletes its lock in one store call (Locker.SetUnlock).
//   - The others poll Claim, from minPoll doubling to maxPoll (2 to 25
//     ms), until the entry appears; they answer from it, as a local waiter
//     would ("collapsed"). Polling was chosen over pub/sub: it needs no
//     connection per waiting key, nothing is lost if a message would be,
//     and it costs a waiting instance at most 40 cheap calls a second.
//   - If the winner dies (the lock expires without an entry), the next
//     poll of one waiting instance takes the lock and calls the upstream:
//     after at most the lock's lifetime, one more call, not one per
//     instance. A winner whose client goes away releases the lock at once.
//   - A failed call (5xx, a body cut short, a panic) leaves its failure in
//     the lock for Options.FailureWindow: the waiting instances, and any
//     instance asking during the window, answer with it (or with a stale
//     entry), as local requests do, rather than all call the failing
//     upstream when the lock goes. A response that is not storable says
//     so in the lock as soon as its head shows it, briefly: the waiting
//     instances then call the upstream themselves, as local waiters do.
//   - If the store fails (a lookup just failed, Claim fails or times out),
//     the instance stops waiting and calls the upstream itself, coalescing
//     locally: an outage costs one call per instance, as before, and no
//     request waits on a dead store longer than one store timeout.
//
// The price is one more store round trip on a miss (the Claim; storing
// and unlocking is one call), none on a hit, and, when an instance dies
// holding a lock, a wait of up to the route's timeout for the others.
// A winner whose call outlasts its lock (a body still streaming past
// the timeout plus LockSlack) lets one other instance call too.
//
// # Faults
//
// The cache never fails a request. A shared store (Redis) sits behind a
// small in-memory tier (Options.MemoryTier): reads try memory first, writes
// go to both, and a store fault is reported through Options.OnFault and
// answered from memory, or else treated as a miss. So an outage of Redis
// costs each instance at most one upstream call per key per TTL, as one
// instance on its own would make, instead of one per request.
//
// An upstream that fails — fetch writes a 5xx (the gateway's 502 and 504
// included), breaks off a body, or panics — fails once per key: the
// requests waiting for that call get the stale entry if stale_if_error
// still allows it, or else the same failure, and never call the upstream
// themselves; for Options.FailureWindow after it, new requests for the key
// are answered the same way, so a failing key costs at most one upstream
// call per window and a hung upstream holds nobody longer than one
// timeout. While a stale entry can still replace it, a response is held
// back until it is complete, so a body that breaks off midway is replaced
// too rather than cut.
//
// # The limits' on_store_error and the cache
//
// A route's limits.on_store_error decides what the rate limiter does when
// the shared store fails; the cache behaves the same under both choices
// (hits from the memory tier, one upstream call per key and TTL per
// instance). What differs is what reaches the cache:
//
//   - fail_open (default): the limiter lets requests through while the
//     store fails; they reach the cache, hits are served from the memory
//     tier, and misses go upstream without being counted against the
//     shared budget — bounded by the cache to one call per key per TTL per
//     instance (and, while the upstream fails, one per key per failure
//     window).
//   - fail_closed: a route with a rate limit answers 503 store_unavailable
//     before the cache, so even its hits are refused. On a route with only
//     a budget, hits are served (a budget is spent only by a call that
//     goes upstream) and misses are refused with that 503 — which, being a
//     5xx, a stale entry within stale_if_error replaces.
package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultTimeout bounds one store call when Options does not: long enough
// for a Redis round trip inside a data centre, short enough that a Redis
// outage adds little latency before the request is treated as a miss.
const DefaultTimeout = 50 * time.Millisecond

// DefaultRefreshTimeout bounds a background revalidation when Options does
// not. It only applies if fetch itself sets no shorter limit.
const DefaultRefreshTimeout = 30 * time.Second

// DefaultMemoryTier bounds the in-memory tier in front of a shared store
// when Options does not: a few hundred typical API responses, the hot
// ones, which is what keeps the upstream calm while Redis is away.
const DefaultMemoryTier = 8 << 20

// DefaultFailureWindow is how long a failed upstream call answers later
// requests for its key when Options does not say: long enough that a storm
// of requests for a failing key makes one upstream call per second, short
// enough that a key recovers within a second of its upstream.
const DefaultFailureWindow = time.Second

// Options configures a Cache.
type Options struct {
	// Timeout bounds each store call; 0 means DefaultTimeout. It does not
	// apply to a Memory store, which never waits on anything but its lock.
	Timeout time.Duration
	// RefreshTimeout bounds a stale-while-revalidate background request;
	// 0 means DefaultRefreshTimeout.
	RefreshTimeout time.Duration
	// MemoryTier bounds, in bytes, the in-memory tier kept in front of a
	// store that is not a *Memory (Redis): entries are read from it first
	// and written to both, so that a store outage does not remove the
	// cache. An entry is kept there as long as in the store (its freshness
	// and stale window), but is read from memory past its freshness only
	// when the store fails or has lost it, so that an entry another
	// instance refreshed wins. 0 means DefaultMemoryTier; a negative value
	// means no tier. A *Memory store needs none and gets none.
	MemoryTier int64
	// FailureWindow is how long, after an upstream call for a key failed,
	// requests for the key are answered from that failure (the stale
	// entry, or the failure itself) without calling the upstream. 0 means
	// DefaultFailureWindow; a negative value means none, leaving only the
	// coalescing of concurrent requests.
	FailureWindow time.Duration
	// Unavailable, if not nil, answers a request that waited for another
	// request's upstream call when that call failed with no response to
	// pass on (fetch broke off after the head, or panicked) and no stale
	// entry can replace it: the gateway writes its JSON 502 there. nil
	// means a plain-text 502. Cache-Status is set before it is called.
	Unavailable http.HandlerFunc
	// Now returns the current time; nil means time.Now. Tests inject a fake
	// clock so they never sleep.
	Now func() time.Time
	// OnFault, if not nil, is called with every store fault (a *StoreError)
	// and every failed background revalidation (a *RefreshError), so that
	// the gateway can count them in a metric and log them once per
	// interval. It must be cheap and safe for concurrent use.
	OnFault func(error)
}

// StoreError is a store fault seen by a Cache. The request it happened on
// was served from the memory tier or as a miss (Get), or its response was
// kept in the memory tier only (Set).
type StoreError struct {
	// Op is "get", "set" (storing an entry, and releasing the key's lock
	// with it if the instance held one), "lock" (claiming a key's lock, or
	// waiting for it: the instance then calls the upstream on its own) or
	// "unlock" (the lock then expires by itself, and other instances wait
	// for it until then).
	Op string
	// Err is the store's error; errors.Is(err, context.DeadlineExceeded)
	// for a timeout.
	Err error
}

// Error implements error.
func (e *StoreError) Error() string { return "cache store " + e.Op + ": " + e.Err.Error() }

// Unwrap returns the store's error.
func (e *StoreError) Unwrap() error { return e.Err }

// RefreshError is a stale-while-revalidate background request that
// panicked. Its stale entry stays until its window ends; the next request
// after that goes upstream.
type RefreshError struct {
	// Panic is the value fetch panicked with.
	Panic any
}

// Error implements error.
func (e *RefreshError) Error() string {
	return fmt.Sprintf("cache: background revalidation panicked: %v", e.Panic)
}

// maxFailing bounds the failed flights kept for their failure window, so
// that an upstream failing for many distinct keys costs bounded memory
// (each keeps at most maxFailureBody bytes of its answer); past it a
// failure is not kept and its key is only coalesced.
const maxFailing = 1024

// Cache answers requests from a Store. It is safe for concurrent use. A
// config reload may keep the Cache (and so its entries and in-flight
// coalescing) and change only the policies passed to Serve.
type Cache struct {
	store          Store
	locker         Locker        // the store's lock, if it is shared and has one; nil if not
	near           *Memory       // the memory tier in front of a shared store; nil if none
	timeout        time.Duration // 0 for stores that need no deadline
	refreshTimeout time.Duration
	failureWindow  time.Duration // 0 for none
	unavailable    http.HandlerFunc
	now            func() time.Time
	onFault        func(error)

	mu      sync.Mutex
	flights map[Key]*flight // in flight, or failed and within the failure window
	failing int             // flights in the map that failed
	landed  atomic.Uint64   // flights landed so far; see Serve
	onWait  func()          // test hook: a request starts waiting for a flight

	background sync.WaitGroup
}

// New returns a Cache over store.
func New(store Store, o Options) *Cache {
	c := &Cache{
		store:          store,
		timeout:        o.Timeout,
		refreshTimeout: o.RefreshTimeout,
		failureWindow:  o.FailureWindow,
		unavailable:    o.Unavailable,
		now:            o.Now,
		onFault:        o.OnFault,
		flights:        make(map[Key]*flight),
	}
	if c.now == nil {
		c.now = time.Now
	}
	if _, local := store.(*Memory); local {
		c.timeout = 0
	} else {
		c.locker, _ = store.(Locker)
		if c.timeout <= 0 {
			c.timeout = DefaultTimeout
		}
		size := o.MemoryTier
		if size == 0 {
			size = DefaultMemoryTier
		}
		if size > 0 {
			c.near = NewMemory(size, c.now)
		}
	}
	if c.refreshTimeout <= 0 {
		c.refreshTimeout = DefaultRefreshTimeout
	}
	switch {
	case c.failureWindow == 0:
		c.failureWindow = DefaultFailureWindow
	case c.failureWindow < 0:
		c.failureWindow = 0
	}
	return c
}

// Wait blocks until every background revalidation started so far has
// finished, for a graceful shutdown and for tests.
func (c *Cache) Wait() { c.background.Wait() }

// Serve answers r, a request for key under policy p, from the cache or by
// calling fetch, which writes the upstream's response (normally an
// httputil.ReverseProxy's ServeHTTP).
//
// Methods other than GET and HEAD go straight to fetch. A fresh entry is
// written with Cache-Status and Age. On a miss, fetch is called once per
// key at a time on this instance, and with a Locker store across the
// instances sharing it (see the package doc); concurrent requests for the
// key wait for it (or for their own context to end, and then call fetch
// themselves) and are answered from its response if it was stored. If it was not
// storable, every waiter calls fetch itself, concurrently: the upstream
// would answer each of them anyway, and running them one after another
// would only add latency. A waiter learns that as soon as the leader's
// header shows it, so a streamed response does not hold the waiters back.
//
// If the call fails — fetch writes a 5xx, the body breaks off, or fetch
// panics — waiters are answered at once with their stale entry, if
// stale_if_error allows one, or else with the failure (the same 5xx, or
// Options.Unavailable), and so are requests for the key during
// Options.FailureWindow after it. A panic is passed on to the leader's
// client, unless nothing of the response had reached it yet and a stale
// entry replaces it. If the leader's own client went away before the call
// ended, that says nothing about the upstream: one waiter calls fetch
// again for the others.
//
// With stale-while-revalidate, a stale entry is served and fetch is called
// once more in the background, on another goroutine, after Serve may have
// returned, with a copy of r that is a GET without conditional headers and
// whose context carries r's values but not its cancellation (bounded by
// Options.RefreshTimeout; IsRevalidation reports it). fetch must therefore
// not depend on state that ends with the original request.
//
// A HEAD request is answered from a stored GET response; a HEAD miss is
// fetched but not stored (it has no body). A request with Cache-Control:
// no-store is answered from the cache if it can, and otherwise fetched
// alone and not stored. A GET or HEAD with a body (a Content-Length other
// than 0, or chunked) bypasses the cache: the body goes upstream but is in
// no key, so neither a stored response nor one fetched for it would be
// known to answer the other.
func (c *Cache) Serve(w http.ResponseWriter, r *http.Request, key Key, p *Policy, fetch http.HandlerFunc) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Add("Cache-Status", "keyward; fwd=method")
		fetch(w, r)
		return
	}
	if r.ContentLength != 0 {
		w.Header().Add("Cache-Status", "keyward; fwd=bypass; detail=request-body")
		fetch(w, r)
		return
	}
	landed := c.landed.Load()
	e, shared := c.get(r.Context(), key, p)
	now := c.now()
	fwd := "uri-miss"
	var stale *Entry // usable if the upstream fails
	if e != nil {
		fwd = "stale"
		switch {
		case now.Before(e.Expires):
			c.write(w, r, e, statusHit(e, now))
			return
		case e.MustRevalidate:
		case now.Before(e.Expires.Add(p.swr)):
			c.write(w, r, e, statusStale(e, now, "", 0, "stale-while-revalidate"))
			c.revalidate(key, p, r, shared, fetch)
			return
		case now.Before(e.Expires.Add(p.sie)):
			stale = e
		}
	}
	if r.Method == http.MethodHead || requestNoStore(r) {
		// Not coalesced (their responses are not stored), but a key that
		// just failed answers them too.
		if f := c.failed(key); f != nil {
			c.answerFailed(w, r, f, stale)
			return
		}
		why := "head"
		if r.Method != http.MethodHead {
			why = "request-no-store"
		}
		c.forward(w, r, p, fwd, why, stale, fetch)
		return
	}

	for {
		f, leader := c.join(key)
		if leader {
			if c.landed.Load() != landed {
				// A flight landed between the lookup and the join, maybe this
				// key's, which stores before it lands: look again, or this
				// request would call the upstream for a response just stored.
				var e *Entry
				if e, shared = c.get(r.Context(), key, p); e != nil && c.now().Before(e.Expires) {
					f.publish(served, e, nil, "", 0)
					c.land(key, f)
					c.write(w, r, e, statusHit(e, c.now()))
					return
				}
			}
			c.lead(f, w, r, key, p, fwd, stale, true, shared, fetch)
			return
		}
		if c.onWait != nil {
			c.onWait()
		}
		select {
		case <-f.ready:
		case <-r.Context().Done():
			// The requester gave up or timed out; fetch answers that as it
			// answers any cancelled request.
			c.forward(w, r, p, fwd, "concurrent", nil, fetch)
			return
		}
		switch f.outcome {
		case abandoned:
			// The flight has left the map; landed moved on, so that a new
			// leader looks in the store again.
			continue
		case released:
			c.forward(w, r, p, fwd, "concurrent", stale, fetch)
		case failed:
			c.answerFailed(w, r, f, stale)
		default:
			if f.fwd == "" {
				c.write(w, r, f.entry, statusHit(f.entry, c.now()))
			} else {
				c.write(w, r, f.entry, statusCollapsed(f.entry, c.now(), f.fwd, f.fwdStatus))
			}
		}
		return
	}
}

// outcome is how a flight ended, and so what its waiters do.
type outcome uint8

const (
	// served: the response was stored; waiters are answered from entry.
	served outcome = iota + 1
	// released: the response is not storable; waiters call fetch
	// themselves.
	released
	// failed: the upstream call failed; waiters get their stale entry or
	// the failure.
	failed
	// abandoned: the leader's client went away before the call ended;
	// waiters start a new flight.
	abandoned
)

// flight is one upstream call that requests for the same key wait for.
type flight struct {
	ready     chan struct{} // closed by publish
	once      sync.Once
	outcome   outcome
	entry     *Entry   // served: the response
	fail      *failure // failed: the answer to pass on; nil if there is none
	fwd       string
	fwdStatus int
	// until is, for a failed flight, the end of its failure window: until
	// then it stays in Cache.flights and answers requests for its key.
	// Guarded by Cache.mu.
	until time.Time
	// window, if not 0, shortens the failure window: what is left of
	// another instance's, whose failure the flight passes on. Set before
	// publish.
	window time.Duration
}

// failure is a 5xx answer kept to pass on to the requests that a failed
// flight answers.
type failure struct {
	status int
	header http.Header
	body   []byte
}

func (f *flight) publish(o outcome, e *Entry, fail *failure, fwd string, status int) {
	f.once.Do(func() {
		f.outcome, f.entry, f.fail, f.fwd, f.fwdStatus = o, e, fail, fwd, status
		close(f.ready)
	})
}

// join returns the flight for key, starting one if there is none (or the
// failed one there is past its window); leader reports whether the caller
// started it and must land it.
func (c *Cache) join(key Key) (f *flight, leader bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.flights[key]; f != nil {
		if f.until.IsZero() || c.now().Before(f.until) {
			return f, false
		}
		c.failing--
	}
	f = &flight{ready: make(chan struct{})}
	c.flights[key] = f
	return f, true
}

// failed returns the failed flight of key if its window is still open.
func (c *Cache) failed(key Key) *flight {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.flights[key]; f != nil && !f.until.IsZero() && c.now().Before(f.until) {
		return f
	}
	return nil
}

// land ends a flight. Until then, late requests that missed in the store
// (because the entry was still being written to it) join the finished
// flight and are served from it rather than going upstream. A failed
// flight stays for the failure window, so that requests for its key are
// answered from it instead of calling the failing upstream again.
func (c *Cache) land(key Key, f *flight) {
	<-f.ready // publish happened before; this orders the reads below
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flights[key] != f {
		return
	}
	// Counted under the lock, so that a request that joins after the
	// delete sees the count changed.
	c.landed.Add(1)
	if f.outcome == failed && c.failureWindow > 0 {
		now := c.now()
		if c.failing >= maxFailing {
			c.sweep(now)
		}
		if c.failing < maxFailing {
			window := c.failureWindow
			if f.window > 0 {
				window = min(window, f.window)
			}
			f.until = now.Add(window)
			c.failing++
			return
		}
	}
	delete(c.flights, key)
}

// abandon ends a flight whose leader's client went away before the
// upstream call ended, and sends its waiters back to start another. It
// leaves the map before its waiters wake, so that they do not find it
// again.
func (c *Cache) abandon(key Key, f *flight, fwd string) {
	c.mu.Lock()
	if c.flights[key] == f {
		c.landed.Add(1)
		delete(c.flights, key)
	}
	c.mu.Unlock()
	f.publish(abandoned, nil, nil, fwd, 0)
}

// sweep drops the failed flights whose window is over. c.mu is held.
func (c *Cache) sweep(now time.Time) {
	for k, f := range c.flights {
		if !f.until.IsZero() && !now.Before(f.until) {
			delete(c.flights, k)
			c.failing--
		}
	}
}

// lead calls fetch for a flight, serves w, and publishes the result to the
// flight's waiters and the store. client says whether r is a client's
// request, whose end (the client went away) abandons the flight rather
// than failing it. shared says whether the store answered the lookup
// just made: if it did and it is a Locker, the flight first claims the
// key's lock across instances (coordinate), and publishes there too.
func (c *Cache) lead(f *flight, w http.ResponseWriter, r *http.Request, key Key, p *Policy, fwd string, stale *Entry, client, shared bool, fetch http.HandlerFunc) {
	var lk *lock
	if shared && c.locker != nil {
		var done bool
		if lk, done = c.coordinate(f, w, r, key, p, fwd, stale, client, fetch); done {
			return
		}
	}
	t := &tee{w: w, h: make(http.Header), c: c, p: p, fwd: fwd, store: true, stale: stale, keepFailure: true}
	t.onGiveUp = func() {
		f.publish(released, nil, nil, fwd, 0)
		lk.releaseSoon()
	}
	ctx := r.Context()
	r = r.WithContext(context.WithValue(ctx, teeKey{}, t))
	gone := func() bool { return client && ctx.Err() != nil }
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		// fetch panicked: httputil.ReverseProxy and the gateway do, with
		// http.ErrAbortHandler, when the upstream body breaks off after
		// the head. Waiters must not wait for a flight that will not land,
		// nor each call the upstream that just failed.
		abort := v == http.ErrAbortHandler
		if gone() {
			c.abandon(key, f, fwd)
		} else {
			f.publish(failed, nil, nil, fwd, http.StatusBadGateway)
			c.land(key, f)
		}
		lk.settle(f)
		if abort && stale != nil && !gone() && !t.committed() {
			// Nothing reached the client: the stale entry can still be its
			// answer, as it is the waiters'.
			c.write(w, r, stale, statusStale(stale, c.now(), fwd, http.StatusBadGateway, "stale-if-error"))
			return
		}
		panic(v)
	}()
	fetch(t, r)
	if gone() && (!t.wrote || t.status >= 500 || t.truncated()) {
		c.abandon(key, f, fwd)
		lk.settle(f)
		return
	}
	switch {
	case !t.wrote || t.truncated():
		// Nothing at all (net/http sends an empty 200), or a body shorter
		// than its Content-Length: the call failed, with no answer to pass
		// on.
		f.publish(failed, nil, nil, fwd, http.StatusBadGateway)
		c.land(key, f)
		lk.settle(f)
		if stale != nil && !t.committed() {
			c.write(w, r, stale, statusStale(stale, c.now(), fwd, http.StatusBadGateway, "stale-if-error"))
		}
		return
	case t.status >= 500:
		f.publish(failed, nil, t.fail, fwd, t.status)
		c.land(key, f)
		lk.settle(f)
		if t.swallow {
			c.write(w, r, stale, statusStale(stale, c.now(), fwd, t.status, "stale-if-error"))
		}
		return
	}
	t.finish()
	e := t.entry()
	if e == nil {
		f.publish(released, nil, nil, fwd, 0)
		c.land(key, f)
		lk.settle(f)
		return
	}
	f.publish(served, e, nil, fwd, t.status)
	defer c.land(key, f)
	if c.timeout > 0 && !gone() {
		// The client has its whole answer: send it before the write to
		// the shared store, so that a slow or frozen Redis does not hold
		// it back (store_timeout bounds what a request waits on it).
		_ = http.NewResponseController(w).Flush()
	}
	// The response is complete: store it even if the client has gone.
	c.set(context.WithoutCancel(ctx), key, e, e.Expires.Sub(c.now())+p.staleWindow(), lk)
}

// answerFailed answers a request for a key whose upstream call failed:
// with stale if there is one, or else with the flight's failure.
func (c *Cache) answerFailed(w http.ResponseWriter, r *http.Request, f *flight, stale *Entry) {
	if stale != nil {
		c.write(w, r, stale, statusStale(stale, c.now(), f.fwd, f.fwdStatus, "stale-if-error"))
		return
	}
	h := w.Header()
	h["Cache-Status"] = append(h["Cache-Status"], statusFailed(f.fwd, f.fwdStatus))
	if f.fail == nil {
		if c.unavailable != nil {
			c.unavailable(w, r)
			return
		}
		h["Content-Type"] = []string{"text/plain; charset=utf-8"}
		h["Cache-Control"] = []string{"no-store"}
		h["Content-Length"] = []string{"21"}
		w.WriteHeader(http.StatusBadGateway)
		if r.Method != http.MethodHead {
			_, _ = io.WriteString(w, "upstream unavailable\n")
		}
		return
	}
	addFields(h, f.fail.header)
	h["Content-Length"] = []string{strconv.Itoa(len(f.fail.body))}
	w.WriteHeader(f.fail.status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(f.fail.body) // the client went away; nothing to do
	}
}

// forward calls fetch for one request outside any flight and stores
// nothing, for the reason why (a Cache-Status detail); it still serves
// stale instead of an upstream failure.
func (c *Cache) forward(w http.ResponseWriter, r *http.Request, p *Policy, fwd, why string, stale *Entry, fetch http.HandlerFunc) {
	t := &tee{w: w, h: make(http.Header), c: c, p: p, fwd: fwd, why: why, stale: stale}
	fetch(t, r)
	t.finish()
	if t.swallow {
		c.write(w, r, stale, statusStale(stale, c.now(), fwd, t.status, "stale-if-error"))
	}
}

// revalidate refreshes a stale entry in the background, unless a request
// for it is already in flight or has just failed. shared is as for lead.
func (c *Cache) revalidate(key Key, p *Policy, r *http.Request, shared bool, fetch http.HandlerFunc) {
	f, leader := c.join(key)
	if !leader {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithValue(context.WithoutCancel(r.Context()), revalidationKey{}, true), c.refreshTimeout)
	bg := r.Clone(ctx)
	bg.Method = http.MethodGet
	bg.Body, bg.ContentLength, bg.GetBody = http.NoBody, 0, nil
	// The client's conditions or range would get a 304 or 206, not the
	// full response to store.
	for _, h := range conditionalHeaders {
		bg.Header.Del(h)
	}
	c.background.Add(1)
	go func() {
		defer c.background.Done()
		defer cancel()
		defer func() {
			if v := recover(); v != nil && v != http.ErrAbortHandler {
				// A panic here would take the process down; on a request
				// goroutine net/http would have recovered it.
				c.fault(&RefreshError{Panic: v})
			}
		}()
		c.lead(f, &discard{}, bg, key, p, "stale", nil, false, shared, fetch)
	}()
}

type revalidationKey struct{}

// IsRevalidation reports whether ctx is the context of a background
// stale-while-revalidate request, so that fetch can give it per-request
// state of its own (a timer, a log line) instead of the original
// request's, which may have ended.
func IsRevalidation(ctx context.Context) bool {
	v, _ := ctx.Value(revalidationKey{}).(bool)
	return v
}

// get looks key up: in the memory tier, and unless it holds a fresh
// entry, in the store, bounded by the store timeout. If the store fails
// or has nothing, the memory tier's stale entry, if any, is the answer,
// so that stale-while-revalidate and stale-if-error still work during an
// outage. A fault is reported; without a stale entry it is a miss. ok
// reports that the store did not fail, so that a miss that follows a
// fault does not wait on the store again for the key's lock.
func (c *Cache) get(ctx context.Context, key Key, p *Policy) (e *Entry, ok bool) {
	var near *Entry
	if c.near != nil {
		near, _ = c.near.Get(ctx, key) // a Memory never fails
		if near != nil && c.now().Before(near.Expires) {
			return near, true
		}
	}
	sctx := ctx
	if c.timeout > 0 {
		var cancel context.CancelFunc
		sctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	e, err := c.store.Get(sctx, key)
	if err != nil {
		if !errors.Is(err, context.Canceled) || context.Cause(sctx) != context.Canceled {
			c.fault(&StoreError{Op: "get", Err: err})
		}
		return near, false
	}
	if e == nil {
		return near, true
	}
	if c.near != nil {
		// Read through, so that the next hit costs no store call, and an
		// outage finds the entries this instance serves in memory.
		_ = c.near.Set(ctx, key, e, e.Expires.Sub(c.now())+p.staleWindow())
	}
	return e, true
}

// set stores e under key for ttl in the memory tier and the store, and
// ends lk, if not nil, in the same store call; a store fault is
// reported, and the entry is then in memory only.
func (c *Cache) set(ctx context.Context, key Key, e *Entry, ttl time.Duration, lk *lock) {
	if c.near != nil {
		_ = c.near.Set(ctx, key, e, ttl) // a Memory never fails
	}
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var err error
	if lk.take() {
		err = c.locker.SetUnlock(ctx, key, e, ttl, lk.token)
	} else {
		err = c.store.Set(ctx, key, e, ttl)
	}
	if err != nil {
		c.fault(&StoreError{Op: "set", Err: err})
	}
}

func (c *Cache) fault(err error) {
	if c.onFault != nil {
		c.onFault(err)
	}
}

// write answers r from e, adding e's fields to those already on w (the
// gateway's CORS and rate limit fields, for example), as a forwarded
// response's would be. A conditional GET or HEAD that e satisfies is
// answered 304 (RFC 9110 section 13.2.2).
func (c *Cache) write(w http.ResponseWriter, r *http.Request, e *Entry, status string) {
	h := w.Header()
	addFields(h, e.Header)
	h["Age"] = []string{strconv.FormatInt(max(0, int64(c.now().Sub(e.Date)/time.Second)), 10)}
	h["Cache-Status"] = append(h["Cache-Status"], status)
	if e.Status == http.StatusOK && notModified(r, e.Header) {
		for _, k := range []string{"Content-Type", "Content-Encoding", "Content-Language"} {
			delete(h, k)
		}
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h["Content-Length"] = []string{strconv.Itoa(len(e.Body))}
	w.WriteHeader(e.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(e.Body) // the client went away; nothing to do
	}
}

// addFields adds the fields of a stored header to h.
func addFields(h, stored http.Header) {
	for k, vs := range stored {
		// The stored slices are shared: cap them so that a later Add
		// copies instead of writing into them.
		if old, ok := h[k]; ok {
			h[k] = append(old, vs...)
		} else {
			h[k] = vs[:len(vs):len(vs)]
		}
	}
}
