// Package upstream is the gateway's HTTP/1.1 client: an http.RoundTripper
// built for forwarding (it plugs into httputil.ReverseProxy unchanged, and
// keyward's own forwarding uses it the same way).
//
// net/http's Transport runs two goroutines per connection (a reader and a
// writer) and hands every exchange between them over channels; on a 2-core
// machine that bookkeeping, not HTTP parsing, was the largest cost of a
// proxied request (docs/PERFORMANCE-NOTES.md: readLoop and writeLoop
// together ~33 % of CPU). This client does the exchange on the calling
// goroutine instead: the request is written with a pooled bufio.Writer (one
// write syscall for a bodiless request), the response is parsed by
// http.ReadResponse from a pooled bufio.Reader, and the response body hands
// the connection back to a per-host pool at EOF. The standard library's
// wire pieces keep the parsing exactly as strict as net/http's.
//
// What it keeps from net/http's Transport, because keyward relies on it:
// bodies stream as they arrive (a Read returns what the upstream has sent,
// so server-sent events are not held back); a cancelled request context
// aborts the exchange at once, with an error that wraps the context's
// cause; request bodies stream (chunked when the length is unknown);
// response headers are bounded; redirects are never followed (a
// RoundTripper returns them); proxy environment variables are ignored; a
// connection is pooled only when nothing is left to read on it, and is
// checked again each time it is taken from the pool, so bytes that answer
// no request never become the next request's response; a pooled
// connection the upstream closed as a request was sent is retried once on
// a fresh connection when that is safe.
//
// What it deliberately does not do:
//   - HTTP/2. TLS upstreams are offered only "http/1.1" in ALPN, so an
//     upstream that speaks h2 is spoken to in HTTP/1.1 (every h2 server on
//     the public internet also speaks HTTP/1.1).
//   - Expect: 100-continue. The body is sent with the headers; an interim
//     100 response is read and skipped. Request bodies are bounded by the
//     route's max_body, so waiting for permission would only add a round
//     trip.
//   - Compression. No Accept-Encoding is added: the gateway inspects and
//     scrubs bodies, so responses stay identity unless the client asked.
//   - Protocol upgrades (101 Switching Protocols), CONNECT and proxies.
//   - User info in the URL (it is not turned into an Authorization
//     header; the gateway sets credentials explicitly), and the
//     net/http/httptrace hooks other than Got1xxResponse (which
//     ReverseProxy uses to forward 103 Early Hints; keyward does not).
package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyward/keyward/internal/httpsyntax"
)

// Options configure a Transport. The zero value is usable: every field
// documents its default.
type Options struct {
	// DialContext opens the TCP connection to an upstream address
	// ("host:port"). If nil, a net.Dialer with DialTimeout and a 30 s TCP
	// keep-alive is used. It is the one place every outbound connection is
	// made, so an outbound address policy (refusing private ranges, say)
	// belongs here.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// DialTimeout bounds connecting to an upstream, TLS handshake
	// included. Default 10 s.
	DialTimeout time.Duration
	// TLSClientConfig configures TLS for https upstreams. If nil, the
	// system roots and crypto/tls defaults are used. It is cloned;
	// NextProtos is replaced by ["http/1.1"] and ServerName, when empty,
	// is the upstream's host name.
	TLSClientConfig *tls.Config
	// MaxIdleConnsPerHost bounds the keep-alive connections kept per
	// upstream host. Default 512, the gateway's stdlib setting: under load
	// a smaller pool turns into a new TCP (and TLS) handshake for most
	// requests. Negative keeps none.
	MaxIdleConnsPerHost int
	// MaxConnsPerHost bounds the connections per upstream host, busy and
	// idle; a request beyond it waits for one to come free (or for its
	// context to end). Default 0: no limit.
	MaxConnsPerHost int
	// IdleConnTimeout closes keep-alive connections unused for this long.
	// Default 90 s.
	IdleConnTimeout time.Duration
	// MaxResponseHeaderBytes bounds the status line and headers of a
	// response (and of any 1xx responses before it). Default 64 KiB.
	MaxResponseHeaderBytes int64
}

