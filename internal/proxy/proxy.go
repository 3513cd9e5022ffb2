// Package proxy forwards one outbound request and relays the upstream's
// answer to the client. It does for keyward what httputil.ReverseProxy
// does, minus the request and header clones (the gateway builds the
// outbound request fresh, secrets included, and hands it over):
//
//	round trip → drop hop-by-hop headers → filter and scrub headers →
//	decode the body → the route's response hook → write the head →
//	stream the body through the scrubber (flushing streams) → trailers
//
// Bodies are masked as they are written (scrub.Writer): what the client
// sees of a stream, its chunk boundaries and their timing, never depends
// on whether some text is the start of a secret.
//
// It never follows redirects: a 3xx goes back to the client (Location
// scrubbed), so credentials are never resent to wherever an upstream
// points. Every failure is returned as an *Error that says what failed;
// the gateway turns it into the client's answer in one place.
//
// One timeout model covers the exchange (see Exchange): the wait for the
// upstream's headers, then the upstream body's silence. Time spent writing
// to a slow client is not upstream silence: the idle timer is stopped while
// the client is written to (the server's write timeout bounds that side).
package proxy

import (
	"compress/gzip"
	"compress/zlib"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyward/keyward/internal/abort"
	"github.com/keyward/keyward/internal/outbound"
	"github.com/keyward/keyward/internal/scrub"
	"github.com/keyward/keyward/internal/upstream"
)

// Proxy forwards requests for one compiled config. It is immutable and
// safe for concurrent use.
type Proxy struct {
	// Transport sends the outbound request. It must not be nil.
	Transport http.RoundTripper
	// Scrubber masks secrets in response headers, trailers and bodies. If
	// nil, nothing is scrubbed.
	Scrubber *scrub.Scrubber
	// Now is the clock. If nil, time.Now is used.
	Now func() time.Time
}

func (p *Proxy) now() time.Time {
	if p.Now == nil {
		return time.Now()
	}
	return p.Now()
}

// ResponseHook rewrites a response after its headers were filtered and its
// body decoded and scrubbed, before any of it is sent: the route's
// response transform. An error it returns is returned by Forward as is.
type ResponseHook interface {
	ModifyResponse(res *http.Response) error
}

// Exchange is the state of one forwarded request, and the outbound
// request's context: it ends when the client's request does, or when a
// timeout fires (Cause says which). Embed it by value in per-request state
// so that forwarding allocates no context struct of its own.
type Exchange struct {
	context.Context // set by Begin

	parent    context.Context
	cancel    context.CancelCauseFunc
	timer     *time.Timer
	idle      time.Duration
	streaming atomic.Bool
	body      clientBody
	start     time.Time
	// Duration is how long the upstream took to answer with its headers
	// (or to fail), for the access log and metrics.
	Duration time.Duration
	// UpstreamStatus is the upstream's status code, 0 until (or unless)
	// its response head arrived.
	UpstreamStatus int
	// SetCookie is set when the upstream's response set a cookie (in its
	// headers or trailers). The cookie is never passed on, but such a
	// response is about one client's session and must not be cached.
	SetCookie bool
}

// Begin starts the exchange as a child of parent (the client's request
// context): the upstream has timeout to answer with its headers, and its
// body may then be silent for at most idle between reads.
func (x *Exchange) Begin(parent context.Context, timeout, idle time.Duration) {
	x.parent = parent
	x.idle = idle
	ctx, cancel := context.WithCancelCause(parent)
	x.Context, x.cancel = ctx, cancel
	x.timer = time.AfterFunc(timeout, func() {
		if x.streaming.Load() {
			cancel(ErrStalled)
			return
		}
		cancel(ErrTimeout)
	})
}

// End releases the exchange's timer and context.
func (x *Exchange) End() {
	if x.timer != nil {
		x.timer.Stop()
	}
	if x.cancel != nil {
		x.cancel(nil)
	}
}

// ClientGone reports whether the client's own request ended (it went
// away), as opposed to a timeout of the exchange.
func (x *Exchange) ClientGone() bool { return x.parent != nil && x.parent.Err() != nil }

// Cancel causes of an exchange.
var (
	// ErrTimeout: the upstream's headers took longer than the timeout.
	ErrTimeout = errors.New("upstream response timeout")
	// ErrStalled: the upstream's body was silent for longer than the idle
	// timeout.
	ErrStalled = errors.New("upstream response body stalled")
)

// Kind classifies a failed exchange; the gateway maps each kind to one
// status and error code.
type Kind int

// The kinds of failure.
const (
	// Unavailable: the upstream could not be reached or broke the
	// exchange (502 upstream_unavailable).
	Unavailable Kind = iota
	// Timeout: no response headers within the route's timeout (504
	// upstream_timeout).
	Timeout
	// Stalled: the body was silent past the route's idle timeout (504
	// upstream_stalled).
	Stalled
	// Denied: the upstream name resolved to an address the outbound
	// policy denies (502 upstream_address_denied).
	Denied
	// Encoding: the body has a content coding keyward cannot decode, and
	// so cannot scrub (502 upstream_encoding).
	Encoding
	// ClientGone: the client went away (499).
	ClientGone
	// ClientBody: reading the client's request body failed: malformed
	// (400), too slow (408) or too large (413). The client's fault, not
	// the upstream's.
	ClientBody
	// Hook: the ResponseHook failed; Err is its error.
	Hook
	// Shutdown: the server's shutdown drain ran out of time and ended
	// the request (a routine stop, not the client or the upstream).
	Shutdown
)

