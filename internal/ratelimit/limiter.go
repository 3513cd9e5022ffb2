// Package ratelimit shields an upstream from abuse and bounds what a route
// can spend: a per-client rate limit (GCRA, the generic cell rate
// algorithm) and per-route and per-client budgets counted in fixed calendar
// windows.
//
// One Limiter per route combines them over a Store, in two steps that the
// gateway takes at two points of a request: AllowRate when the request
// arrives, so that every request a client sends costs it rate, whatever
// becomes of it; Reserve (or Spend) just before the request goes
// upstream, so that the budgets count what the upstream receives (and
// bills), not requests the gateway refused itself or answered from its
// cache.
//
// Budgets count requests, money or tokens (Unit). A call's cost in money
// or tokens is known only once its answer is (a model call), so Reserve
// counts the worst case against every budget that applies, the route's,
// the client's and the spend cap shared by every route, in one atomic
// step, and Reservation.Settle later gives back the difference to the
// real cost, in the window the reservation was counted in. Concurrent
// calls therefore cannot overshoot a budget that only some of them fit:
// each in-flight call holds its worst case until it settles.
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

	"github.com/keyward/keyward/internal/config"
)

// DefaultTimeout bounds the store round trip of one AllowRate, Reserve,
// Spend or Settle call when Options does not. It is long enough for a Redis round trip
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
	// ClientBudget is a per-client budget, in requests or money; the zero
	// Budget means none.
	ClientBudget Budget
	// Budget is the route budget shared by all clients, in requests or
	// money: the ceiling on what the upstream receives (or bills) per
	// window. The zero Budget means none.
	Budget Budget
	// ClientTokens is a per-client token budget (Unit Tokens); the zero
	// Budget means none.
	ClientTokens Budget
	// Tokens is the route's token budget shared by all clients (Unit
	// Tokens); the zero Budget means none.
	Tokens Budget
	// SpendCap is the money budget (Unit Money) shared by every route and
	// every instance: the configuration's spend_cap, given to every
	// limiter alike. The zero Budget means none.
	SpendCap Budget
	// Price is what one upstream call costs when Spend is called: the
	// route's price. Reserve takes the cost from its caller instead. 0
	// means a call costs nothing in money.
	Price config.Money
	// WideFactor is how many clients' allowance the clients of one wide
	// network (Client.Wide) share: the network's rate, burst and client
	// budget are WideFactor times a client's. 0 means DefaultWideFactor;
	// 1 makes the whole network one client.
	WideFactor int64
	// OnStoreError is the fault policy. The zero value is FailOpen.
	OnStoreError FaultPolicy
	// Timeout bounds the store round trip of one AllowRate, Reserve, Spend
	// or Settle call; 0 means DefaultTimeout. It does not apply to a Memory store, which
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
	// Wait, when set, is what this request's store calls have waited on a
	// store that did not answer: the gateway gives every call of one
	// request the same Wait, so that a frozen Redis costs a request one
	// store_timeout in all (a rate check and then a budget check would
	// otherwise wait twice). Nil: each call gets the whole timeout.
	Wait *Wait
}

// Wait is the time one request's limiter calls waited on a store that did
// not answer within their deadline (Client.Wait). The calls of one request
// are made one after another, so it needs no lock. The zero Wait has
// spent nothing.
type Wait struct{ spent time.Duration }

// Limiter decides whether one route's request may proceed. It is immutable
// after New and safe for concurrent use; a config reload builds a new one,
// and because state lives in the Store under Options.Name the new one
// continues where the old one stopped.
type Limiter struct {
	name         string
	rate         Rate
	emission     time.Duration
	limit        time.Duration // emission * burst
	wideEmission time.Duration // emission / WideFactor, rounded up
	wideLimit    time.Duration // wideEmission * burst * WideFactor
	// budgets holds each configured budget by slot, a wide network's
	// scaled by WideFactor; the zero Budget for none.
	budgets       [numSlots]Budget
	budgetKeys    [numSlots]string // key, or prefix to which the client key is appended
	price         config.Money
	policy        FaultPolicy
	timeout       time.Duration // 0 for stores that need no deadline
	store         Store
	local         *Memory // store, if it is a Memory
	now           func() time.Time
	onFault       func(error)
	rateKey       string // prefix; the client key is appended
	policyHeader  [stepBoth + 1][]string
	budgetSpentTo atomic.Int64 // unix µs until which a request Budget is known spent
}

