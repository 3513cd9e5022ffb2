package ratelimit

import (
	"context"
	"errors"
	"time"
)

// Store keeps limiter state where every gateway instance that must enforce
// one limit can reach it. Each method is one atomic step on one key: a
// Store never reads a value in one call and writes it in another, because
// read-then-write is how shared limiters let several times their limit
// through.
//
// All arithmetic is in whole microseconds: now is truncated with
// time.Time.UnixMicro and durations with Duration.Microseconds, so that the
// memory and Redis stores reach identical decisions. Time is always the
// caller's now, never the store's own clock, so tests can drive a fake
// clock and a decision is reproducible; instances sharing a store must
// therefore keep their clocks synchronised (NTP). A skew of d between two
// instances does not change the sustained rate of a GCRA key — both clocks
// advance at the same speed — it only lets the instance that is ahead use
// up to d of extra burst once, and moves budget window edges by d.
//
// Keys are opaque to the store; the Limiter namespaces them.
type Store interface {
	// GCRA spends one request of key's generic cell rate allowance at now,
	// if the request conforms. emission is the time one request costs
	// (Rate.Emission) and limit the most debt a key may carry, emission
	// times the burst. It reports whether the request conforms and the
	// key's debt after the call: how far the key's theoretical arrival
	// time is ahead of now. A request that does not conform changes
	// nothing, so rejected requests are never counted.
	GCRA(ctx context.Context, key string, now time.Time, emission, limit time.Duration) (allowed bool, debt time.Duration, err error)

	// UndoGCRA gives back one request spent by GCRA, for a request that a
	// later check rejected. It is a no-op for a key with no debt.
	UndoGCRA(ctx context.Context, key string, now time.Time, emission time.Duration) error

	// Budget counts one request against key's count for the window
	// containing now, if the count is below limit. It reports whether the
	// request was counted and the count after the call. The increment and
	// the comparison are one atomic step, so concurrent callers across
	// instances are admitted exactly limit times per window.
	Budget(ctx context.Context, key string, now time.Time, limit int64, window Window) (allowed bool, used int64, err error)

	// UndoBudget gives back one request counted by Budget in the window
	// containing now, for a request that a later check rejected.
	UndoBudget(ctx context.Context, key string, now time.Time, window Window) error
}

// ErrFull is returned by a Memory store that has reached its key limit and
// cannot start counting a new budget key without forgetting one that is
// still counting. Forgetting a budget would raise the upstream's bill
// ceiling, so the store reports a fault and the route's fault policy
// decides.
var ErrFull = errors.New("ratelimit: memory store is full")
