// Package ratelimit shields an upstream from abuse and bounds what a route
// can spend: a per-client rate limit (GCRA, the generic cell rate
// algorithm) and per-route and per-client budgets counted in fixed calendar
// windows.
//
// One Limiter per route combines them over a Store. Memory is the
// single-instance Store; package ratelimit/redis shares state between
// instances. Both run the same arithmetic in the same units, and the store
// test suite in ratelimit/storetest runs one table against both.
//
// The properties the design protects, each a known failure of shared
// limiters: every check is one atomic store step (no read-then-write), a
// rejected request is never counted (a client that keeps retrying is not
// kept blocked), and keys are namespaced by route, not by instance (the
// limit does not multiply with instances).
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultTimeout bounds one Allow call's store round trips when Options
// does not. It is long enough for a Redis round trip inside a data centre
// and short enough that a Redis outage adds little latency before the fault
// policy applies.
const DefaultTimeout = 50 * time.Millisecond

// FaultPolicy says what a Limiter decides when its store fails or times
// out.
type FaultPolicy int

const (
	// FailOpen allows the request, so a store outage does not take the API
	// down. It is the zero value; the outage is still reported through
	// Result.Err and Options.OnFault.
	FailOpen FaultPolicy = iota
	// FailClosed denies the request, so a store outage can never raise
	// upstream spend beyond the budget.
	FailClosed
)

// String returns the configuration spelling of p.
func (p FaultPolicy) String() string {
	switch p {
	case FailOpen:
		return "fail_open"
	case FailClosed:
		return "fail_closed"
	}
	return "FaultPolicy(" + strconv.Itoa(int(p)) + ")"
}

// ParseFaultPolicy parses "fail_open" or "fail_closed"; the empty string
// means FailOpen.
func ParseFaultPolicy(s string) (FaultPolicy, error) {
	switch s {
	case "", "fail_open":
		return FailOpen, nil
	case "fail_closed":
		return FailClosed, nil
	}
	return 0, fmt.Errorf("unknown store error policy %q: want fail_open or fail_closed", s)
}

// Options configures a Limiter. The zero values of the limit fields mean
// "not limited", so a route can have a rate, a budget, both, or neither.
type Options struct {
	// Name namespaces the limiter's keys in the store; use the route name.
	// It must be the same on every instance that shares the limit and
	// distinct from every other limiter's. Required.
	Name string
	// Rate is the sustained per-client rate. The zero Rate means no
	// per-client rate limit.
	Rate Rate
	// Burst is how many requests a client may send at once before Rate
	// applies; values below 1 mean 1. Ignored without a Rate.
	Burst int64
	// ClientBudget is a per-client budget; the zero Budget means none.
	ClientBudget Budget
	// Budget is the route budget shared by all clients: the ceiling on
	// requests the upstream receives per window. The zero Budget means none.
	Budget Budget
	// OnStoreError is the fault policy. The zero value is FailOpen.
	OnStoreError FaultPolicy
	// Timeout bounds the store round trips of one Allow call; 0 means
	// DefaultTimeout. It does not apply to a Memory store, which never
	// waits on anything but a shard lock.
	Timeout time.Duration
	// Store holds the state. Required.
	Store Store
	// Now returns the current time; nil means time.Now. Tests inject a fake
	// clock so they never sleep.
	Now func() time.Time
	// OnFault, if not nil, is called with every store fault (a
	// *StoreError), whatever the policy, so that the gateway can count
	// faults in a metric and log them once per interval. It must be cheap
	// and safe for concurrent use.
	OnFault func(error)
}

// Limiter decides whether one route's request may proceed. It is immutable
// after New and safe for concurrent use; a config reload builds a new one,
// and because state lives in the Store under Options.Name the new one
// continues where the old one stopped.
type Limiter struct {
	name          string
	rate          Rate
	emission      time.Duration
	limit         time.Duration // emission * burst
	clientBudget  Budget
	budget        Budget
	policy        FaultPolicy
	timeout       time.Duration // 0 for stores that need no deadline
	store         Store
	now           func() time.Time
	onFault       func(error)
	rateKey       string // prefixes; the client key is appended
	clientBudKey  string
	budgetKey     string
	policyHeader  []string
	budgetSpentTo atomic.Int64 // unix µs until which Budget is known spent
}

// maxDebt caps emission*burst so that the arithmetic stays exact in the
// doubles Redis Lua computes with.
const maxDebt = 10 * 365 * 24 * time.Hour

