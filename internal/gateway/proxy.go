package gateway

import (
	"net/http"
	"net/url"

	"github.com/keyward/keyward/internal/httpsyntax"
)

// outboundRequest builds the request sent upstream: the route's URL, and a
// fresh header map of the headers the route allows (minus any the client
// named in Connection) and the ones it sets. Secrets are written here and
// nowhere else. The client's trailers, forwarding headers and everything
// else stay behind.
func (g *Gateway) outboundRequest(r *http.Request, x *exchange) *http.Request {
	ep := x.ep
	out := r.WithContext(&x.Exchange)
	x.url = url.URL{Scheme: ep.upstream.Scheme, Host: ep.upstream.Host, Path: x.rawPath, RawPath: x.path, RawQuery: x.query}
	out.URL = &x.url
	out.Host = ""
	out.RequestURI = ""
	out.Close = false
	out.Trailer = nil // some upstreams merge trailers into the headers
	if out.ContentLength == 0 {
		out.Body = nil
	}
	h := ep.outboundHeader(r.Header, x)
	out.Header = h
	return out
}

// outboundHeader is the header map sent upstream: the client headers the
// route allows (minus any the client named in Connection, which were
// meant for the gateway) and the ones the route sets, secrets included.
// It is also what a cached route keys on, so every request header that
// can change the upstream's answer separates cache entries.
func (ep *endpoint) outboundHeader(in http.Header, x *exchange) http.Header {
	h := make(http.Header, len(ep.headerAllow)+len(ep.headerSet)+1)
	for _, name := range ep.headerAllow {
		if v, ok := in[name]; ok && !httpsyntax.HasToken(in["Connection"], name) {
			h[name] = v
		}
	}
	for i := range ep.headerSet {
		hs := &ep.headerSet[i]
		if hs.static != nil {
			h[hs.name] = hs.static
			continue
		}
		h[hs.name] = []string{string(hs.value.Expand(nil, x.param, nil))}
	}
	if x.ctype != "" {
		h["Content-Type"] = []string{x.ctype}
	}
	if httpsyntax.HasToken(in["Te"], "trailers") {
		h["Te"] = teTrailers // for gRPC-style upstreams, as ReverseProxy did
	}
	return h
}

var teTrailers = []string{"trailers"}
