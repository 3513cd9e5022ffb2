// Package ratelimit shields an upstream from abuse and bounds what a route
// can spend: a per-client rate limit (GCRA, the generic cell rate
// algorithm) and per-route and per-client budgets counted in fixed calendar
// windows.
//
// One Limiter per route combines them over a Store, in two steps that the
// gateway takes at two points of a request: AllowRate when the request
// arrives, so that every request a client sends costs it rate, whatever
// becomes of it; Spend just before the request goes upstream, so that the
// budgets count what the upstream receives (and bills), not requests the
// gateway refused itself or answered from its cache.
//
// An IPv6 client is also counted in its wide network (Client.Wide, the
// /48 by default; see package clientip), against WideFactor times its own
// rate, burst and client budget: a /48 holds 65,536 /64 "clients", and
// without a limit on the network as a whole its holder could multiply
// every per-client allowance by that.
//
// Memory is the single-instance Store; package ratelimit/redis shares
// state between instances. Both run the same arithmetic in the same units,
// and the store test suite in ratelimit/storetest runs one table against
// both.
//
// The properties the design protects, each a known failure of shared
// limiters: each step is one atomic store operation over all the keys it
// touches (no read-then-write), a request refused by one limit is counted
// by none of that step's limits (a client that keeps retrying is not kept
// blocked, and a spent route budget does not eat client budgets), and keys
// are namespaced by route, not by instance (the limit does not multiply
// with instances).
//
// # When the store fails: on_store_error and the bill
//
// A budget is a ceiling on the upstream's bill only while the store can
// count. When it cannot (Redis down, too slow for Options.Timeout, or
// restoring counts it lost; see package ratelimit/redis), each route's
// fault policy decides, and the choice is between availability and the
// bill:
//
//   - fail_open (the default) lets requests through. Rates are not
//     enforced during the fault. Budgets are not enforced either, but the
//     spend is not lost: each instance counts what it let through in its
//     own ledger (Store.AdmittedOnFault), and that spend joins the shared
//     counts once Redis answers again, so the budget then refuses
//     correspondingly sooner. The bill can exceed a budget by what the
//     instances let through while Redis could not count, and no more: a
//     long outage on a busy route can cost up to a full outage's traffic.
//   - fail_closed answers 503 store_unavailable instead. Budgets are never
//     exceeded, even across a Redis restart that loses every count, at the
//     price of refusing every request of the route for as long as Redis
//     is unreachable, plus a hold of a few seconds after Redis lost its
//     data while the instances restore their counts.
//
// A route whose budget protects real money (a paid API, a model API)
// should fail closed; a route whose limits protect a free upstream from
// abuse can fail open. A Memory store never fails this way: it loses its
// counts only with the process, which then starts a new instance with
// empty budgets (run one instance with Memory, or share Redis).
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultTimeout bounds the store round trip of one AllowRate or Spend
// call when Options does not. It is long enough for a Redis round trip
// inside a data centre and short enough that a Redis outage adds little
// latency before the fault policy applies.
const DefaultTimeout = 50 * time.Millisecond

// FaultPolicy says what a Limiter decides when its store fails or times
// out.
type FaultPolicy int

