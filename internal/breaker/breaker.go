// Package breaker makes the client of a failing backend (Redis) fail fast:
// after Threshold consecutive faults it refuses calls for a cooldown, then
// lets the next call probe the backend again, which is how recovery is
// automatic. During an outage a request then pays the backend's timeout
// once per cooldown instead of on every call.
package breaker

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Threshold is how many consecutive faults open the breaker: one slow
// reply (a GC pause, a failover) should not fail a cooldown's worth of
// calls, a dead server should.
const Threshold = 3

// ErrOpen is returned, wrapped with the last fault, while the breaker is
// open.
var ErrOpen = errors.New("backend unavailable, failing fast")

// Breaker counts consecutive faults. The zero value never opens; use New.
// It is safe for concurrent use.
type Breaker struct {
	cooldown  time.Duration
	faults    atomic.Int64 // consecutive faults
	openUntil atomic.Int64 // unix ns until which calls fail fast
	last      atomic.Pointer[error]
}

// New returns a Breaker that stays open for cooldown; a cooldown <= 0
// never opens.
func New(cooldown time.Duration) *Breaker { return &Breaker{cooldown: cooldown} }

// Allow returns nil when a call may be made at now, or ErrOpen wrapped
// with the last fault.
func (b *Breaker) Allow(now time.Time) error {
	if b.cooldown <= 0 || now.UnixNano() >= b.openUntil.Load() {
		return nil
	}
	if p := b.last.Load(); p != nil {
		return fmt.Errorf("%w: %w", ErrOpen, *p)
	}
	return ErrOpen
}

// Done records a call's outcome at now. healthy says the backend answered
// (err is nil, or an error reply from a live server). A call the caller
// cancelled (ctx cancelled, err context.Canceled) is nobody's fault and
// is not counted.
func (b *Breaker) Done(ctx context.Context, now time.Time, err error, healthy bool) {
	switch {
	case healthy:
		b.faults.Store(0)
	case errors.Is(err, context.Canceled) && ctx.Err() == context.Canceled:
	default:
		b.last.Store(&err)
		if b.faults.Add(1) >= Threshold && b.cooldown > 0 {
			b.openUntil.Store(now.Add(b.cooldown).UnixNano())
		}
	}
}