const (
	defaultDialTimeout     = 10 * time.Second
	defaultMaxIdlePerHost  = 512
	defaultIdleConnTimeout = 90 * time.Second
	defaultMaxHeaderBytes  = 64 << 10
	// max1xx bounds the interim responses read before the final one, as
	// net/http does, so an upstream cannot keep the exchange in 1xx.
	max1xx = 5
)

// Transport is an HTTP/1.1 http.RoundTripper with a per-host pool of
// keep-alive connections. It is safe for concurrent use. Its pool is what
// makes connections outlive requests, so one Transport serves as long as
// the rules its dialer enforces hold (internal/outbound keeps one per
// outbound policy, and retires it when a reload changes the policy).
type Transport struct {
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	dialTimeout time.Duration
	tlsConfig   *tls.Config
	maxIdle     int
	maxConns    int
	idleTimeout time.Duration
	maxHeader   int64
	now         func() time.Time // injected by tests
	retired     atomic.Bool      // set by Retire: connections are no longer pooled

	mu    sync.RWMutex
	hosts map[hostKey]*hostPool
}

var _ http.RoundTripper = (*Transport)(nil)

// New returns a Transport configured by opts, defaults applied.
func New(opts Options) *Transport {
	t := &Transport{
		dial:        opts.DialContext,
		dialTimeout: opts.DialTimeout,
		maxIdle:     opts.MaxIdleConnsPerHost,
		maxConns:    opts.MaxConnsPerHost,
		idleTimeout: opts.IdleConnTimeout,
		maxHeader:   opts.MaxResponseHeaderBytes,
		now:         time.Now,
		hosts:       map[hostKey]*hostPool{},
	}
	if t.dialTimeout <= 0 {
		t.dialTimeout = defaultDialTimeout
	}
	if t.dial == nil {
		d := &net.Dialer{Timeout: t.dialTimeout, KeepAlive: 30 * time.Second}
		t.dial = d.DialContext
	}
	switch {
	case t.maxIdle == 0:
		t.maxIdle = defaultMaxIdlePerHost
	case t.maxIdle < 0:
		t.maxIdle = 0
	}
	if t.maxConns < 0 {
		t.maxConns = 0
	}
	if t.idleTimeout <= 0 {
		t.idleTimeout = defaultIdleConnTimeout
	}
	if t.maxHeader <= 0 {
		t.maxHeader = defaultMaxHeaderBytes
	}
	if opts.TLSClientConfig != nil {
		t.tlsConfig = opts.TLSClientConfig.Clone()
	} else {
		t.tlsConfig = &tls.Config{}
	}
	// Only HTTP/1.1 is spoken; offering h2 would let the upstream pick a
	// protocol this client cannot read.
	t.tlsConfig.NextProtos = []string{"http/1.1"}
	return t
}

// CloseIdleConnections closes every pooled connection not carrying an
// exchange. Connections in use are unaffected and are pooled again when
// their exchange ends.
func (t *Transport) CloseIdleConnections() {
	t.mu.RLock()
	pools := make([]*hostPool, 0, len(t.hosts))
	for _, p := range t.hosts {
		pools = append(pools, p)
	}
	t.mu.RUnlock()
	for _, p := range pools {
		p.closeIdle()
	}
}

// Retire ends pooling on t, for a Transport being replaced (an outbound
// policy that a reload changed): idle connections are closed now, and a
// connection carrying an exchange is closed when the exchange ends
// instead of being pooled. Requests may still be sent; each then dials a
// connection of its own. Retire is safe to call more than once.
func (t *Transport) Retire() {
	t.retired.Store(true)
	t.CloseIdleConnections()
}

