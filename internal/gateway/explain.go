package gateway

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/llm"
	"github.com/keyward/keyward/internal/route"
)

// RouteInfo describes one mounted route, for `keyward routes` and
// `keyward test`. It holds nothing secret: templates print as written.
type RouteInfo struct {
	Name, Stage, Host, Path string
	Methods                 []string
	Upstream                string
	// Params are the matched values, for Match.
	Params [][2]string
	ep     *endpoint
}

// Routes lists every mounted route in config order, stage by stage.
func (g *Gateway) Routes() []RouteInfo {
	out := make([]RouteInfo, 0, len(g.endpoints))
	for _, ep := range g.endpoints {
		out = append(out, ep.info())
	}
	return out
}

// RouteCount is what a gateway serves, counted the same way everywhere
// (check, serve, the reload log): routes as the config writes them, the
// stages, and the routes mounted (one per route, stage and method group).
type RouteCount struct {
	Routes, Stages, Mounted int
}

// Count counts g's routes.
func (g *Gateway) Count() RouteCount {
	names, stages := map[string]bool{}, map[string]bool{}
	for _, ep := range g.endpoints {
		names[ep.name] = true
		if ep.stage != "" {
			stages[ep.stage] = true
		}
	}
	return RouteCount{Routes: len(names), Stages: len(stages), Mounted: len(g.endpoints)}
}

func (ep *endpoint) info() RouteInfo {
	return RouteInfo{Name: ep.name, Stage: ep.stage, Host: ep.host, Path: ep.pattern.String(),
		Methods: ep.methods, Upstream: ep.upstream.String(), ep: ep}
}

// Match finds the route r would reach, without serving it.
func (g *Gateway) Match(r *http.Request) (RouteInfo, bool) {
	escaped := r.URL.EscapedPath()
	if route.CheckPath(escaped) != nil {
		return RouteInfo{}, false
	}
	router := g.root
	if hr, ok := g.hosts[strings.ToLower(hostOnly(r.Host))]; ok {
		router = hr
	}
	var ps route.Params
	ep, ok := router.Match(escaped, &ps)
	if !ok {
		return RouteInfo{}, false
	}
	ep = ep.forMethod(r.Method)
	info := ep.info()
	for i := range ps.Len() {
		n, v := ps.At(i)
		info.Params = append(info.Params, [2]string{n, v})
	}
	return info, true
}

// DropReason says why a client header would not reach the upstream, or ""
// if it would.
func (ri RouteInfo) DropReason(header string) string {
	ch := http.CanonicalHeaderKey(header)
	switch {
	case slices.ContainsFunc(ri.ep.headerSet, func(h headerSet) bool { return h.name == ch }):
		return "set by the gateway (headers.set)"
	case slices.Contains(hopByHop, ch):
		return "connection header, never forwarded"
	case !slices.Contains(ri.ep.headerAllow, ch):
		return "not allowed (add it to headers.allow)"
	}
	return ""
}

// QueryDropReason says why a client query parameter would not reach the
// upstream, or "" if it would.
func (ri RouteInfo) QueryDropReason(name string) string {
	switch {
	case ri.ep.isSetParam(name):
		return "set by the gateway (query.set)"
	case !ri.ep.queryAllow[name]:
		return "not allowed (add it to query.allow)"
	}
	return ""
}

// Mask replaces every secret value in s with "[secret:NAME]".
func (g *Gateway) Mask(s string) string { return g.scrub.Mask(s) }

// CallerInfo says who a request is from and what its limits count, for
// `keyward test`. It never holds a credential.
type CallerInfo struct {
	// Kinds are the caller kinds the route accepts ("" for a public route).
	Kinds string
	// Kind and ID name the verified caller; Kind is "anonymous" for a
	// request let through under the route's fallback.
	Kind, ID string
	// Claims lists the verified claim names (JWT callers).
	Claims []string
	// Refused is the refusal (status and code, reason) when the request
	// proves no accepted caller.
	Refused string
	// LimitKey is whom the route's limits count ("" without limits).
	LimitKey string
}

// Caller verifies r's caller as the route it matches would, without
// serving it.
func (g *Gateway) Caller(r *http.Request) CallerInfo {
	info, ok := g.Match(r)
	if !ok {
		return CallerInfo{}
	}
	ep := info.ep
	x := &exchange{g: g, ep: ep}
	ci := CallerInfo{Kinds: ep.callerKinds}
	if ep.callers != nil {
		rec := httptest.NewRecorder()
		if err := g.verifyCaller(rec, r, x); err != nil {
			var rf *refusal
			if errors.As(err, &rf) {
				ci.Refused = strconv.Itoa(rf.status) + " " + rf.code
				if rf.cause != nil {
					ci.Refused += " (" + string(caller.ReasonOf(rf.cause)) + ")"
				}
			}
			return ci
		}
		ci.Kind, ci.ID = x.caller.Kind, x.caller.ID
		for name := range x.caller.Claims {
			ci.Claims = append(ci.Claims, name)
		}
		slices.Sort(ci.Claims)
	}
	if l, c := g.limiterFor(r, x); l != nil {
		ci.LimitKey = c.Key
	}
	return ci
}

// CostInfo is what a call would reserve against money and token budgets,
// for `keyward test`.
type CostInfo struct {
	// Priced is false for a route without llm or price.
	Priced bool
	// Model is the model the request names (llm routes).
	Model string
	// InputTokens (estimated) and OutputTokens (the clamped bound) are
	// the worst case of an llm call.
	InputTokens, OutputTokens int64
	// PerMillionIn and PerMillionOut are the model's prices, and
	// PerCall a plain route's price, in micro-dollars.
	PerMillionIn, PerMillionOut, PerCall config.Money
	// Reserve is what is reserved before the call, in micro-dollars.
	Reserve config.Money
	// Refused is why the body would be refused (model_not_allowed ...).
	Refused string
}

// Cost says what a request with body would reserve on the route it
// matches, without serving it.
func (g *Gateway) Cost(r *http.Request, body []byte) CostInfo {
	escaped := r.URL.EscapedPath()
	if route.CheckPath(escaped) != nil {
		return CostInfo{}
	}
	router := g.root
	if hr, ok := g.hosts[strings.ToLower(hostOnly(r.Host))]; ok {
		router = hr
	}
	var ps route.Params
	ep, ok := router.Match(escaped, &ps)
	if !ok {
		return CostInfo{}
	}
	ep = ep.forMethod(r.Method)
	switch {
	case ep.llm != nil:
		path, _, err := ep.upstream.Path(&ps)
		if err != nil {
			return CostInfo{Priced: true, Refused: "bad_path"}
		}
		req, err := ep.llm.Prepare(body, path)
		if err != nil {
			var re *llm.RequestError
			if errors.As(err, &re) {
				return CostInfo{Priced: true, Refused: re.Code + ": " + re.Msg}
			}
			return CostInfo{Priced: true, Refused: err.Error()}
		}
		p := req.Price()
		return CostInfo{Priced: true, Model: req.Model, InputTokens: req.InputTokens, OutputTokens: req.OutputTokens,
			PerMillionIn: config.Money(p.Input), PerMillionOut: config.Money(p.Output), Reserve: req.Reserve().Money}
	case ep.price > 0:
		return CostInfo{Priced: true, PerCall: ep.price, Reserve: ep.price}
	}
	return CostInfo{}
}