// New compiles a Limiter from o, reporting every problem at once.
func New(o Options) (*Limiter, error) {
	var errs []error
	if o.Name == "" {
		errs = append(errs, errors.New("a limiter needs a name to namespace its keys"))
	}
	if o.Store == nil {
		errs = append(errs, errors.New("a limiter needs a store"))
	}
	if o.Timeout < 0 {
		errs = append(errs, fmt.Errorf("store timeout %v is negative", o.Timeout))
	}
	if o.OnStoreError != FailOpen && o.OnStoreError != FailClosed {
		errs = append(errs, fmt.Errorf("unknown store error policy %v", o.OnStoreError))
	}
	l := &Limiter{
		name:         o.Name,
		rate:         o.Rate,
		clientBudget: o.ClientBudget,
		budget:       o.Budget,
		policy:       o.OnStoreError,
		timeout:      o.Timeout,
		store:        o.Store,
		now:          o.Now,
		onFault:      o.OnFault,
		rateKey:      "rate:" + o.Name + ":",
		clientBudKey: "client-budget:" + o.Name + ":",
		budgetKey:    "budget:" + o.Name,
	}
	if !o.Rate.IsZero() {
		burst := max(o.Burst, 1)
		l.emission = o.Rate.Emission()
		switch {
		case o.Rate.Count <= 0 || o.Rate.Per <= 0:
			errs = append(errs, fmt.Errorf("rate %v: count and period must be positive", o.Rate))
		case l.emission < time.Microsecond:
			errs = append(errs, fmt.Errorf("rate %v: more than one request per microsecond is not supported", o.Rate))
		case burst > int64(maxDebt/l.emission):
			errs = append(errs, fmt.Errorf("burst %d at rate %v would take more than ten years to refill", burst, o.Rate))
		default:
			l.limit = l.emission * time.Duration(burst)
		}
	}
	for _, b := range []struct {
		what string
		b    Budget
	}{{"client budget", o.ClientBudget}, {"budget", o.Budget}} {
		if !b.b.IsZero() && (b.b.Limit <= 0 || b.b.Window < Minute || b.b.Window > Month) {
			errs = append(errs, fmt.Errorf("%s %v: limit must be positive and the window minute, hour, day or month", b.what, b.b))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("rate limiter %q: %w", o.Name, errors.Join(errs...))
	}
	if l.now == nil {
		l.now = time.Now
	}
	if _, local := o.Store.(*Memory); local {
		l.timeout = 0
	} else if l.timeout == 0 {
		l.timeout = DefaultTimeout
	}
	l.policyHeader = l.buildPolicyHeader()
	return l, nil
}

// Reason says why a request was denied.
type Reason int

const (
	// ReasonNone means the request was allowed.
	ReasonNone Reason = iota
	// ReasonRate means the client exceeded the per-client rate; answer 429.
	ReasonRate
	// ReasonClientBudget means the client spent its own budget; answer 429
	// with an error code distinct from ReasonRate's.
	ReasonClientBudget
	// ReasonBudget means the route budget is spent for all clients; answer
	// 429 with an error code distinct from ReasonRate's.
	ReasonBudget
	// ReasonStoreError means the store failed under FailClosed; answer 503,
	// since the client did nothing wrong.
	ReasonStoreError
)

// String returns a short snake_case name for r, suitable as a metric label
// or the suffix of an error code.
func (r Reason) String() string {
	switch r {
	case ReasonNone:
		return "none"
	case ReasonRate:
		return "rate"
	case ReasonClientBudget:
		return "client_budget"
	case ReasonBudget:
		return "budget"
	case ReasonStoreError:
		return "store_error"
	}
	return "Reason(" + strconv.Itoa(int(r)) + ")"
}

// Decision is the state of one limit after a request, in the terms of the
// RateLimit header fields.
type Decision struct {
	// Allowed reports whether this limit let the request through.
	Allowed bool
	// Remaining is how many more requests this limit would allow right now.
	Remaining int64
	// Reset is how long until the limit is back to its full quota: for a
	// rate, until a full burst is available again; for a budget, until the
	// window ends.
	Reset time.Duration
	// RetryAfter is how long a denied client must wait before this limit
	// allows one request; zero when allowed.
	RetryAfter time.Duration
}

// Result is a Limiter's answer for one request.
type Result struct {
	// Allowed reports whether the request may proceed.
	Allowed bool
	// Reason says why it may not; ReasonNone when Allowed.
	Reason Reason
	// Rate, ClientBudget and Budget are the state of each configured limit
	// that was checked; a limit that was not configured or not reached
	// (because an earlier one denied, or the store failed) is the zero
	// Decision.
	Rate, ClientBudget, Budget Decision
	// Err is the store fault behind this decision, a *StoreError, or nil.
	// It is set under FailOpen too, where the request is allowed anyway.
	Err error

	checked checks
	l       *Limiter
}

type checks uint8

const (
	checkedRate checks = 1 << iota
	checkedClientBudget
	checkedBudget
)

// StoreError is a store fault seen by a Limiter.
type StoreError struct {
	// Limiter is the limiter's Options.Name.
	Limiter string
	// Op is the check that failed: "rate", "client budget" or "budget".
	Op string
	// Err is the store's error; errors.Is(err, context.DeadlineExceeded)
	// for a timeout.
	Err error
}

// Error implements error.
func (e *StoreError) Error() string {
	return "rate limiter " + strconv.Quote(e.Limiter) + ": checking " + e.Op + ": " + e.Err.Error()
}

// Unwrap returns the store's error.
func (e *StoreError) Unwrap() error { return e.Err }

// Allow decides whether a request from client may proceed and, if so,
// counts it against every configured limit. client is the client's key,
// normally clientip.Resolver.AppendKey's output; it is ignored by the
// route budget.
//
// Limits are checked in order rate, client budget, route budget; if a
// later one denies, what earlier ones counted is given back, so a rejected
// request is never counted anywhere and the route budget admits exactly its
// limit. A store fault ends the check and the fault policy decides; the
// whole call is bounded by Options.Timeout.
func (l *Limiter) Allow(ctx context.Context, client string) Result {
	now := l.now()
	res := Result{Allowed: true, l: l}
	if !l.budget.IsZero() {
		// A route budget never decreases inside its window, so once this
		// instance has seen it spent it can answer without the store.
		if until := l.budgetSpentTo.Load(); now.UnixMicro() < until {
			reset := time.Duration(until-now.UnixMicro()) * time.Microsecond
			res.Budget = Decision{Reset: reset, RetryAfter: reset}
			res.checked |= checkedBudget
			return res.deny(ReasonBudget)
		}
	}
	if l.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.timeout)
		defer cancel()
	}

	var rateKey, clientBudgetKey string
	if l.limit > 0 {
		rateKey = l.rateKey + client
		ok, debt, err := l.store.GCRA(ctx, rateKey, now, l.emission, l.limit)
		if err != nil {
			return l.fault(res, "rate", err)
		}
		res.checked |= checkedRate
		if !ok {
			res.Rate = Decision{Reset: debt, RetryAfter: debt + l.emission - l.limit}
			return res.deny(ReasonRate)
		}
		res.Rate = Decision{Allowed: true, Remaining: int64((l.limit - debt) / l.emission), Reset: debt}
	}
	undo := func(upTo checks) {
		// Best effort: the store answered a moment ago. A failed undo only
		// costs the client one request of allowance, so it is reported but
		// does not change the decision. The decisions are adjusted so the
		// headers show the state after the give-back.
		if upTo&checkedRate != 0 {
			if err := l.store.UndoGCRA(ctx, rateKey, now, l.emission); err != nil {
				l.report(&StoreError{Limiter: l.name, Op: "rate", Err: err})
			} else {
				res.Rate.Remaining++
				res.Rate.Reset = max(res.Rate.Reset-l.emission, 0)
			}
		}
		if upTo&checkedClientBudget != 0 {
			if err := l.store.UndoBudget(ctx, clientBudgetKey, now, l.clientBudget.Window); err != nil {
				l.report(&StoreError{Limiter: l.name, Op: "client budget", Err: err})
			} else {
				res.ClientBudget.Remaining++
			}
		}
	}
	if !l.clientBudget.IsZero() {
		clientBudgetKey = l.clientBudKey + client
		d, err := l.checkBudget(ctx, clientBudgetKey, now, l.clientBudget)
		if err != nil {
			return l.fault(res, "client budget", err)
		}
		res.ClientBudget = d
		if !d.Allowed {
			undo(res.checked)
			res.checked |= checkedClientBudget
			return res.deny(ReasonClientBudget)
		}
		res.checked |= checkedClientBudget
	}
	if !l.budget.IsZero() {
		d, err := l.checkBudget(ctx, l.budgetKey, now, l.budget)
		if err != nil {
			return l.fault(res, "budget", err)
		}
		res.Budget = d
		if !d.Allowed {
			undo(res.checked)
			res.checked |= checkedBudget
			l.budgetSpentTo.Store(now.UnixMicro() + d.Reset.Microseconds())
			return res.deny(ReasonBudget)
		}
		res.checked |= checkedBudget
	}
	return res
}