// RoundTrip sends req and returns the upstream's response once its headers
// have arrived; the body streams from the connection as the caller reads
// it. It never follows redirects. Closing the response body before EOF
// closes the connection (the rest of the body is unknown), and reading it
// to EOF returns the connection to the pool when HTTP allows reuse.
//
// A request whose context ends aborts the exchange, dialing and reading
// included; the error then wraps the context's cause and its Err, so
// errors.Is(err, context.Canceled) tells a client that went away from a
// deadline.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := validate(req); err != nil {
		closeBody(req)
		return nil, notSentError{err}
	}
	ctx := req.Context()
	if ctx.Err() != nil {
		closeBody(req)
		return nil, notSentError{abortError(ctx, nil)}
	}
	p := t.pool(req.URL.Scheme, req.URL.Host)
	body := req.Body
	if body == http.NoBody {
		body = nil
	}
	for retried := false; ; retried = true {
		c, err := p.get(ctx, retried)
		if err != nil {
			closeReader(body)
			return nil, notSentError{err}
		}
		resp, err := t.exchange(ctx, c, req, body)
		if err == nil {
			return resp, nil
		}
		var stale *staleConnError
		if !errors.As(err, &stale) {
			return nil, err
		}
		if retried || !replayable(req) {
			return nil, stale.err
		}
		// The upstream closed a pooled connection before answering (it
		// read nothing we can know of and sent nothing), so the request
		// is sent again, once, on a connection dialed for it.
		if body != nil {
			if body, err = req.GetBody(); err != nil {
				return nil, fmt.Errorf("upstream: rewinding request body for a retry: %w", err)
			}
		}
	}
}

func validate(req *http.Request) error {
	switch {
	case req.URL == nil:
		return errors.New("upstream: request has no URL")
	case req.URL.Scheme != "http" && req.URL.Scheme != "https":
		return fmt.Errorf("upstream: unsupported URL scheme %q", req.URL.Scheme)
	case req.URL.Host == "":
		return errors.New("upstream: request URL has no host")
	case req.ContentLength > 0 && (req.Body == nil || req.Body == http.NoBody):
		return fmt.Errorf("upstream: request ContentLength is %d but there is no body", req.ContentLength)
	}
	return nil
}

// replayable reports whether req may be sent a second time after a pooled
// connection turned out to be closed: the method is idempotent (RFC 9110
// §9.2.2; PUT and DELETE are left out, like net/http does, because many
// APIs do not honour their idempotency) or the request carries an
// idempotency key, and its body is empty or can be produced again.
func replayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, a := req.Header["Idempotency-Key"]
	_, b := req.Header["X-Idempotency-Key"]
	return a || b
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

func closeReader(r io.ReadCloser) {
	if r != nil {
		_ = r.Close()
	}
}

// exchange sends req (with body, which may differ from req.Body on a retry)
// on c and reads the response headers.
func (t *Transport) exchange(ctx context.Context, c *conn, req *http.Request, body io.ReadCloser) (*http.Response, error) {
	var stop func() bool
	if ctx.Done() != nil {
		// c.abort is a method value made once per connection, so
		// registering it allocates no closure per request.
		stop = context.AfterFunc(ctx, c.abort)
	}
	c.attach(t.maxHeader)
	wantsClose := req.Close || httpsyntax.HasToken(req.Header["Connection"], "close")

	bw := getWriter(c.nc)
	err := writeHead(bw, req, body, wantsClose)
	var wrote chan error
	if err == nil {
		if body == nil {
			err = bw.Flush()
			putWriter(bw)
		} else {
			// The body is written by its own goroutine so that an upstream
			// answering before it has read the whole body (413, 401) is
			// heard, and a slow upload cannot block the response.
			wrote = make(chan error, 1)
			go writeBody(c, bw, req, body, wrote)
		}
	} else {
		putWriter(bw)
		closeReader(body)
		c.close()
		if stop != nil {
			stop()
		}
		return nil, err
	}

	var resp *http.Response
	if err == nil {
		resp, err = t.readResponse(ctx, c, req)
	}
	if err != nil {
		c.close()
		if stop != nil {
			stop()
		}
		if wrote != nil {
			select {
			case werr := <-wrote:
				var bre *bodyReadError
				if errors.As(werr, &bre) && ctx.Err() == nil {
					return nil, bre
				}
			default:
			}
		}
		switch {
		case ctx.Err() != nil:
			return nil, abortError(ctx, err)
		case c.reused && c.nread == 0:
			return nil, &staleConnError{fmt.Errorf("upstream: %s closed a pooled connection: %w", c.pool.addr, err)}
		}
		return nil, fmt.Errorf("upstream: exchange with %s: %w", c.pool.addr, err)
	}

	b := &bodyReader{c: c, ctx: ctx, stop: stop, wrote: wrote}
	// Reuse needs the end of this response to be known: a length, chunked
	// framing, or no body at all (HEAD, 204, 304); a body that runs to
	// the close of the connection (HTTP/1.0 style) ends it.
	framed := resp.ContentLength >= 0 || isChunked(resp.TransferEncoding) || resp.Body == http.NoBody
	b.reusable = !resp.Close && !wantsClose && framed
	if resp.Body == http.NoBody {
		b.finish(true, nil)
		return resp, nil
	}
	b.rc = resp.Body
	resp.Body = b
	return resp, nil
}

