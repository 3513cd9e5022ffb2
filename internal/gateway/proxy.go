package gateway

import (
	"compress/gzip"
	"compress/zlib"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync"

	"github.com/keyward/keyward/internal/cache"
	"github.com/keyward/keyward/internal/httpsyntax"
	"github.com/keyward/keyward/internal/transform"
	"github.com/keyward/keyward/internal/upstream"
)

// NewTransport returns the upstream client: internal/upstream, an
// HTTP/1.1 client built for a gateway (no goroutine pair per connection,
// no header clones; measured in docs/PERFORMANCE.md), with up to 512 idle
// connections per host, the outbound address policy enforced when
// dialling, 64 KiB of response headers at most, and no proxy environment
// variables. It never follows redirects and never asks for compressed
// responses, so bodies arrive as the scrubber can read them. Upstreams
// that speak HTTP/2 are spoken to in HTTP/1.1. Routes bound the wait for
// headers; a stream may run as long as it keeps talking.
func NewTransport() http.RoundTripper {
	return upstream.New(upstream.Options{DialContext: dial, MaxResponseHeaderBytes: 64 << 10})
}

// bufferPool shares copy buffers across every request and reload. It
// pools arrays, not slices: putting a slice into a sync.Pool allocates a
// slice header each time.
type bufferPool struct{ p sync.Pool }

const copyBufSize = 32 << 10

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[copyBufSize]byte); ok {
		return v[:]
	}
	return new([copyBufSize]byte)[:]
}

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) == copyBufSize {
		b.p.Put((*[copyBufSize]byte)(buf[:copyBufSize]))
	}
}

var buffers = &bufferPool{}

// proxy sends the outbound request and streams the upstream's answer to
// w. It does for keyward what httputil.ReverseProxy did, minus the request
// and header clones (the outbound request is built fresh, see
// outboundRequest):
// hop-by-hop headers dropped both ways, ModifyResponse-style filtering and
// scrubbing, trailers announced and forwarded, streams flushed as they
// arrive, and a body that fails mid-copy aborts the response (panic with
// http.ErrAbortHandler under a server), so the client sees it cut rather
// than cleanly truncated. A Transport, unlike an http.Client, never
// follows redirects: a 3xx goes back to the client (Location scrubbed), so
// credentials are never resent to wherever an upstream points. 1xx
// responses are read and dropped by the transport.
func (g *Gateway) proxy(w http.ResponseWriter, r *http.Request, x *exchange) {
	out := g.outboundRequest(r, x)
	if out.Body != nil {
		defer out.Body.Close()
	}
	res, err := g.opts.Transport.RoundTrip(out)
	if err != nil {
		g.proxyError(w, x, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// keyward never asks for an upgrade (Upgrade is hop-by-hop).
		res.Body.Close()
		g.proxyError(w, x, errSwitchedProtocols)
		return
	}
	removeHopByHop(res.Header)
	if err := g.modifyResponse(res, x); err != nil {
		res.Body.Close()
		g.proxyError(w, x, err)
		return
	}
	h := w.Header()
	for k, vs := range res.Header {
		h[k] = append(h[k], vs...)
	}
	announced := len(res.Trailer)
	if announced > 0 {
		names := make([]string, 0, announced)
		for k := range res.Trailer {
			names = append(names, k)
		}
		h.Add("Trailer", strings.Join(names, ", "))
	}
	w.WriteHeader(res.StatusCode)
	if err := g.copyBody(w, res); err != nil {
		res.Body.Close()
		if r.Context().Value(http.ServerContextKey) != nil {
			panic(http.ErrAbortHandler)
		}
		return
	}
	res.Body.Close() // fills in the trailers' values, filtered by upstreamBody
	if len(res.Trailer) > 0 {
		// Chunked encoding is the only way to send trailers: flush so a
		// short body does not get a Content-Length instead.
		_ = http.NewResponseController(w).Flush()
		prefix := ""
		if len(res.Trailer) != announced {
			prefix = http.TrailerPrefix // trailers the upstream never announced
		}
		for k, vs := range res.Trailer {
			h[prefix+k] = append(h[prefix+k], vs...)
		}
	}
}

// blockedResponseHeaders are upstream headers never passed to the client:
// cookies belong to the upstream's site, the gateway answers CORS itself,
// and Alt-Svc would advertise the upstream's endpoints as ours.
var blockedResponseHeaders = []string{"Set-Cookie", "Set-Cookie2", "Alt-Svc"}

var errSwitchedProtocols = errors.New("upstream switched protocols unasked")

// outboundRequest builds the request sent upstream: the route's URL, and a
// fresh header map of the headers the route allows (minus any the client
// named in Connection) and the ones it sets. Secrets are written here and
// nowhere else. The client's trailers, forwarding headers and everything
// else stay behind.
func (g *Gateway) outboundRequest(r *http.Request, x *exchange) *http.Request {
	ep := x.ep
	out := r.WithContext(x)
	x.url = url.URL{Scheme: ep.upstream.Scheme, Host: ep.upstream.Host, Path: x.rawPath, RawPath: x.path, RawQuery: x.query}
	out.URL = &x.url
	out.Host = ""
	out.RequestURI = ""
	out.Close = false
	out.Trailer = nil // some upstreams merge trailers into the headers
	if out.ContentLength == 0 {
		out.Body = nil
	}
	in := r.Header
	h := make(http.Header, len(ep.headerAllow)+len(ep.headerSet)+1)
	for _, name := range ep.headerAllow {
		// A header the client's Connection names was meant for the
		// gateway, not the upstream.
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
		h[hs.name] = []string{string(hs.value.Expand(nil, x.params.Get, nil))}
	}
	if x.ctype != "" {
		h["Content-Type"] = []string{x.ctype}
	}
	if httpsyntax.HasToken(in["Te"], "trailers") {
		h["Te"] = teTrailers // for gRPC-style upstreams, as ReverseProxy did
	}
	out.Header = h
	return out
}

var teTrailers = []string{"trailers"}

// hopHeaders describe one connection, not the message (RFC 9110 7.6.1).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// removeHopByHop drops the connection headers of an upstream response and
// any header its Connection header names.
func removeHopByHop(h http.Header) {
	for _, line := range h["Connection"] {
		for name := range strings.SplitSeq(line, ",") {
			if name = textproto.TrimString(name); name != "" {
				delete(h, http.CanonicalHeaderKey(name))
			}
		}
	}
	for _, name := range hopHeaders {
		delete(h, name)
	}
}

// copyBody streams the response body to the client. A stream (an event
// stream, or a body of unknown length) is flushed after every read, so
// each piece reaches the client as it arrives.
func (g *Gateway) copyBody(w http.ResponseWriter, res *http.Response) error {
	var rc *http.ResponseController
	if res.ContentLength < 0 || isEventStream(res.Header["Content-Type"]) {
		rc = http.NewResponseController(w)
	}
	buf := buffers.Get()
	defer buffers.Put(buf)
	for {
		n, rerr := res.Body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if rc != nil {
				_ = rc.Flush()
			}
		}
		switch {
		case rerr == io.EOF:
			return nil
		case rerr != nil:
			if !errors.Is(rerr, context.Canceled) {
				g.opts.Logger.Error("proxy", slogString("error", g.scrub.String("reading the upstream body: "+rerr.Error())))
			}
			return rerr
		}
	}
}