func (l *Limiter) checkBudget(ctx context.Context, key string, now time.Time, b Budget) (Decision, error) {
	ok, used, err := l.store.Budget(ctx, key, now, b.Limit, b.Window)
	if err != nil {
		return Decision{}, err
	}
	reset := b.Window.End(now).Sub(now)
	d := Decision{Allowed: ok, Remaining: max(b.Limit-used, 0), Reset: reset}
	if !ok {
		d.RetryAfter = reset
	}
	return d, nil
}

func (res Result) deny(why Reason) Result {
	res.Allowed, res.Reason = false, why
	return res
}

func (l *Limiter) fault(res Result, op string, err error) Result {
	serr := &StoreError{Limiter: l.name, Op: op, Err: err}
	l.report(serr)
	res.Err = serr
	if l.policy == FailClosed {
		// What earlier checks counted is not given back: the store is
		// failing, and another round trip would only add latency.
		return res.deny(ReasonStoreError)
	}
	return res
}

func (l *Limiter) report(err error) {
	if l.onFault != nil {
		l.onFault(err)
	}
}

// buildPolicyHeader renders the RateLimit-Policy field once, since it only
// depends on configuration. Its items follow
// draft-ietf-httpapi-ratelimit-headers-09: the rate policy states the
// configured sustained rate (q requests per w seconds), each budget its
// limit per window, a month counted as 30 days.
func (l *Limiter) buildPolicyHeader() []string {
	var items []string
	if l.limit > 0 {
		items = append(items, policyItem("rate", l.rate.Count, l.rate.Per))
	}
	if !l.clientBudget.IsZero() {
		items = append(items, policyItem("client-budget", l.clientBudget.Limit, l.clientBudget.Window.nominal()))
	}
	if !l.budget.IsZero() {
		items = append(items, policyItem("budget", l.budget.Limit, l.budget.Window.nominal()))
	}
	if len(items) == 0 {
		return nil
	}
	v := strings.Join(items, ", ")
	return []string{v}[:1:1]
}

