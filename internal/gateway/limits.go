package gateway

import (
	"net/http"
	"time"

	"github.com/keyward/keyward/internal/ratelimit"
)

// client is whom r is counted against: its address keyed by the
// resolver (an IPv6 client by its /64), and for IPv6 its wide network.
func (g *Gateway) client(r *http.Request) ratelimit.Client {
	var buf [64]byte
	ip := g.clients.ClientIP(r)
	c := ratelimit.Client{Key: string(g.clients.AppendKey(buf[:0], ip))}
	if w := g.clients.AppendWideKey(buf[:0], ip); len(w) > 0 {
		c.Wide = string(w)
	}
	return c
}

// limit turns a limiter's answer into headers and, for a refusal, the
// error (429, or 503 when the store failed and the route fails closed).
// Refused requests are not counted.
func (g *Gateway) limit(w http.ResponseWriter, x *exchange, res ratelimit.Result) error {
	res.SetHeaders(w.Header())
	if m := g.opts.Metrics; m != nil && res.Budget != (ratelimit.Decision{}) {
		m.BudgetRemaining(x.ep.name, res.Budget.Remaining)
	}
	var rf *refusal
	switch res.Reason {
	case ratelimit.ReasonNone:
		return nil
	case ratelimit.ReasonRate:
		rf = refused(http.StatusTooManyRequests, "rate_limited", "too many requests; retry after the time in Retry-After")
	case ratelimit.ReasonClientBudget:
		rf = refused(http.StatusTooManyRequests, "client_budget_exhausted", "this client's request budget for the period is spent")
	case ratelimit.ReasonBudget:
		rf = refused(http.StatusTooManyRequests, "budget_exhausted", "this route's request budget for the period is spent")
	default:
		rf = refused(http.StatusServiceUnavailable, "store_unavailable", "limits cannot be checked right now; try again shortly")
	}
	if m := g.opts.Metrics; m != nil {
		m.Limited(x.ep.name, res.Reason.String())
	}
	return rf
}

// faultLogInterval is how often a failing store is logged: every request
// would flood the log during an outage; the metric counts each one.
const faultLogInterval = 10 * time.Second

// StoreFault counts a fault of a store user (kind "ratelimit" or "cache")
// and logs it at most once per interval.
func (g *Gateway) StoreFault(kind string, err error) {
	if m := g.opts.Metrics; m != nil {
		m.StoreError(kind)
	}
	now := g.opts.Now().UnixNano()
	last := g.faultLog.Load()
	if now-last < int64(faultLogInterval) || !g.faultLog.CompareAndSwap(last, now) {
		return
	}
	g.opts.Logger.Warn("store error", slogString("kind", kind), slogString("error", g.scrub.String(err.Error())))
}