// isEventStream reports whether a Content-Type is text/event-stream,
// whatever its parameters.
func isEventStream(ct []string) bool {
	if len(ct) == 0 {
		return false
	}
	mt, _, _ := strings.Cut(ct[0], ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}

// modifyResponse filters and scrubs the upstream's response before any of
// it is sent.
func (g *Gateway) modifyResponse(resp *http.Response, x *exchange) error {
	// Headers arrived: from now on the timer bounds the body's silence,
	// not its length, so a stream may run as long as it keeps talking.
	x.streaming.Store(true)
	x.timer.Reset(x.ep.idleTimeout)
	resp.Body = &upstreamBody{ReadCloser: resp.Body, x: x, resp: resp}
	x.upDur = g.opts.Now().Sub(x.upStart)
	if _, ok := resp.Header["Set-Cookie"]; ok {
		// The cookie is dropped below, but a response that set one is
		// about one client's session: never store it for others.
		cache.DoNotStore(resp.Request.Context())
	}
	g.filterHeaders(resp.Header)
	// Trailer names are announced with the headers; their values arrive
	// after the body, so they are filtered again when it is closed.
	g.filterHeaders(resp.Trailer)
	if err := g.scrubBody(resp); err != nil {
		return err
	}
	if err := g.transformResponse(resp, x); err != nil {
		return err
	}
	return nil
}

// filterHeaders removes what the client must not get from an upstream
// header or trailer map, and scrubs secrets from the rest.
func (g *Gateway) filterHeaders(h http.Header) {
	for _, name := range blockedResponseHeaders {
		delete(h, name)
	}
	for name := range h {
		if strings.HasPrefix(name, "Access-Control-") {
			delete(h, name)
		}
	}
	g.scrub.Headers(h)
}

// errEncoding is returned for a response body in an encoding keyward
// cannot decode, and so cannot scrub.
var errEncoding = errors.New("upstream response has a content encoding keyward cannot scrub")

// scrubBody masks secret values in the response body as it streams. A
// gzip or deflate body is decoded first (and sent on as identity); any
// other encoding is refused, because a secret inside it could not be
// found.
func (g *Gateway) scrubBody(resp *http.Response) error {
	if !g.scrub.Active() || resp.Body == nil || resp.Body == http.NoBody {
		return nil
	}
	var dec io.ReadCloser
	switch ce := contentEncoding(resp.Header); ce {
	case "", "identity":
		resp.Body = g.scrub.Reader(resp.Body)
		return nil
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			return fmt.Errorf("decoding gzip response: %w", err)
		}
		dec = zr
	case "deflate":
		zr, err := zlib.NewReader(resp.Body)
		if err != nil {
			return fmt.Errorf("decoding deflate response: %w", err)
		}
		dec = zr
	default:
		return errEncoding
	}
	resp.Body = g.scrub.Reader(decoded{dec, resp.Body})
	delete(resp.Header, "Content-Encoding")
	delete(resp.Header, "Content-Length")
	resp.ContentLength = -1
	return nil
}

