package gateway

import (
	"compress/gzip"
	"compress/zlib"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"

	"github.com/keyward/keyward/internal/cache"
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

// build assembles the reverse proxy once per compiled config.
func (g *Gateway) build() {
	g.proxy = &httputil.ReverseProxy{
		Rewrite: g.rewrite,
		// A Transport, unlike an http.Client, never follows redirects: a
		// 3xx goes back to the client (Location scrubbed), so credentials
		// are never resent to wherever an upstream points.
		Transport:      noInformational{g.opts.Transport},
		BufferPool:     buffers,
		ModifyResponse: g.modifyResponse,
		ErrorHandler:   g.proxyError,
		ErrorLog:       log.New(logWriter{g}, "", 0),
	}
}

// rewrite builds the outbound request. Out arrives with hop-by-hop headers
// (and any header the client named in Connection) already removed; its
// header map is replaced wholesale, so only what the route allows or sets
// goes out. Secrets are written here and nowhere else.
func (g *Gateway) rewrite(pr *httputil.ProxyRequest) {
	x := pr.In.Context().Value(exchangeKey{}).(*exchange)
	ep := x.ep
	out := pr.Out
	x.url = url.URL{Scheme: ep.upstream.Scheme, Host: ep.upstream.Host, Path: x.rawPath, RawPath: x.path, RawQuery: x.query}
	out.URL = &x.url
	out.Host = ""

	h := make(http.Header, len(ep.headerAllow)+len(ep.headerSet)+1)
	for _, name := range ep.headerAllow {
		if v, ok := out.Header[name]; ok {
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
	if te, ok := out.Header["Te"]; ok {
		h["Te"] = te // ReverseProxy keeps "TE: trailers" for gRPC-style upstreams
	}
	out.Header = h
	// Trailers are headers too: a client's must not slip past the
	// allowlist (some upstreams merge them into the headers).
	out.Trailer = nil
}

// blockedResponseHeaders are upstream headers never passed to the client:
// cookies belong to the upstream's site, the gateway answers CORS itself,
// and Alt-Svc would advertise the upstream's endpoints as ours.
var blockedResponseHeaders = []string{"Set-Cookie", "Set-Cookie2", "Alt-Svc"}

// noInformational keeps 1xx responses (103 Early Hints) from being
// passed on. ReverseProxy forwards them from a client trace, past
// ModifyResponse, so their headers would skip the filters and the
// scrubber, and it clears the response's header map after each one,
// which drops the gateway's own headers (X-Request-Id, CORS). Without
// the hook the transport reads and discards them.
type noInformational struct{ http.RoundTripper }

func (t noInformational) RoundTrip(r *http.Request) (*http.Response, error) {
	if tr := httptrace.ContextClientTrace(r.Context()); tr != nil {
		tr.Got1xxResponse = nil
	}
	return t.RoundTripper.RoundTrip(r)
}

func (g *Gateway) modifyResponse(resp *http.Response) error {
	x := resp.Request.Context().Value(exchangeKey{}).(*exchange)
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
func (g *Gateway) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	x := r.Context().Value(exchangeKey{}).(*exchange)
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
	case context.Cause(r.Context()) == errUpstreamTimeout:
		g.fail(w, x, http.StatusGatewayTimeout, "upstream_timeout", "the upstream did not answer in time")
	case context.Cause(r.Context()) == errUpstreamStalled:
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
		g.opts.Logger.LogAttrs(r.Context(), slog.LevelError, "upstream error", slogString("route", x.ep.name),
			slogString("upstream", g.scrub.String(target)), slogString("error", g.scrub.String(err.Error())))
	}
	if g.opts.Metrics != nil {
		g.opts.Metrics.UpstreamError(x.ep.name, x.errCode)
	}
}

// upstreamBody is the upstream's response body as the gateway reads it.
// Every read restarts the exchange's timer, so silence longer than the
// route's idle_timeout cancels the exchange. Close filters the trailers:
// ReverseProxy closes the body, which fills in their values (and creates
// the map for trailers the upstream never announced), and only then
// copies them to the client.
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

// logWriter routes ReverseProxy's own error log through the scrubber.
type logWriter struct{ g *Gateway }

func (l logWriter) Write(p []byte) (int, error) {
	l.g.opts.Logger.Error("proxy", slogString("error", l.g.scrub.String(strings.TrimSpace(string(p)))))
	return len(p), nil
}
