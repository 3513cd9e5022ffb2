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
// instances, and coalescing stays per instance, so with n instances a cold
// key costs at most n upstream calls (a cross-instance lock would cost a
// Redis round trip on every miss and a stall on every lock holder's crash,
// to save at most n-1 calls per TTL).
//
// The cache never fails a request: a store fault is a miss, reported
// through Options.OnFault.
package cache

import (
	"context"
	"errors"
	"fmt"
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

// Options configures a Cache.
type Options struct {
	// Timeout bounds each store call; 0 means DefaultTimeout. It does not
	// apply to a Memory store, which never waits on anything but its lock.
	Timeout time.Duration
	// RefreshTimeout bounds a stale-while-revalidate background request;
	// 0 means DefaultRefreshTimeout.
	RefreshTimeout time.Duration
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
// was served as a miss (Get) or its response was not stored (Set).
type StoreError struct {
	// Op is "get" or "set".
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

// Cache answers requests from a Store. It is safe for concurrent use. A
// config reload may keep the Cache (and so its entries and in-flight
// coalescing) and change only the policies passed to Serve.
type Cache struct {
	store          Store
	timeout        time.Duration // 0 for stores that need no deadline
	refreshTimeout time.Duration
	now            func() time.Time
	onFault        func(error)

	mu      sync.Mutex
	flights map[Key]*flight
	landed  atomic.Uint64 // flights landed so far; see Serve
	onWait  func()        // test hook: a request starts waiting for a flight

	background sync.WaitGroup
}

// New returns a Cache over store.
func New(store Store, o Options) *Cache {
	c := &Cache{
		store:          store,
		timeout:        o.Timeout,
		refreshTimeout: o.RefreshTimeout,
		now:            o.Now,
		onFault:        o.OnFault,
		flights:        make(map[Key]*flight),
	}
	if c.now == nil {
		c.now = time.Now
	}
	if _, local := store.(*Memory); local {
		c.timeout = 0
	} else if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.refreshTimeout <= 0 {
		c.refreshTimeout = DefaultRefreshTimeout
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
// key at a time on this instance; concurrent requests for the key wait for
// it (or for their own context to end, and then call fetch themselves) and
// are answered from its response if it was stored. If it was not
// storable, every waiter calls fetch itself, concurrently: the upstream
// would answer each of them anyway, and running them one after another
// would only add latency. A waiter learns that as soon as the leader's
// header shows it, so a streamed response does not hold the waiters back.
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
	e := c.get(r.Context(), key)
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
			c.revalidate(key, p, r, fetch)
			return
		case now.Before(e.Expires.Add(p.sie)):
			stale = e
		}
	}
	if r.Method == http.MethodHead {
		c.forward(w, r, p, fwd, "head", stale, fetch)
		return
	}
	if requestNoStore(r) {
		c.forward(w, r, p, fwd, "request-no-store", stale, fetch)
		return
	}

	f, leader := c.join(key)
	if leader {
		if c.landed.Load() != landed {
			// A flight landed between the lookup and the join, maybe this
			// key's, which stores before it lands: look again, or this
			// request would call the upstream for a response just stored.
			if e := c.get(r.Context(), key); e != nil && c.now().Before(e.Expires) {
				f.publish(e, false, "", 0)
				c.land(key, f)
				c.write(w, r, e, statusHit(e, c.now()))
				return
			}
		}
		c.lead(f, w, r, key, p, fwd, stale, fetch)
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
	switch {
	case f.entry == nil:
		c.forward(w, r, p, fwd, "concurrent", stale, fetch)
	case f.stale:
		c.write(w, r, f.entry, statusStale(f.entry, c.now(), f.fwd, f.fwdStatus, "stale-if-error"))
	case f.fwd == "":
		c.write(w, r, f.entry, statusHit(f.entry, c.now()))
	default:
		c.write(w, r, f.entry, statusCollapsed(f.entry, c.now(), f.fwd, f.fwdStatus))
	}
}

// flight is one upstream call that requests for the same key wait for.
type flight struct {
	ready     chan struct{} // closed by publish
	once      sync.Once
	entry     *Entry // the response to serve waiters, nil to send them upstream
	stale     bool   // entry is a stale one served because the upstream failed
	fwd       string
	fwdStatus int
}

func (f *flight) publish(e *Entry, stale bool, fwd string, status int) {
	f.once.Do(func() {
		f.entry, f.stale, f.fwd, f.fwdStatus = e, stale, fwd, status
		close(f.ready)
	})
}

// join returns the flight for key, starting one if there is none; leader
// reports whether the caller started it and must land it.
func (c *Cache) join(key Key) (f *flight, leader bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.flights[key]; f != nil {
		return f, false
	}
	f = &flight{ready: make(chan struct{})}
	c.flights[key] = f
	return f, true
}

// land ends a flight. Until then, late requests that missed in the store
// (because the entry was still being written to it) join the finished
// flight and are served from it rather than going upstream.
func (c *Cache) land(key Key, f *flight) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flights[key] == f {
		// Counted under the lock, so that a request that joins after the
		// delete sees the count changed.
		c.landed.Add(1)
		delete(c.flights, key)
	}
}

// lead calls fetch for a flight, serves w, and publishes the result to the
// flight's waiters and the store.
func (c *Cache) lead(f *flight, w http.ResponseWriter, r *http.Request, key Key, p *Policy, fwd string, stale *Entry, fetch http.HandlerFunc) {
	t := &tee{w: w, h: make(http.Header), c: c, p: p, fwd: fwd, store: true, stale: stale}
	t.onGiveUp = func() { f.publish(nil, false, fwd, 0) }
	r = r.WithContext(context.WithValue(r.Context(), teeKey{}, t))
	defer func() {
		// Runs on a panic in fetch too (httputil.ReverseProxy panics with
		// http.ErrAbortHandler when the upstream body breaks off), so that
		// waiters never wait for a flight that will not land.
		f.publish(nil, false, fwd, 0)
		c.land(key, f)
	}()
	fetch(t, r)
	if t.swallow {
		c.write(w, r, stale, statusStale(stale, c.now(), fwd, t.status, "stale-if-error"))
		f.publish(stale, true, fwd, t.status)
		return
	}
	t.finish()
	e := t.entry()
	if e == nil {
		return
	}
	f.publish(e, false, fwd, t.status)
	ttl := e.Expires.Sub(c.now()) + p.staleWindow()
	// The response is complete: store it even if the client has gone.
	ctx := context.WithoutCancel(r.Context())
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	if err := c.store.Set(ctx, key, e, ttl); err != nil {
		c.fault(&StoreError{Op: "set", Err: err})
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
// for it is already in flight.
func (c *Cache) revalidate(key Key, p *Policy, r *http.Request, fetch http.HandlerFunc) {
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
		c.lead(f, &discard{}, bg, key, p, "stale", nil, fetch)
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

// get looks key up, bounded by the store timeout; a fault is a miss.
func (c *Cache) get(ctx context.Context, key Key) *Entry {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	e, err := c.store.Get(ctx, key)
	if err != nil {
		if !errors.Is(err, context.Canceled) || context.Cause(ctx) != context.Canceled {
			c.fault(&StoreError{Op: "get", Err: err})
		}
		return nil
	}
	return e
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
	for k, vs := range e.Header {
		// The stored slices are shared: cap them so that a later Add
		// copies instead of writing into them.
		if old, ok := h[k]; ok {
			h[k] = append(old, vs...)
		} else {
			h[k] = vs[:len(vs):len(vs)]
		}
	}
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