// contentEncoding returns the response's single content coding, or
// "stacked" when there are several (over one or more header lines): only
// a single known coding can be decoded and scrubbed.
func contentEncoding(h http.Header) string {
	var coding string
	n := 0
	for _, line := range h.Values("Content-Encoding") {
		for c := range strings.SplitSeq(line, ",") {
			if c = strings.ToLower(strings.TrimSpace(c)); c != "" {
				coding = c
				n++
			}
		}
	}
	if n > 1 {
		return "stacked"
	}
	return coding
}

// decoded reads through a decompressor and closes the body under it.
type decoded struct {
	io.ReadCloser
	body io.Closer
}

func (d decoded) Close() error {
	d.ReadCloser.Close()
	return d.body.Close()
}

// proxyError answers a failed upstream exchange. The error text may hold
// the upstream URL, query secrets included, so it is scrubbed before it is
// logged and never sent to the client.
func (g *Gateway) proxyError(w http.ResponseWriter, x *exchange, err error) {
	x.upDur = g.opts.Now().Sub(x.upStart)
	var maxErr *http.MaxBytesError
	var runErr *transform.RunError
	switch {
	case errors.As(err, &runErr):
		g.transformFailed(w, x, err)
		return
	case errors.Is(err, errEncoding):
		g.fail(w, x, http.StatusBadGateway, "upstream_encoding", "the upstream response uses an encoding keyward cannot inspect")
	case errors.As(err, &maxErr):
		g.fail(w, x, http.StatusRequestEntityTooLarge, "body_too_large", "request body too large")
	case context.Cause(x) == errUpstreamTimeout:
		g.fail(w, x, http.StatusGatewayTimeout, "upstream_timeout", "the upstream did not answer in time")
	case context.Cause(x) == errUpstreamStalled:
		// The body stalled while the gateway still read it whole (a
		// response transform, a gzip header) and nothing was sent yet.
		g.fail(w, x, http.StatusGatewayTimeout, "upstream_stalled", "the upstream stopped sending its response")
	case errors.As(err, new(*deniedError)):
		g.fail(w, x, http.StatusBadGateway, "upstream_address_denied", "the upstream address is not allowed by the outbound policy")
	case x.clientGone():
		// The client went away; nobody reads an answer. 499 is nginx's
		// code for this, and operators know it.
		x.status = 499
		x.errCode = "client_closed_request"
	default:
		g.fail(w, x, http.StatusBadGateway, "upstream_unavailable", "the upstream could not be reached")
	}
	if x.status != 499 {
		// The path can hold a secret (some APIs put the key there), so the
		// logged target is scrubbed like the error text.
		target := x.ep.upstream.Scheme + "://" + x.ep.upstream.Host + x.path
		g.opts.Logger.LogAttrs(x, slog.LevelError, "upstream error", slogString("route", x.ep.name),
			slogString("upstream", g.scrub.String(target)), slogString("error", g.scrub.String(err.Error())))
	}
	if g.opts.Metrics != nil {
		g.opts.Metrics.UpstreamError(x.ep.name, x.errCode)
	}
	if x.status == 499 && x.parent.Value(http.ServerContextKey) != nil {
		// Nothing was written. A client that only half-closed is still
		// reading: ending the handler would send it an empty 200, so the
		// connection is aborted instead.
		panic(http.ErrAbortHandler)
	}
}

// upstreamBody is the upstream's response body as the gateway reads it.
// Every read restarts the exchange's timer, so silence longer than the
// route's idle_timeout cancels the exchange. Close filters the trailers:
// closing the body fills in their values (and creates the map for
// trailers the upstream never announced), and proxy copies them to the
// client only after that.
type upstreamBody struct {
	io.ReadCloser
	x    *exchange
	resp *http.Response
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.x.timer.Reset(b.x.ep.idleTimeout)
	return n, err
}

func (b *upstreamBody) Close() error {
	err := b.ReadCloser.Close()
	b.x.g.filterHeaders(b.resp.Trailer)
	return err
}
