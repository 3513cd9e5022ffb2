package gateway

import (
	"net/http"
	"slices"
	"strings"

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
