package gateway

import (
	"context"
	"errors"
	"net/http"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/llm"
	"github.com/keyward/keyward/internal/proxy"
	"github.com/keyward/keyward/internal/ratelimit"
)

// spend is what one upstream call of a request costs: reserved before the
// upstream is dialled, settled when the answer's usage is known.
type spend struct {
	req   *llm.Request // nil on a route without llm
	meter *llm.Meter
	// reserved is the worst case; charged is what the call cost (the
	// reservation when the usage never came: never zero for a call that
	// may have been billed).
	reserved, charged llm.Amount
	settled           bool
}

// llmCompile compiles a route's `llm:` block and `price:`.
func (c *compiler) llmCompile(path string, rc *config.Route, ep *endpoint) {
	if rc.Price != "" {
		p, err := config.ParseMoney(rc.Price)
		if err != nil {
			c.errorf(path+".price", "%v", err)
		}
		ep.price = p
	}
	if rc.LLM == nil {
		return
	}
	if rc.Price != "" {
		c.errorf(path+".price", "a route with llm is priced per token (llm.prices), not per call")
	}
	p, err := llm.Compile(*rc.LLM)
	for _, e := range unjoin(err) {
		var le *llm.Error
		if errors.As(e, &le) {
			c.errorf(path+".llm."+le.Path, "%s", le.Msg)
		} else {
			c.errorf(path+".llm", "%v", e)
		}
	}
	ep.llm = p
	if ep.cache != nil {
		c.errorf(path+".cache", "a model route cannot be cached: every answer is metered")
	}
}

// prepareLLM checks the model and bounds the answer on the body that will
// be sent, and works out the worst case to reserve.
func (g *Gateway) prepareLLM(r *http.Request, x *exchange, body []byte) ([]byte, error) {
	req, err := x.ep.llm.Prepare(body, x.path)
	if err != nil {
		var re *llm.RequestError
		if errors.As(err, &re) {
			return nil, refused(http.StatusBadRequest, re.Code, re.Msg)
		}
		return nil, err
	}
	x.spend.req = req
	x.spend.reserved = req.Reserve()
	return req.Body, nil
}

// reserve counts the call against the budgets before the upstream is
// dialled: its worst case in money and tokens on routes with a price or
// llm (settled after the call), one call otherwise. A refusal means no
// upstream call: so concurrent requests can never overshoot a budget
// that only some of them fit.
func (g *Gateway) reserve(w http.ResponseWriter, r *http.Request, x *exchange) error {
	l := x.limiter
	if l == nil {
		return nil
	}
	if x.ep.llm == nil && x.ep.price == 0 {
		return g.limit(w, x, l.Spend(r.Context(), x.client))
	}
	a := ratelimit.Amount{Money: x.ep.price}
	if x.spend.req != nil {
		a = ratelimit.Amount(x.spend.reserved)
	}
	res, result := l.Reserve(r.Context(), x.client, a)
	if err := g.limit(w, x, result); err != nil {
		return err
	}
	x.reservation = &res // a pointer: most requests reserve nothing, and the exchange stays small
	return nil
}

// settle records what the upstream call cost: the usage the meter read,
// or the reservation when it could not (a cut stream, no usage chunk). A
// call that never left (the outbound policy, a failed dial) costs nothing.
func (g *Gateway) settle(x *exchange, err error) {
	s := &x.spend
	if s.req == nil && x.ep.price == 0 {
		return
	}
	var pe *proxy.Error
	if errors.As(err, &pe) && !pe.Sent {
		s.charged, s.settled = llm.Amount{}, true
		g.settleReservation(x)
		return
	}
	switch {
	case s.req != nil:
		var u llm.Usage
		if s.meter != nil {
			u = s.meter.Usage()
		}
		s.charged = s.req.Charge(x.UpstreamStatus, u)
		if m := g.opts.Metrics; m != nil {
			m.Tokens(x.ep.name, s.req.Model, u.Input, u.CachedInput, u.CacheWrite, u.Output)
		}
	default:
		s.charged = llm.Amount{Money: x.ep.price}
	}
	s.settled = true
	g.settleReservation(x)
	if m := g.opts.Metrics; m != nil && s.charged.Money > 0 {
		model := ""
		if s.req != nil {
			model = s.req.Model
		}
		m.Spend(x.ep.name, model, float64(s.charged.Money)/config.MicrosPerDollar)
	}
}

func (s *spend) model() string {
	if s.req == nil {
		return ""
	}
	return s.req.Model
}

func (s *spend) tokensIn() int64 {
	if s.meter == nil {
		return 0
	}
	u := s.meter.Usage()
	return u.Input + u.CachedInput + u.CacheWrite
}

func (s *spend) tokensOut() int64 {
	if s.meter == nil {
		return 0
	}
	return s.meter.Usage().Output
}

// settleReservation replaces the call's reservation with what it cost.
// It runs after the client may have gone: the bill does not care.
func (g *Gateway) settleReservation(x *exchange) {
	r := x.reservation
	if r == nil || ratelimit.Amount(x.spend.charged) == r.Reserved() {
		return // what was reserved is what it cost: nothing to change
	}
	ctx := context.WithoutCancel(x.in.Context())
	if err := r.Settle(ctx, ratelimit.Amount(x.spend.charged)); err != nil {
		g.StoreFault("ratelimit", err)
	}
}
