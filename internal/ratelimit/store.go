package ratelimit

import (
	"context"
	"errors"
	"time"
)

// Store keeps limiter state where every gateway instance that must enforce
// one limit can reach it. Each method is one atomic step over all the keys
// it is given: a Store never reads a value in one call and writes it in
// another, because read-then-write is how shared limiters let several
// times their limit through, and it never counts a request at one key that
// another key of the same call refuses, because a refused request must not
// be counted anywhere.
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
// Keys are opaque to the store; the Limiter namespaces them. The keys of
// one call are distinct.
type Store interface {
	// GCRA spends one request of every cell's generic cell rate allowance
	// at now if the request conforms to every cell, and changes nothing if
	// it does not conform to any one of them. It reports whether the
	// request conforms and sets each cell's Debt: after the call when it
	// conforms, as found when it does not.
	GCRA(ctx context.Context, now time.Time, cells []RateCell) (allowed bool, err error)

	// Budget counts every cell's N against the cell's count for the
	// window containing now if every count stays within its limit, and
	// counts nothing otherwise. It reports whether the Ns were counted and
	// sets each cell's Used: the count after the call when counted, as
	// found when not. The comparisons and the increments are one atomic
	// step, so concurrent callers across instances are admitted exactly up
	// to every limit. A cell's N may be 0 (a call that costs nothing in
	// that unit): it is then refused only if the count is already above
	// the limit.
	Budget(ctx context.Context, now time.Time, cells []BudgetCell) (allowed bool, err error)

	// Adjust adds every cell's N, which may be negative, to the cell's
	// count for the window containing at, without comparing limits, and
	// never takes a count below zero. It is how a reservation made at at
	// is settled: to the window it was counted in, even if another window
	// has started since (now), and not at all once that window has ended,
	// when nothing depends on its count any more.
	Adjust(ctx context.Context, at, now time.Time, cells []BudgetCell) error

	// AdmittedOnFault tells the store that a Budget call with these cells
	// failed and the caller admitted the request anyway (the FailOpen
	// policy). A store that keeps a ledger of what this instance spent
	// (ratelimit/redis) counts it there, so that the spend reaches the
	// shared count once the store answers again instead of being lost.
	AdmittedOnFault(now time.Time, cells []BudgetCell)
}

// RateCell is one key of a Store.GCRA call: a per-client rate, or the
// scaled rate of the client's wide network.
type RateCell struct {
	// Key names the state.
	Key string
	// Emission is the time one request costs (Rate.Emission); always
	// positive.
	Emission time.Duration
	// Limit is the most debt the key may carry, Emission times the burst.
	Limit time.Duration
	// Debt is set by the Store: how far the key's theoretical arrival time
	// is ahead of now.
	Debt time.Duration
}

// BudgetCell is one counter of a Store.Budget or Store.Adjust call: a
// client budget, the scaled client budget of the client's wide network, a
// route budget, or the spend cap shared by every route, in one unit.
type BudgetCell struct {
	// Key names the counter; the Store keeps one per Window.
	Key string
	// Limit is the most the count may reach in one window; positive.
	Limit int64
	// Window is the calendar window the count resets at.
	Window Window
	// N is what the call counts at the cell, in the cell's unit: 1 for a
	// request, an amount of money or tokens. Negative only in Adjust.
	N int64
	// Used is set by Budget: the count in the window containing now.
	Used int64
}

// ErrFull is returned by a Memory store that has reached its key limit and
// cannot start counting a new budget key without forgetting one that is
// still counting. Forgetting a budget would raise the upstream's bill
// ceiling, so the store reports a fault and the route's fault policy
// decides.
var ErrFull = errors.New("ratelimit: memory store is full")