// Error is a failed exchange.
type Error struct {
	Kind Kind
	// Committed is set when the response's head was already written: the
	// client cannot get an error answer any more, only a cut connection.
	Committed bool
	// Err is the cause, for the log. It may hold the upstream URL and
	// must be scrubbed before it is written anywhere.
	Err error
	// Sent is false when the request never reached the upstream (no
	// connection could be had): it cost the upstream nothing.
	Sent bool
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// blockedResponseHeaders are upstream headers never passed to the client:
// cookies belong to the upstream's site, the gateway answers CORS itself,
// and Alt-Svc would advertise the upstream's endpoints as ours.
var blockedResponseHeaders = []string{"Set-Cookie", "Set-Cookie2", "Alt-Svc"}

var errSwitchedProtocols = errors.New("upstream switched protocols unasked")

// errEncoding is returned for a response body in an encoding keyward
// cannot decode, and so cannot scrub.
var errEncoding = errors.New("upstream response has a content encoding keyward cannot scrub")

// Forward sends out (whose context must be x, begun) and streams the
// upstream's answer to w. A nil hook leaves the response as filtered.
// A body that fails mid-copy returns an *Error with Committed set: the
// caller must cut the connection, so the client sees a broken response
// rather than a cleanly truncated one.
func (p *Proxy) Forward(w http.ResponseWriter, out *http.Request, x *Exchange, hook ResponseHook) error {
	x.start = p.now()
	if out.Body != nil {
		x.body = clientBody{ReadCloser: out.Body}
		out.Body = &x.body
		defer out.Body.Close()
	}
	res, err := p.Transport.RoundTrip(out)
	if err != nil {
		e := p.fail(x, err, false)
		e.Sent = !upstream.NotSent(err)
		return e
	}
	x.UpstreamStatus = res.StatusCode
	if res.StatusCode == http.StatusSwitchingProtocols {
		// keyward never asks for an upgrade (Upgrade is hop-by-hop).
		res.Body.Close()
		return p.fail(x, errSwitchedProtocols, false)
	}
	removeHopByHop(res.Header)
	if err := p.modifyResponse(res, x, hook); err != nil {
		res.Body.Close()
		return p.fail(x, err, false)
	}
	stream := res.ContentLength < 0 || isEventStream(res.Header["Content-Type"])
	buf := buffers.Get()
	defer buffers.Put(buf)
	var n int
	var rerr error
	if !stream {
		// A body of known length is read before the head is sent, up to
		// one buffer (most bodies whole): an upstream that breaks off or
		// stalls within it is answered with a JSON error, not an empty
		// or cut response. A stream's head goes out at once: a client
		// waits on it (EventSource's open) before the first event.
		n, rerr = readFull(res.Body, buf)
		if rerr != nil && rerr != io.EOF {
			res.Body.Close()
			return p.fail(x, fmt.Errorf("reading the upstream body: %w", rerr), false)
		}
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
	var flush func() error
	if stream {
		flush = http.NewResponseController(w).Flush
	}
	sw := p.Scrubber.NewWriter(w, flush)
	err = copyBody(sw, res.Body, buf, n, rerr, stream)
	if cerr := sw.Close(); err == nil && cerr != nil {
		err = clientError{cerr}
	}
	if err != nil {
		res.Body.Close()
		return p.fail(x, err, true)
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
	return nil
}

// readFull reads into buf until it is full, the body ends (io.EOF) or a
// read fails.
func readFull(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// clientError is a failed write to the client: it went away, or stopped
// reading (the server's write timeout).
type clientError struct{ error }

func (e clientError) Unwrap() error { return e.error }

// fail classifies a failed exchange.
func (p *Proxy) fail(x *Exchange, err error, committed bool) *Error {
	if !committed {
		x.Duration = p.now().Sub(x.start)
	}
	e := &Error{Kind: Unavailable, Committed: committed, Err: err, Sent: true}
	switch cause := context.Cause(x); {
	case x.body.err != nil:
		// The client's body failed while the upstream was reading it: the
		// transport's error is a consequence.
		e.Kind, e.Err = ClientBody, x.body.err
	case errors.As(err, new(clientError)):
		e.Kind = ClientGone
	case cause == ErrTimeout:
		e.Kind = Timeout
	case cause == ErrStalled:
		e.Kind = Stalled
	case x.parent != nil && context.Cause(x.parent) == abort.ErrShutdown:
		e.Kind = Shutdown
	case x.ClientGone():
		e.Kind = ClientGone
	case errors.Is(err, errEncoding):
		e.Kind = Encoding
	case errors.As(err, new(*outbound.DeniedError)):
		e.Kind = Denied
	case isHookError(err):
		e.Kind = Hook
	}
	return e
}

// hookError marks an error returned by the ResponseHook.
type hookError struct{ error }

func (e hookError) Unwrap() error { return e.error }

func isHookError(err error) bool {
	var h hookError
	return errors.As(err, &h)
}

// HookError returns the hook's own error from an *Error of kind Hook.
func (e *Error) HookError() error {
	var h hookError
	if errors.As(e.Err, &h) {
		return h.error
	}
	return e.Err
}

// clientBody records why reading the client's body failed, so a broken or
// slow upload is not mistaken for an upstream failure.
type clientBody struct {
	io.ReadCloser
	err error
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

// hopHeaders describe one connection, not the message (RFC 9110 7.6.1).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// HopHeaders returns the connection headers a route can neither allow nor
// set.
func HopHeaders() []string { return append([]string(nil), hopHeaders...) }

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

// copyBody sends the body to the client through the scrubbing writer,
// starting with the first n bytes already in buf (and the error that
// ended that read). A stream is flushed after every read, so each piece
// reaches the client as it arrives.
func copyBody(w *scrub.Writer, body io.Reader, buf []byte, n int, rerr error, stream bool) error {
	for {
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return clientError{fmt.Errorf("writing to the client: %w", err)}
			}
			if stream {
				if err := w.Flush(); err != nil {
					return clientError{fmt.Errorf("flushing to the client: %w", err)}
				}
			}
		}
		switch {
		case rerr == io.EOF:
			return nil
		case rerr != nil:
			return fmt.Errorf("reading the upstream body: %w", rerr)
		}
		n, rerr = body.Read(buf)
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
func (p *Proxy) modifyResponse(res *http.Response, x *Exchange, hook ResponseHook) error {
	// Headers arrived: from now on the timer bounds the body's silence,
	// not its length, so a stream may run as long as it keeps talking.
	x.streaming.Store(true)
	x.timer.Stop()
	x.Duration = p.now().Sub(x.start)
	res.Body = &upstreamBody{ReadCloser: res.Body, x: x, res: res, p: p}
	if _, ok := res.Header["Set-Cookie"]; ok {
		x.SetCookie = true
	}
	p.filterHeaders(res.Header)
	// Trailer names are announced with the headers; their values arrive
	// after the body, so they are filtered again when it is closed.
	p.filterHeaders(res.Trailer)
	if err := p.decodeBody(res); err != nil {
		return err
	}
	if hook != nil {
		if err := hook.ModifyResponse(res); err != nil {
			return hookError{err}
		}
	}
	return nil
}

// filterHeaders removes what the client must not get from an upstream
// header or trailer map, and scrubs secrets from the rest.
func (p *Proxy) filterHeaders(h http.Header) {
	for _, name := range blockedResponseHeaders {
		delete(h, name)
	}
	for name := range h {
		if strings.HasPrefix(name, "Access-Control-") {
			delete(h, name)
		}
	}
	p.Scrubber.Headers(h)
}

// decodeBody decodes a gzip or deflate body (sent on as identity) so that
// the scrubber can read it; any other encoding is refused, because a
// secret inside it could not be found. Masking itself happens as the
// body is written (scrub.Writer).
func (p *Proxy) decodeBody(res *http.Response) error {
	if !p.Scrubber.Active() || res.Body == nil || res.Body == http.NoBody {
		return nil
	}
	var dec io.ReadCloser
	switch ce := contentEncoding(res.Header); ce {
	case "", "identity":
		return nil
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(res.Body)
		if err != nil {
			return fmt.Errorf("decoding gzip response: %w", err)
		}
		dec = zr
	case "deflate":
		zr, err := zlib.NewReader(res.Body)
		if err != nil {
			return fmt.Errorf("decoding deflate response: %w", err)
		}
		dec = zr
	default:
		return errEncoding
	}
	res.Body = decoded{dec, res.Body}
	delete(res.Header, "Content-Encoding")
	delete(res.Header, "Content-Length")
	res.ContentLength = -1
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

// upstreamBody is the upstream's response body as the gateway reads it.
// The idle timer runs only while a read waits for the upstream, so
// silence longer than the route's idle timeout cancels the exchange, and
// time spent writing to a slow client does not count. Close filters the
// trailers: closing the body fills in their values (and creates the map
// for trailers the upstream never announced), and Forward copies them to
// the client only after that.
type upstreamBody struct {
	io.ReadCloser
	x   *Exchange
	res *http.Response
	p   *Proxy
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	b.x.timer.Reset(b.x.idle)
	n, err := b.ReadCloser.Read(p)
	b.x.timer.Stop()
	return n, err
}

func (b *upstreamBody) Close() error {
	err := b.ReadCloser.Close()
	if _, ok := b.res.Trailer["Set-Cookie"]; ok {
		b.x.SetCookie = true
	}
	b.p.filterHeaders(b.res.Trailer)
	return err
}