func policyItem(name string, q int64, w time.Duration) string {
	return `"` + name + `";q=` + strconv.FormatInt(q, 10) + ";w=" + strconv.FormatInt(ceilSeconds(w), 10)
}

// ceilSeconds rounds d up to whole seconds, because a client told to retry
// after 0 seconds retries at once.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(math.Ceil(d.Seconds()))
}

// SetHeaders writes the IETF RateLimit-Policy and RateLimit fields
// (draft-ietf-httpapi-ratelimit-headers-09) for every limit that was
// checked, and Retry-After (RFC 9110 section 10.2.3) when the request was
// denied by a limit. It writes nothing for a Result whose limits were not
// reached because the store failed.
//
// The RateLimit-Policy value is shared between responses to save an
// allocation; it must not be modified in place (Header.Add and Set are
// fine).
func (res *Result) SetHeaders(h http.Header) {
	if res.l == nil || res.checked == 0 {
		return
	}
	if res.l.policyHeader != nil {
		h["Ratelimit-Policy"] = res.l.policyHeader
	}
	var buf [160]byte
	b := buf[:0]
	item := func(name string, d Decision) {
		if len(b) > 0 {
			b = append(b, ", "...)
		}
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, `";r=`...)
		b = strconv.AppendInt(b, d.Remaining, 10)
		b = append(b, ";t="...)
		b = strconv.AppendInt(b, ceilSeconds(d.Reset), 10)
	}
	if res.checked&checkedRate != 0 {
		item("rate", res.Rate)
	}
	if res.checked&checkedClientBudget != 0 {
		item("client-budget", res.ClientBudget)
	}
	if res.checked&checkedBudget != 0 {
		item("budget", res.Budget)
	}
	h["Ratelimit"] = []string{string(b)}
	if res.Allowed || res.Reason == ReasonStoreError {
		return
	}
	retry := max(res.Rate.RetryAfter, res.ClientBudget.RetryAfter, res.Budget.RetryAfter)
	h["Retry-After"] = []string{strconv.FormatInt(max(ceilSeconds(retry), 1), 10)}
}
