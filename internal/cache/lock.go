package cache

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// The polling of an instance waiting for another's upstream call: the
// first look after minPoll, then twice as long each time, up to maxPoll.
// A quick upstream call is seen within a few milliseconds; a slow one
// costs a waiting instance one store call per maxPoll (40 a second), and
// its requests at most maxPoll of latency after the entry was stored.
// Only one request per instance and key polls: the others wait for it in
// the instance's own flight.
const (
	minPoll = 2 * time.Millisecond
	maxPoll = 25 * time.Millisecond
)

// The first byte of a lock's value says what it is.
const (
	noteHeld        = 'l' // an instance holds the lock; the rest is its token
	noteReleased    = 'r' // the response was not storable: call the upstream yourself
	noteFailed      = 'f' // the call failed; the rest is the failure as an encoded Entry
	noteUnavailable = 'u' // the call failed with no answer to pass on; the rest is the status
)

// claimKind is how an instance's wait for a key's lock ended.
type claimKind uint8

const (
	// claimLocal: the store failed, or the wait was too long; the
	// instance calls the upstream on its own, coalescing locally only.
	claimLocal claimKind = iota
	// claimWon: the instance holds the lock and calls the upstream.
	claimWon
	// claimEntry: another instance stored the response.
	claimEntry
	// claimFailed: another instance's call failed within its failure
	// window.
	claimFailed
	// claimReleased: another instance's response was not storable.
	claimReleased
	// claimGone: the request's context ended while it waited.
	claimGone
)

// claimed is the result of await.
type claimed struct {
	kind   claimKind
	lock   *lock    // claimWon
	entry  *Entry   // claimEntry
	fail   *failure // claimFailed; nil if there is no answer to pass on
	status int      // claimFailed
	ttl    time.Duration
}

// await is a local leader's step across instances: it claims key's lock
// in the shared store, or waits for the instance holding it, polling,
// until that instance stores the response, notes that its call failed or
// that its response is not storable, or dies (its lock expires, and this
// instance claims it). It waits at most twice the lock's lifetime, and
// gives up at once if the store fails: then the instance calls the
// upstream on its own, as it would without a shared store.
func (c *Cache) await(ctx context.Context, key Key, p *Policy) claimed {
	token := string(noteHeld) + rand.Text()
	// Real time, not c.now: the lock expires by the store's clock.
	bound := time.NewTimer(2 * p.lockTTL)
	defer bound.Stop()
	delay := minPoll
	for {
		sctx, cancel := context.WithTimeout(ctx, c.timeout)
		cl, err := c.locker.Claim(sctx, key, token, p.lockTTL, p.staleWindow())
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return claimed{kind: claimGone}
			}
			c.fault(&StoreError{Op: "lock", Err: err})
			return claimed{}
		}
		switch {
		case cl.Won:
			return claimed{kind: claimWon, lock: &lock{c: c, ctx: context.WithoutCancel(ctx), key: key, token: token}}
		case cl.Entry != nil:
			if !c.now().Before(cl.Entry.Expires) {
				// Fresh by the store's count, stale by this instance's
				// clock, which is ahead of the clock of the instance that
				// stored it: the store will not lock the key until the
				// entry is stale by its count, so fetch without the lock,
				// as without a shared store, rather than wait for that.
				return claimed{}
			}
			if c.near != nil {
				_ = c.near.Set(ctx, key, cl.Entry, cl.Entry.Expires.Sub(c.now())+p.staleWindow()) // a Memory never fails
			}
			return claimed{kind: claimEntry, entry: cl.Entry}
		case len(cl.Held) > 0 && cl.Held[0] == noteHeld:
		default:
			res, err := decodeNote(cl.Held)
			if err != nil {
				c.fault(&StoreError{Op: "lock", Err: err})
				return claimed{}
			}
			res.ttl = cl.TTL
			return res
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-bound.C:
			t.Stop()
			return claimed{}
		case <-ctx.Done():
			t.Stop()
			return claimed{kind: claimGone}
		}
		delay = min(2*delay, maxPoll)
	}
}

// errBadNote is a lock value that no Cache writes.
var errBadNote = errors.New("cache: unknown lock value")

// decodeNote reads a note left in a lock by the instance that held it.
func decodeNote(b []byte) (claimed, error) {
	if len(b) == 0 {
		return claimed{}, errBadNote
	}
	switch b[0] {
	case noteReleased:
		return claimed{kind: claimReleased}, nil
	case noteUnavailable:
		status, err := strconv.Atoi(string(b[1:]))
		if err != nil || status < 500 || status > 599 {
			return claimed{}, errBadNote
		}
		return claimed{kind: claimFailed, status: status}, nil
	case noteFailed:
		var e Entry
		if err := e.UnmarshalBinary(b[1:]); err != nil {
			return claimed{}, fmt.Errorf("decoding a failure note: %w", err)
		}
		return claimed{kind: claimFailed, status: e.Status, fail: &failure{status: e.Status, header: e.Header, body: e.Body}}, nil
	}
	return claimed{}, errBadNote
}