// readResponse reads the final response, skipping (and reporting to an
// httptrace.ClientTrace) up to max1xx interim ones.
func (t *Transport) readResponse(ctx context.Context, c *conn, req *http.Request) (*http.Response, error) {
	for n := 0; ; n++ {
		resp, err := http.ReadResponse(c.br, req)
		if err != nil {
			if c.readLimit <= 0 {
				return nil, fmt.Errorf("response headers exceeded %d bytes", t.maxHeader)
			}
			return nil, err
		}
		for name := range resp.Header {
			if !httpsyntax.IsToken(name) {
				// textproto accepts a space in a response header name
				// (golang/go#5022, for old servers); passed on, it would
				// reach clients as a header they may split differently.
				return nil, fmt.Errorf("malformed response header name %q", name)
			}
		}
		code := resp.StatusCode
		if code >= 200 {
			c.readLimit = 1<<63 - 1
			return resp, nil
		}
		if code == http.StatusSwitchingProtocols {
			return nil, errors.New("101 Switching Protocols is not supported")
		}
		if n == max1xx {
			return nil, errors.New("too many 1xx informational responses")
		}
		if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
				return nil, err
			}
		}
	}
}

// staleConnError marks a failure on a reused connection before a single
// response byte arrived: the upstream had closed it while it sat idle.
type staleConnError struct{ err error }

func (e *staleConnError) Error() string { return e.err.Error() }
func (e *staleConnError) Unwrap() error { return e.err }

// abortError is the error of an exchange cut short by its context. It wraps
// the cause (the gateway's "upstream response timeout", say) and the
// context's Err, so both errors.Is(err, cause) and errors.Is(err,
// context.Canceled) hold.
func abortError(ctx context.Context, err error) error {
	cause, cerr := context.Cause(ctx), ctx.Err()
	if err == nil || errors.Is(err, cause) {
		if cause == cerr {
			return fmt.Errorf("upstream: exchange aborted: %w", cause)
		}
		return fmt.Errorf("upstream: exchange aborted: %w (%w)", cause, cerr)
	}
	if cause == cerr {
		return fmt.Errorf("upstream: exchange aborted: %w (%v)", cause, err)
	}
	return fmt.Errorf("upstream: exchange aborted: %w (%w; %v)", cause, cerr, err)
}

func isChunked(te []string) bool { return len(te) > 0 && te[0] == "chunked" }

// notSentError marks a failure before any byte of the request was
// written: no connection could be had (dial, TLS, the outbound policy, or
// the request ended while it waited for one).
type notSentError struct{ error }

func (e notSentError) Unwrap() error { return e.error }

// NotSent reports whether err, from RoundTrip, failed before any of the
// request reached the upstream: such a request cost the upstream nothing
// (a budget need not be charged for it).
func NotSent(err error) bool {
	var ns notSentError
	return errors.As(err, &ns)
}