// slot is one budget a reservation may count at. The order is the order
// of a reservation's cells.
type slot uint8

const (
	slotClient           slot = iota // ClientBudget at Client.Key
	slotClientWide                   // ClientBudget, scaled, at Client.Wide
	slotClientTokens                 // ClientTokens at Client.Key
	slotClientTokensWide             // ClientTokens, scaled, at Client.Wide
	slotRoute                        // Budget
	slotTokens                       // Tokens
	slotSpendCap                     // SpendCap, one key for every route
	numSlots
)

// perClient reports whether the slot's key is a client's or a network's.
func (s slot) perClient() bool { return s < slotRoute }

// wide reports whether the slot counts a client's wide network.
func (s slot) wide() bool { return s == slotClientWide || s == slotClientTokensWide }

// maxLimit bounds budget limits to what Redis's Lua, which computes in
// doubles, counts exactly: 2^53.
const maxLimit = 1 << 53

// SpendCapKey is the store key of the spend cap, the same for every
// limiter so that every route counts at it.
const SpendCapKey = "spend-cap"

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
		name:    o.Name,
		rate:    o.Rate,
		price:   o.Price,
		policy:  o.OnStoreError,
		timeout: o.Timeout,
		store:   o.Store,
		now:     o.Now,
		onFault: o.OnFault,
		rateKey: "rate:" + o.Name + ":",
	}
	if o.Price < 0 {
		errs = append(errs, fmt.Errorf("price %v is negative", o.Price))
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
		what  string
		b     Budget
		units []Unit
	}{
		{"client budget", o.ClientBudget, []Unit{Requests, Money}},
		{"budget", o.Budget, []Unit{Requests, Money}},
		{"client token budget", o.ClientTokens, []Unit{Tokens}},
		{"token budget", o.Tokens, []Unit{Tokens}},
		{"spend cap", o.SpendCap, []Unit{Money}},
	} {
		switch {
		case b.b.IsZero():
		case b.b.Limit <= 0 || b.b.Limit > maxLimit || b.b.Window < Minute || b.b.Window > Month:
			errs = append(errs, fmt.Errorf("%s %v: limit must be positive, at most 2^53, and the window minute, hour, day or month", b.what, b.b))
		case !slices.Contains(b.units, b.b.Unit):
			errs = append(errs, fmt.Errorf("%s %v: counts %v, want %v", b.what, b.b, b.b.Unit, b.units))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("rate limiter %q: %w", o.Name, errors.Join(errs...))
	}
	wide := func(b Budget) Budget {
		if !b.IsZero() {
			b.Limit = min(b.Limit, maxLimit/factor) * factor // saturates at about 2^53
		}
		return b
	}
	l.budgets = [numSlots]Budget{
		slotClient: o.ClientBudget, slotClientWide: wide(o.ClientBudget),
		slotClientTokens: o.ClientTokens, slotClientTokensWide: wide(o.ClientTokens),
		slotRoute: o.Budget, slotTokens: o.Tokens, slotSpendCap: o.SpendCap,
	}
	clientKey, routeKey := "client-budget:", "budget:"
	if o.ClientBudget.Unit == Money {
		clientKey = "client-budget-usd:"
	}
	if o.Budget.Unit == Money {
		routeKey = "budget-usd:"
	}
	l.budgetKeys = [numSlots]string{
		slotClient: clientKey + o.Name + ":", slotClientWide: clientKey + o.Name + ":",
		slotClientTokens: "client-tokens:" + o.Name + ":", slotClientTokensWide: "client-tokens:" + o.Name + ":",
		slotRoute: routeKey + o.Name, slotTokens: "tokens:" + o.Name, slotSpendCap: SpendCapKey,
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
	// ReasonClientTokens means the client's token budget, or its wide
	// network's (Result.Wide), cannot hold the call's worst case; answer
	// 429.
	ReasonClientTokens
	// ReasonTokens means the route's token budget cannot hold the call's
	// worst case; answer 429.
	ReasonTokens
	// ReasonSpendCap means the spend cap shared by every route cannot hold
	// the call's worst case; answer 503 spend_cap_reached (or the
	// configured fallback): the whole gateway, not this client, is out of
	// money.
	ReasonSpendCap
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
	case ReasonClientTokens:
		return "client_tokens"
	case ReasonTokens:
		return "tokens"
	case ReasonSpendCap:
		return "spend_cap"
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
	// Remaining is how much more this limit would allow right now, in
	// Unit: requests, micro-dollars or tokens.
	Remaining int64
	// Unit is what Remaining counts; Requests for a rate.
	Unit Unit
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
		Unit:       own.Unit,
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
	// Rate, ClientBudget, Budget, ClientTokens, Tokens and SpendCap are
	// the state of each configured limit that was checked; a limit that
	// was not configured or not reached (another step's, or the store
	// failed) is the zero Decision.
	Rate, ClientBudget, Budget, ClientTokens, Tokens, SpendCap Decision
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
	checkedClientTokens
	checkedTokens
	checkedSpendCap
)

// step is which limits a Result covers, for its RateLimit-Policy.
type step uint8

const (
	stepRate  step = iota // AllowRate
	stepSpend             // Spend or Reserve
	stepBoth              // Allow
)

// StoreError is a store fault seen by a Limiter.
type StoreError struct {
	// Limiter is the limiter's Options.Name.
	Limiter string
	// Op is the step that failed: "rate", "budget" or "settle".
	Op string
	// Err is the store's error; errors.Is(err, context.DeadlineExceeded)
	// for a timeout.
	Err error
}

// Error implements error.
func (e *StoreError) Error() string {
	what := "checking " + e.Op
	if e.Op == "settle" {
		what = "settling a reservation"
	}
	return "rate limiter " + strconv.Quote(e.Limiter) + ": " + what + ": " + e.Err.Error()
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
	ctx, cancel, began := l.deadline(ctx, c.Wait)
	defer cancel()
	cells := [2]RateCell{{Key: l.rateKey + c.Key, Emission: l.emission, Limit: l.limit}}
	n := 1
	if c.Wide != "" {
		cells[1] = RateCell{Key: l.rateKey + c.Wide, Emission: l.wideEmission, Limit: l.wideLimit}
		n = 2
	}
	cells, ok, err := l.gcra(ctx, now, cells, n)
	waited(c.Wait, began, err)
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

// Amount is what one upstream call costs, in each unit a budget can
// count besides requests (a call is always one request). It has the
// fields of llm.Amount, so that the gateway converts one into the other.
type Amount struct {
	// Money is in micro-dollars.
	Money config.Money
	// Tokens counts input and output tokens together.
	Tokens int64
}

// in returns what a counts in unit u.
func (a Amount) in(u Unit) int64 {
	switch u {
	case Money:
		return int64(a.Money)
	case Tokens:
		return a.Tokens
	}
	return 1
}

// maxCells is the most cells a reservation counts at: one per slot.
const maxCells = int(numSlots)

// A Reservation is what Reserve counted for one upstream call: its worst
// case at every budget that applies, until Settle replaces it with what
// the call cost. The zero Reservation (nothing was reserved) settles to
// nothing. A Reservation is settled once; it is not safe for concurrent
// use.
type Reservation struct {
	l       *Limiter
	at      time.Time // when reserved: Settle counts in this window
	amount  Amount
	cells   [maxCells]BudgetCell
	slots   [maxCells]slot
	n       uint8
	settled bool
}

// Reserved returns what r holds: the worst case Reserve was given.
func (r *Reservation) Reserved() Amount { return r.amount }

// Reserve counts a, the worst case of one upstream call about to be
// made for c, and the call itself as one request, against every budget
// that applies: the client budgets (at c.Key, and at c.Wide against
// WideFactor times them), the route's budgets and the spend cap, all in
// one atomic store step. If any of them cannot hold it, nothing is
// counted anywhere and the Result says which refused (the spend cap
// first, then the route's, then the client's). Without budgets it allows
// without asking the store.
//
// The gateway calls it just before dialling the upstream, so the budgets
// count what the upstream receives and bills, never a request the
// gateway refused or answered from its cache, and then settles the
// Reservation with what the call cost. The call is bounded by
// Options.Timeout; a store fault is decided by the fault policy, and
// under FailOpen the returned Reservation is still settled (what it
// reserved is in this instance's ledger).
func (l *Limiter) Reserve(ctx context.Context, c Client, a Amount) (Reservation, Result) {
	res := Result{Allowed: true, step: stepSpend, l: l}
	var r Reservation
	route := l.budgets[slotRoute]
	now := l.now()
	if !route.IsZero() && route.Unit == Requests {
		// A request budget never decreases inside its window (a settled
		// call stays one request), so once this instance has seen it spent
		// it can answer without the store.
		if until := l.budgetSpentTo.Load(); now.UnixMicro() < until {
			reset := time.Duration(until-now.UnixMicro()) * time.Microsecond
			res.Budget = Decision{Reset: reset, RetryAfter: reset}
			res.checked |= checkedBudget
			return r, res.deny(ReasonBudget)
		}
	}
	a.Money, a.Tokens = max(a.Money, 0), max(a.Tokens, 0)
	n := 0
	for k := range numSlots {
		b := l.budgets[k]
		if b.IsZero() || (k.wide() && c.Wide == "") {
			continue
		}
		key := l.budgetKeys[k]
		if k.perClient() {
			if k.wide() {
				key += c.Wide
			} else {
				key += c.Key
			}
		}
		r.cells[n] = BudgetCell{Key: key, Limit: b.Limit, Window: b.Window, N: a.in(b.Unit)}
		r.slots[n] = k
		n++
	}
	if n == 0 {
		return r, res
	}
	r.l, r.at, r.amount, r.n = l, now, a, uint8(n)
	ctx, cancel, began := l.deadline(ctx, c.Wait)
	defer cancel()
	cells, ok, err := l.spend(ctx, now, r.cells, n)
	waited(c.Wait, began, err)
	if err != nil {
		if l.policy == FailOpen {
			// A copy: cells passed through the Store interface escape to
			// the heap, and r must not on every call for this rare one.
			admitted := r.cells
			l.store.AdmittedOnFault(now, admitted[:n])
			return r, l.fault(res, "budget", err)
		}
		return Reservation{}, l.fault(res, "budget", err)
	}
	var own, wide [numSlots]Decision
	for i, k := range r.slots[:n] {
		d := budgetDecision(ok, cells[i], l.budgets[k].Unit, now)
		if k.wide() {
			wide[k-1] = d // the own slot precedes its wide one
		} else {
			own[k] = d
		}
	}
	decide := func(k slot, f checks, dst *Decision) {
		if l.budgets[k].IsZero() {
			return
		}
		res.checked |= f
		*dst = own[k]
		if k.perClient() && c.Wide != "" {
			res.Wide = res.Wide || (own[k].Allowed && !wide[k].Allowed)
			*dst = combine(own[k], wide[k])
		}
	}
	decide(slotClient, checkedClientBudget, &res.ClientBudget)
	decide(slotClientTokens, checkedClientTokens, &res.ClientTokens)
	decide(slotRoute, checkedBudget, &res.Budget)
	decide(slotTokens, checkedTokens, &res.Tokens)
	decide(slotSpendCap, checkedSpendCap, &res.SpendCap)
	if ok {
		return r, res
	}
	// The shared limits' refusals are reported even when the client's
	// budget refused too: they apply to everyone.
	for _, shared := range []struct {
		checked checks
		d       Decision
		why     Reason
	}{
		{checkedSpendCap, res.SpendCap, ReasonSpendCap},
		{checkedBudget, res.Budget, ReasonBudget},
		{checkedTokens, res.Tokens, ReasonTokens},
	} {
		if res.checked&shared.checked != 0 && !shared.d.Allowed {
			res.Wide = false
			if shared.why == ReasonBudget && route.Unit == Requests {
				l.budgetSpentTo.Store(now.UnixMicro() + res.Budget.Reset.Microseconds())
			}
			return Reservation{}, res.deny(shared.why)
		}
	}
	if res.checked&checkedClientBudget != 0 && !res.ClientBudget.Allowed {
		return Reservation{}, res.deny(ReasonClientBudget)
	}
	return Reservation{}, res.deny(ReasonClientTokens)
}

// Settle replaces what r reserved by actual, what the call cost: it gives
// back the difference at every budget r counted at, or, if the call cost
// more than its worst case (an input estimate too low), counts the
// excess without comparing limits, since the upstream has billed it
// already. The request itself stays counted. Counts never go below zero.
// It counts in the window r was reserved in, even if another has started
// since. A call that never reached the upstream settles with the zero
// Amount; a call whose cost is unknown (a stream cut before its usage)
// should not be settled at all, so that its worst case stands.
//
// Settle is bounded by Options.Timeout but not cancelled with ctx: the
// client hanging up does not change what the call cost. A second Settle
// does nothing. A store fault is reported (OnFault) and returned as a
// *StoreError; the reservation then stands.
func (r *Reservation) Settle(ctx context.Context, actual Amount) error {
	if r.l == nil || r.settled {
		return nil
	}
	r.settled = true
	l := r.l
	actual.Money, actual.Tokens = max(actual.Money, 0), max(actual.Tokens, 0)
	var cells [maxCells]BudgetCell
	n := 0
	for i, k := range r.slots[:r.n] {
		u := l.budgets[k].Unit
		if d := actual.in(u) - r.amount.in(u); d != 0 {
			cells[n] = r.cells[i]
			cells[n].N = d
			n++
		}
	}
	if n == 0 {
		return nil
	}
	var err error
	if l.local != nil {
		err = l.local.Adjust(ctx, r.at, l.now(), cells[:n]) // waits on nothing but locks
	} else {
		// After the response: not part of the request's store wait.
		ctx, cancel, _ := l.deadline(context.WithoutCancel(ctx), nil)
		defer cancel()
		remote := cells
		err = l.store.Adjust(ctx, r.at, l.now(), remote[:n])
	}
	if err != nil {
		serr := &StoreError{Limiter: l.name, Op: "settle", Err: err}
		l.report(serr)
		return serr
	}
	return nil
}

// Spend is Reserve of the route's price (Options.Price) for one request,
// never settled: for a route whose calls cost what they cost whatever
// the answer. The call is bounded by Options.Timeout; a store fault is
// decided by the fault policy.
func (l *Limiter) Spend(ctx context.Context, c Client) Result {
	_, res := l.Reserve(ctx, c, Amount{Money: l.price})
	return res
}

// budgetDecision is the Decision for one cell of a Budget call that
// counted or not. Remaining is what is left even when the cell refused:
// a call that cost less might fit.
func budgetDecision(counted bool, c BudgetCell, u Unit, now time.Time) Decision {
	reset := c.Window.End(now).Sub(now)
	d := Decision{Remaining: max(c.Limit-c.Used, 0), Unit: u, Reset: reset}
	if counted || c.Used <= c.Limit-c.N {
		d.Allowed = true
	} else {
		d.RetryAfter = reset
	}
	return d
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
	if err := ctx.Err(); err != nil {
		// The request's store time is used up (Client.Wait), or it has
		// ended: no call, and nothing for the store's breaker to count.
		return cells, false, err
	}
	remote := cells
	ok, err := l.store.GCRA(ctx, now, remote[:n])
	return remote, ok, err
}

// spend is gcra for the store's Budget.
func (l *Limiter) spend(ctx context.Context, now time.Time, cells [maxCells]BudgetCell, n int) ([maxCells]BudgetCell, bool, error) {
	if l.local != nil {
		ok, err := l.local.Budget(ctx, now, cells[:n])
		return cells, ok, err
	}
	if err := ctx.Err(); err != nil {
		return cells, false, err // as in gcra
	}
	remote := cells
	ok, err := l.store.Budget(ctx, now, remote[:n])
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

// deadline bounds ctx by the store timeout, if the store needs one: by
// what is left of it after w's earlier calls timed out, when w is set
// (none left: the context has ended, the call is not made, and the fault
// policy decides at once). It returns when the call began, for waited.
func (l *Limiter) deadline(ctx context.Context, w *Wait) (context.Context, context.CancelFunc, time.Time) {
	if l.timeout == 0 {
		return ctx, noCancel, time.Time{}
	}
	if w == nil {
		ctx, cancel := context.WithTimeout(ctx, l.timeout)
		return ctx, cancel, time.Time{}
	}
	ctx, cancel := context.WithTimeout(ctx, max(l.timeout-w.spent, 0))
	return ctx, cancel, time.Now() // real time, as the deadline is
}

// waited adds to w what the call that began at began waited, if it
// failed by its deadline (a store that does not answer). A call the
// store answered, however slowly, takes nothing from the next: an
// unresponsive store is what store_timeout bounds once per request, and
// a slow answer must not turn the next call into a fault (which the
// store's breaker would count).
func waited(w *Wait, began time.Time, err error) {
	if w != nil && !began.IsZero() && errors.Is(err, context.DeadlineExceeded) {
		w.spent += time.Since(began)
	}
}

func noCancel() {}

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

// budgetItems are the budgets' items of the RateLimit fields, in the
// order they are written: each a slot, the name of its item and the flag
// of its Result field (Result.decision).
var budgetItems = [...]struct {
	slot    slot
	name    string
	checked checks
}{
	{slotClient, "client-budget", checkedClientBudget},
	{slotRoute, "budget", checkedBudget},
	{slotClientTokens, "client-tokens", checkedClientTokens},
	{slotTokens, "tokens", checkedTokens},
	{slotSpendCap, "spend-cap", checkedSpendCap},
}

// decision returns the budget Decision a checks flag names. A switch,
// not a table of functions: a Result passed to a function value escapes
// to the heap.
func (res *Result) decision(f checks) Decision {
	switch f {
	case checkedClientBudget:
		return res.ClientBudget
	case checkedBudget:
		return res.Budget
	case checkedClientTokens:
		return res.ClientTokens
	case checkedTokens:
		return res.Tokens
	case checkedSpendCap:
		return res.SpendCap
	}
	return Decision{}
}

// buildPolicyHeader renders the RateLimit-Policy field of one step once,
// since it only depends on configuration. Its items follow
// draft-ietf-httpapi-ratelimit-headers-09: the rate policy states the
// configured sustained rate (q requests per w seconds), each budget its
// limit per window, a month counted as 30 days, in the budget's unit:
// "qu" says which when it is not requests ("usd-micros", "tokens"; the
// draft registers only units of requests and bytes, and a client that
// does not know these reads the numbers as they are). The wide network's
// limits are not announced: they are the client's scaled, and a client
// sees them only through the combined Remaining.
func (l *Limiter) buildPolicyHeader(s step) []string {
	var items []string
	if l.limit > 0 && s != stepSpend {
		items = append(items, policyItem("rate", l.rate.Count, l.rate.Per, Requests))
	}
	for _, it := range budgetItems {
		if b := l.budgets[it.slot]; !b.IsZero() && s != stepRate {
			items = append(items, policyItem(it.name, b.Limit, b.Window.nominal(), b.Unit))
		}
	}
	if len(items) == 0 {
		return nil
	}
	v := strings.Join(items, ", ")
	return []string{v}[:1:1]
}

func policyItem(name string, q int64, w time.Duration, u Unit) string {
	item := `"` + name + `";q=` + strconv.FormatInt(q, 10)
	if u != Requests {
		item += `;qu="` + u.String() + `"`
	}
	return item + ";w=" + strconv.FormatInt(ceilSeconds(w), 10)
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
// Called with Reserve's (or Spend's) Result after AllowRate's of the
// same limiter, it adds the budgets to the rate's field values, so that a
// response carries every limit of its route in one line of each field, as
// a client expects; otherwise it replaces them. Budgets are stated in
// their own unit (see buildPolicyHeader). The RateLimit-Policy value is
// shared between responses to save an allocation; it must not be modified
// in place (Header.Add and Set are fine).
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
	for _, it := range budgetItems {
		if res.checked&it.checked != 0 {
			item(it.name, res.decision(it.checked))
		}
	}
	if merge {
		old[0] = string(b)
	} else {
		h["Ratelimit"] = []string{string(b)}
	}
	if res.Allowed || res.Reason == ReasonStoreError {
		return
	}
	retry := max(res.Rate.RetryAfter, res.ClientBudget.RetryAfter, res.Budget.RetryAfter,
		res.ClientTokens.RetryAfter, res.Tokens.RetryAfter, res.SpendCap.RetryAfter)
	h["Retry-After"] = []string{strconv.FormatInt(max(ceilSeconds(retry), 1), 10)}
}