// failureNote is the note a failed flight leaves for the other instances:
// its answer (at most maxFailureBody), or only its status.
func failureNote(f *flight) []byte {
	if f.fail == nil {
		return strconv.AppendInt([]byte{noteUnavailable}, int64(f.fwdStatus), 10)
	}
	e := Entry{Status: f.fail.status, Header: f.fail.header, Body: f.fail.body}
	b, _ := e.MarshalBinary() // never fails
	return append([]byte{noteFailed}, b...)
}

// lock is a key's lock in the shared store, held by this instance while
// it calls the upstream.
type lock struct {
	c       *Cache
	ctx     context.Context // the request's values, without its cancellation
	key     Key
	token   string
	settled atomic.Bool
}

// take reports whether the caller is the one to end the lock: the first
// to ask, of the request's goroutine and a release started when the
// response turned out not storable.
func (l *lock) take() bool { return l != nil && l.settled.CompareAndSwap(false, true) }

// settle ends the lock by f's outcome, unless it was ended already: a
// failure is noted for the failure window, so that the other instances
// answer with it rather than each call the failing upstream (without a
// window, for as long as a response not storable is, so that the
// requests waiting for the call get its failure, as local waiters do); a
// response
// not storable is noted briefly, so that their waiting requests call the
// upstream themselves at once; an abandoned call just unlocks, so that
// another instance calls the upstream. A stored response ends the lock
// in set instead, in the same store call.
func (l *lock) settle(f *flight) {
	if !l.take() {
		return
	}
	var note []byte
	var ttl time.Duration
	switch f.outcome {
	case failed:
		note, ttl = failureNote(f), l.c.failureWindow
		if ttl == 0 {
			ttl = l.c.releasedFor()
		}
	case released:
		note, ttl = []byte{noteReleased}, l.c.releasedFor()
	}
	l.unlock(note, ttl)
}

// releaseSoon ends the lock as not storable on another goroutine, as soon
// as the response's head shows it, so that the other instances do not
// wait for the end of a response they cannot use (an event stream may
// never end).
func (l *lock) releaseSoon() {
	if !l.take() {
		return
	}
	l.c.background.Add(1)
	go func() {
		defer l.c.background.Done()
		l.unlock([]byte{noteReleased}, l.c.releasedFor())
	}()
}

func (l *lock) unlock(note []byte, ttl time.Duration) {
	ctx, cancel := context.WithTimeout(l.ctx, l.c.timeout)
	defer cancel()
	if err := l.c.locker.Unlock(ctx, l.key, l.token, note, ttl); err != nil {
		// The lock expires on its own; until then other instances wait.
		l.c.fault(&StoreError{Op: "unlock", Err: err})
	}
}

// releasedFor is how long a lock says that its response was not
// storable: long enough for every waiting instance to look once (each
// looks at least every maxPoll, and a look takes at most the store
// timeout), short, since meanwhile the key is not coalesced across
// instances.
func (c *Cache) releasedFor() time.Duration { return 2*maxPoll + c.timeout }

// coordinate runs await for a local leader and answers its request, and
// its flight's waiters, from what another instance did. It returns the
// lock this instance holds, if any, and done when the request was
// answered: otherwise the leader calls the upstream.
func (c *Cache) coordinate(f *flight, w http.ResponseWriter, r *http.Request, key Key, p *Policy, fwd string, stale *Entry, client bool, fetch http.HandlerFunc) (lk *lock, done bool) {
	res := c.await(r.Context(), key, p)
	switch res.kind {
	case claimWon:
		return res.lock, false
	case claimLocal:
		return nil, false
	case claimEntry:
		e := res.entry
		f.publish(served, e, nil, fwd, e.Status)
		c.land(key, f)
		c.write(w, r, e, statusCollapsed(e, c.now(), fwd, e.Status))
	case claimFailed:
		f.window = res.ttl
		f.publish(failed, nil, res.fail, fwd, res.status)
		c.land(key, f)
		c.answerFailed(w, r, f, stale)
	case claimReleased:
		f.publish(released, nil, nil, fwd, 0)
		c.land(key, f)
		if client {
			c.forward(w, r, p, fwd, "concurrent", stale, fetch)
		}
	case claimGone:
		c.abandon(key, f, fwd)
		if client {
			// As a waiter whose context ended: fetch answers it as it
			// answers any cancelled request.
			c.forward(w, r, p, fwd, "concurrent", nil, fetch)
		}
	}
	return nil, true
}
