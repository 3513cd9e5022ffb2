package gateway

import (
	"net/http"

	"github.com/keyward/keyward/internal/config"
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
		m.BudgetRemaining(x.ep.name, res.Budget.Unit.String(), remainingValue(res.Budget))
	}
	var rf *refusal
	switch res.Reason {
	case ratelimit.ReasonNone:
		return nil
	case ratelimit.ReasonRate:
		rf = refused(http.StatusTooManyRequests, "rate_limited", "too many requests; retry after the time in Retry-After")
	case ratelimit.ReasonClientBudget:
		rf = refused(http.StatusTooManyRequests, "client_budget_exhausted", "this client's budget for the period is spent")
	case ratelimit.ReasonBudget:
		rf = refused(http.StatusTooManyRequests, "budget_exhausted", "this route's budget for the period is spent")
	case ratelimit.ReasonClientTokens:
		rf = refused(http.StatusTooManyRequests, "client_tokens_exhausted", "this client's tokens for the period are spent")
	case ratelimit.ReasonTokens:
		rf = refused(http.StatusTooManyRequests, "tokens_exhausted", "this route's tokens for the period are spent")
	case ratelimit.ReasonSpendCap:
		if m := g.opts.Metrics; m != nil {
			m.Limited(x.ep.name, res.Reason.String())
		}
		return capped(x.ep, "spend_cap_reached", "the gateway's spend cap for the period is reached")
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

// remainingValue is a budget's remainder in its unit for the gauge:
// dollars for money, else the count.
func remainingValue(d ratelimit.Decision) float64 {
	if d.Unit == ratelimit.Money {
		return float64(d.Remaining) / config.MicrosPerDollar
	}
	return float64(d.Remaining)
}

// staticResponse is an answer written in the config (capped_response).
type staticResponse struct {
	status int
	ctype  []string
	body   []byte
}

// cappedAnswer is a refusal answered with a route's capped_response.
type cappedAnswer struct {
	code string
	r    *staticResponse
}

func (c *cappedAnswer) Error() string { return c.code }

// capped refuses a call the spend cap or a pause stops: 503 with code, or
// the route's capped_response, a degraded answer a page can show.
func capped(ep *endpoint, code, msg string) error {
	if ep.capped != nil {
		return &cappedAnswer{code: code, r: ep.capped}
	}
	return refused(http.StatusServiceUnavailable, code, msg)
}