const (
	// FailOpen allows the request, so a store outage does not take the API
	// down. It is the zero value; the outage is still reported through
	// Result.Err and Options.OnFault, and what it lets through is counted
	// against the budgets once the store answers again (see the package
	// doc for what that means for the bill).
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

// DefaultWideFactor is how many clients' allowance a wide network gets
// when Options does not say: enough for a household or an office whose
// devices sit in different /64s of one /48, and a factor of 8,192 less than
// the 65,536 /64s of that /48 could otherwise claim.
const DefaultWideFactor = 8

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
	// WideFactor is how many clients' allowance the clients of one wide
	// network (Client.Wide) share: the network's rate, burst and client
	// budget are WideFactor times a client's. 0 means DefaultWideFactor;
	// 1 makes the whole network one client.
	WideFactor int64
	// OnStoreError is the fault policy. The zero value is FailOpen.
	OnStoreError FaultPolicy
	// Timeout bounds the store round trip of one AllowRate or Spend call;
	// 0 means DefaultTimeout. It does not apply to a Memory store, which
	// never waits on anything but shard locks.
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

// Client is whom a request is counted against.
type Client struct {
	// Key is the client's own key: clientip.Resolver.AppendKey's output,
	// an IPv4 address or an IPv6 prefix. Route budgets ignore it.
	Key string
	// Wide is the key of the network the client belongs to
	// (clientip.Resolver.AppendWideKey's output, an IPv6 /48), or "" for
	// none. The per-client rate and client budget are checked at Wide too,
	// scaled by Options.WideFactor.
	Wide string
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
	wideEmission  time.Duration // emission / WideFactor, rounded up
	wideLimit     time.Duration // wideEmission * burst * WideFactor
	clientBudget  Budget
	wideBudget    int64 // clientBudget.Limit * WideFactor, saturated
	budget        Budget
	policy        FaultPolicy
	timeout       time.Duration // 0 for stores that need no deadline
	store         Store
	local         *Memory // store, if it is a Memory
	now           func() time.Time
	onFault       func(error)
	rateKey       string // prefixes; the client key is appended
	clientBudKey  string
	budgetKey     string
	policyHeader  [stepBoth + 1][]string
	budgetSpentTo atomic.Int64 // unix µs until which Budget is known spent
}

// maxWideFactor bounds Options.WideFactor far above any useful value (a
// factor as large as the number of clients in a network is no limit at
// all) and far below where the arithmetic could overflow.
const maxWideFactor = 1 << 20

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
	factor := o.WideFactor
	if factor == 0 {
		factor = DefaultWideFactor
	}
	if factor < 1 || factor > maxWideFactor {
		errs = append(errs, fmt.Errorf("wide factor %d: want 1 to %d", o.WideFactor, maxWideFactor))
		factor = 1
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
		// The network's emission is rounded up to a whole microsecond, so
		// that rounding can only make the network's allowance smaller than
		// WideFactor clients', never larger.
		e := l.emission.Microseconds()
		l.wideEmission = time.Duration((e+factor-1)/factor) * time.Microsecond
		switch {
		case o.Rate.Count <= 0 || o.Rate.Per <= 0:
			errs = append(errs, fmt.Errorf("rate %v: count and period must be positive", o.Rate))
		case l.emission < time.Microsecond:
			errs = append(errs, fmt.Errorf("rate %v: more than one request per microsecond is not supported", o.Rate))
		case burst > int64(maxDebt/l.emission):
			errs = append(errs, fmt.Errorf("burst %d at rate %v would take more than ten years to refill", burst, o.Rate))
		case burst > int64(maxDebt/l.wideEmission)/factor:
			errs = append(errs, fmt.Errorf("burst %d at rate %v, times wide factor %d, would take more than ten years to refill", burst, o.Rate, factor))
		default:
			l.limit = l.emission * time.Duration(burst)
			l.wideLimit = l.wideEmission * time.Duration(burst*factor)
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
	l.wideBudget = o.ClientBudget.Limit * factor
	if o.ClientBudget.Limit > math.MaxInt64/factor {
		l.wideBudget = math.MaxInt64
	}
	if l.now == nil {
		l.now = time.Now
	}
	if m, local := o.Store.(*Memory); local {
		l.local, l.timeout = m, 0
	} else if l.timeout == 0 {
		l.timeout = DefaultTimeout
	}
	for s := range l.policyHeader {
		l.policyHeader[s] = l.buildPolicyHeader(step(s))
	}
	return l, nil
}

// Reason says why a request was denied.
type Reason int

const (
	// ReasonNone means the request was allowed.
	ReasonNone Reason = iota
	// ReasonRate means the client exceeded the per-client rate, or its
	// wide network the network's (Result.Wide); answer 429.
	ReasonRate
	// ReasonClientBudget means the client spent its own budget, or its
	// wide network the network's (Result.Wide); answer 429 with an error
	// code distinct from ReasonRate's.
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
// RateLimit header fields. For a client with a wide network it is the two
// combined: the fewer remaining requests, the later reset and retry.
type Decision struct {
	// Allowed reports whether this limit let the request through, or
	// would have if another limit of the same step had not refused it.
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

// combine merges the decisions of a client's own limit and of its wide
// network's.
func combine(own, wide Decision) Decision {
	return Decision{
		Allowed:    own.Allowed && wide.Allowed,
		Remaining:  min(own.Remaining, wide.Remaining),
		Reset:      max(own.Reset, wide.Reset),
		RetryAfter: max(own.RetryAfter, wide.RetryAfter),
	}
}

// Result is a Limiter's answer for one step of one request.
type Result struct {
	// Allowed reports whether the request may proceed.
	Allowed bool
	// Reason says why it may not; ReasonNone when Allowed.
	Reason Reason
	// Wide reports that the client's wide network refused the request while
	// the client's own limit would have allowed it: the clients of the
	// network together used up WideFactor clients' allowance.
	Wide bool
	// Rate, ClientBudget and Budget are the state of each configured limit
	// that was checked; a limit that was not configured or not reached
	// (another step's, or the store failed) is the zero Decision.
	Rate, ClientBudget, Budget Decision
	// Err is the store fault behind this decision, a *StoreError, or nil.
	// It is set under FailOpen too, where the request is allowed anyway.
	Err error

	checked checks
	step    step
	l       *Limiter
}

type checks uint8

const (
	checkedRate checks = 1 << iota
	checkedClientBudget
	checkedBudget
)

// step is which limits a Result covers, for its RateLimit-Policy.
type step uint8

const (
	stepRate  step = iota // AllowRate
	stepSpend             // Spend
	stepBoth              // Allow
)

// StoreError is a store fault seen by a Limiter.
type StoreError struct {
	// Limiter is the limiter's Options.Name.
	Limiter string
	// Op is the check that failed: "rate" or "budget".
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

// AllowRate decides whether a request from c conforms to the per-client
// rate and, if so, counts it: at c.Key, and at c.Wide against WideFactor
// times the rate and burst, in one atomic store step, so that a request
// either one refuses is counted by neither. Without a rate it allows
// without asking the store.
//
// The gateway calls it as soon as it knows the route, for every request:
// a request the gateway refuses later (a bad parameter, a body too large)
// was still work, so it still costs the client rate. The call is bounded
// by Options.Timeout; a store fault is decided by the fault policy.
func (l *Limiter) AllowRate(ctx context.Context, c Client) Result {
	res := Result{Allowed: true, step: stepRate, l: l}
	if l.limit == 0 {
		return res
	}
	now := l.now()
	ctx, cancel := l.deadline(ctx)
	defer cancel()
	cells := [2]RateCell{{Key: l.rateKey + c.Key, Emission: l.emission, Limit: l.limit}}
	n := 1
	if c.Wide != "" {
		cells[1] = RateCell{Key: l.rateKey + c.Wide, Emission: l.wideEmission, Limit: l.wideLimit}
		n = 2
	}
	cells, ok, err := l.gcra(ctx, now, cells, n)
	if err != nil {
		return l.fault(res, "rate", err)
	}
	res.checked |= checkedRate
	res.Rate = gcraDecision(ok, cells[0])
	if n == 2 {
		wide := gcraDecision(ok, cells[1])
		res.Wide = res.Rate.Allowed && !wide.Allowed
		res.Rate = combine(res.Rate, wide)
	}
	if !ok {
		return res.deny(ReasonRate)
	}
	return res
}

// gcraDecision is the Decision for one cell of a GCRA call that allowed
// (and counted) the request or not.
func gcraDecision(allowed bool, c RateCell) Decision {
	room := c.Limit - c.Debt // how much more debt the key may take on
	if allowed || room >= c.Emission {
		// Counted, or this cell would have allowed it had another not
		// refused.
		return Decision{Allowed: true, Remaining: max(int64(room/c.Emission), 0), Reset: c.Debt}
	}
	return Decision{Reset: c.Debt, RetryAfter: c.Emission - room}
}

// Spend counts one request about to go upstream against the client budget
// (at c.Key, and at c.Wide against WideFactor times it) and the route
// budget, all in one atomic store step: if any of them is spent the
// request is counted by none. Without budgets it allows without asking the
// store.
//
// The gateway calls it just before sending the request upstream, so the
// budgets count what the upstream receives and bills: never a request the
// gateway refused or answered from its cache. The call is bounded by
// Options.Timeout; a store fault is decided by the fault policy.
func (l *Limiter) Spend(ctx context.Context, c Client) Result {
	res := Result{Allowed: true, step: stepSpend, l: l}
	if l.clientBudget.IsZero() && l.budget.IsZero() {
		return res
	}
	now := l.now()
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
	ctx, cancel := l.deadline(ctx)
	defer cancel()
	var cells [3]BudgetCell
	n, own, wide, route := 0, -1, -1, -1
	if !l.clientBudget.IsZero() {
		cells[n] = BudgetCell{Key: l.clientBudKey + c.Key, Limit: l.clientBudget.Limit, Window: l.clientBudget.Window}
		own, n = n, n+1
		if c.Wide != "" {
			cells[n] = BudgetCell{Key: l.clientBudKey + c.Wide, Limit: l.wideBudget, Window: l.clientBudget.Window}
			wide, n = n, n+1
		}
	}
	if !l.budget.IsZero() {
		cells[n] = BudgetCell{Key: l.budgetKey, Limit: l.budget.Limit, Window: l.budget.Window}
		route, n = n, n+1
	}
	cells, ok, err := l.spend(ctx, now, cells, n)
	if err != nil {
		if l.policy == FailOpen {
			l.store.AdmittedOnFault(now, 1, cells[:n])
		}
		return l.fault(res, "budget", err)
	}
	if own >= 0 {
		res.checked |= checkedClientBudget
		res.ClientBudget = budgetDecision(ok, cells[own], now)
		if wide >= 0 {
			w := budgetDecision(ok, cells[wide], now)
			res.Wide = res.ClientBudget.Allowed && !w.Allowed
			res.ClientBudget = combine(res.ClientBudget, w)
		}
	}
	if route >= 0 {
		res.checked |= checkedBudget
		res.Budget = budgetDecision(ok, cells[route], now)
	}
	switch {
	case ok:
		return res
	case route >= 0 && !res.Budget.Allowed:
		// The route's refusal is reported even when the client's budget is
		// spent too: it applies to everyone and is remembered.
		res.Wide = false
		l.budgetSpentTo.Store(now.UnixMicro() + res.Budget.Reset.Microseconds())
		return res.deny(ReasonBudget)
	}
	return res.deny(ReasonClientBudget)
}

// budgetDecision is the Decision for one cell of a Budget call that
// counted the request or not.
func budgetDecision(counted bool, c BudgetCell, now time.Time) Decision {
	reset := c.Window.End(now).Sub(now)
	if counted || c.Used < c.Limit {
		return Decision{Allowed: true, Remaining: max(c.Limit-c.Used, 0), Reset: reset}
	}
	return Decision{Reset: reset, RetryAfter: reset}
}

// gcra runs the first n cells through the store's GCRA. A Memory store,
// the one that serves every request of a single instance, is called
// directly, because a slice passed through the Store interface escapes to
// the heap: that would be an allocation per request.
func (l *Limiter) gcra(ctx context.Context, now time.Time, cells [2]RateCell, n int) ([2]RateCell, bool, error) {
	if l.local != nil {
		ok, err := l.local.GCRA(ctx, now, cells[:n])
		return cells, ok, err
	}
	remote := cells
	ok, err := l.store.GCRA(ctx, now, remote[:n])
	return remote, ok, err
}

// spend is gcra for the store's Budget.
func (l *Limiter) spend(ctx context.Context, now time.Time, cells [3]BudgetCell, n int) ([3]BudgetCell, bool, error) {
	if l.local != nil {
		ok, err := l.local.Budget(ctx, now, 1, cells[:n])
		return cells, ok, err
	}
	remote := cells
	ok, err := l.store.Budget(ctx, now, 1, remote[:n])
	return remote, ok, err
}

// Allow is AllowRate and, if it allowed without a store fault, Spend, for
// a client with no wide network, combined into one Result. It remains for
// callers that check every limit at one point; the gateway calls AllowRate
// and Spend at their own points instead.
func (l *Limiter) Allow(ctx context.Context, client string) Result {
	c := Client{Key: client}
	res := l.AllowRate(ctx, c)
	res.step = stepBoth
	if !res.Allowed || res.Err != nil {
		return res
	}
	spend := l.Spend(ctx, c)
	spend.step = stepBoth
	spend.Rate = res.Rate
	spend.checked |= res.checked
	return spend
}

// deadline bounds ctx by the store timeout, if the store needs one.
func (l *Limiter) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if l.timeout == 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, l.timeout)
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
		return res.deny(ReasonStoreError)
	}
	return res
}

func (l *Limiter) report(err error) {
	if l.onFault != nil {
		l.onFault(err)
	}
}

// buildPolicyHeader renders the RateLimit-Policy field of one step once,
// since it only depends on configuration. Its items follow
// draft-ietf-httpapi-ratelimit-headers-09: the rate policy states the
// configured sustained rate (q requests per w seconds), each budget its
// limit per window, a month counted as 30 days. The wide network's limits
// are not announced: they are the client's scaled, and a client sees them
// only through the combined Remaining.
func (l *Limiter) buildPolicyHeader(s step) []string {
	var items []string
	if l.limit > 0 && s != stepSpend {
		items = append(items, policyItem("rate", l.rate.Count, l.rate.Per))
	}
	if !l.clientBudget.IsZero() && s != stepRate {
		items = append(items, policyItem("client-budget", l.clientBudget.Limit, l.clientBudget.Window.nominal()))
	}
	if !l.budget.IsZero() && s != stepRate {
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
// Called with Spend's Result after AllowRate's of the same limiter, it
// adds the budgets to the rate's field values, so that a response carries
// every limit of its route in one line of each field, as a client expects;
// otherwise it replaces them. The RateLimit-Policy value is shared between
// responses to save an allocation; it must not be modified in place
// (Header.Add and Set are fine).
func (res *Result) SetHeaders(h http.Header) {
	if res.l == nil || res.checked == 0 {
		return
	}
	l := res.l
	old := h["Ratelimit"]
	merge := res.step == stepSpend && len(old) == 1 && l.policyHeader[stepRate] != nil &&
		slices.Equal(h["Ratelimit-Policy"], l.policyHeader[stepRate])
	if merge {
		h["Ratelimit-Policy"] = l.policyHeader[stepBoth]
	} else if p := l.policyHeader[res.step]; p != nil {
		h["Ratelimit-Policy"] = p
	}
	var buf [256]byte
	b := buf[:0]
	if merge {
		b = append(b, old[0]...)
	}
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
	if merge {
		old[0] = string(b)
	} else {
		h["Ratelimit"] = []string{string(b)}
	}
	if res.Allowed || res.Reason == ReasonStoreError {
		return
	}
	retry := max(res.Rate.RetryAfter, res.ClientBudget.RetryAfter, res.Budget.RetryAfter)
	h["Retry-After"] = []string{strconv.FormatInt(max(ceilSeconds(retry), 1), 10)}
}
