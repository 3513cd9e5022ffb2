package listener

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"
)

// GuardTLS is Guard for a listener whose clients speak TLS. Each
// connection takes a slot when accepted (the one limit covers handshakes,
// HTTP/1.1 and HTTP/2 connections), then completes its handshake on its
// own goroutine, within Options.HandshakeTimeout, and goes by the protocol
// ALPN chose:
//
//   - "http/1.1", or none: Accept returns it behind the framing guard,
//     which checks the decrypted stream; the connection's
//     ConnectionState gives the server the TLS state for the request;
//   - "h2": H2's Accept returns the *tls.Conn itself, for net/http's
//     HTTP/2 server (it serves HTTP/2 only on a *tls.Conn);
//   - any other ("acme-tls/1": the handshake alone answered an ACME
//     TLS-ALPN-01 challenge): it is closed.
//
// cfg's NextProtos says what a client may choose.
func GuardTLS(ln net.Listener, cfg *tls.Config, opts Options) *Listener {
	l := Guard(ln, opts)
	s := &split{l: l, cfg: cfg, h1: make(chan net.Conn), h2: make(chan net.Conn), failed: make(chan struct{})}
	s.h2l = &h2Listener{s: s, closed: make(chan struct{})}
	l.tls = s
	return l
}

// H2 returns the listener of the connections that negotiated HTTP/2, on a
// listener from GuardTLS; nil on a plaintext one. Closing it ends only its
// own Accept (h2 connections are closed from then on); Close on l closes
// both.
func (l *Listener) H2() net.Listener {
	if l.tls == nil {
		return nil
	}
	return l.tls.h2l
}

// split accepts TLS connections for both sides: one goroutine takes them
// from the kernel (started by the first Accept of either side), one per
// connection does its handshake and hands it to its side.
type split struct {
	l      *Listener
	cfg    *tls.Config
	h1, h2 chan net.Conn
	h2l    *h2Listener
	start  sync.Once
	failed chan struct{} // closed when the kernel listener failed
	err    error         // its error, set before failed is closed
	// Test hook: called with each handshake's connection state.
	onHandshake func(tls.ConnectionState)
}

// accept returns the next connection handed to side, or the listener's
// error once it is closed or failed, or once closed is (a side's own
// Close).
func (s *split) accept(side chan net.Conn, closed <-chan struct{}) (net.Conn, error) {
	s.start.Do(func() { go s.loop() })
	select {
	case c := <-side:
		return c, nil
	case <-s.l.done:
		return nil, s.closedErr()
	case <-closed:
		return nil, s.closedErr()
	case <-s.failed:
		return nil, s.err
	}
}

func (s *split) closedErr() error {
	return &net.OpError{Op: "accept", Net: s.l.Addr().Network(), Addr: s.l.Addr(), Err: net.ErrClosed}
}

// loop takes connections from the kernel, with a slot each, until the
// listener fails. Out of file descriptors, it waits a moment instead of
// spinning, as net/http does.
func (s *split) loop() {
	var backoff time.Duration
	for {
		c, err := s.l.acceptSlot()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
					continue
				case <-s.l.done:
				}
			}
			s.err = err
			close(s.failed)
			return
		}
		backoff = 0
		go s.handshake(&slotConn{Conn: c, l: s.l})
	}
}

// handshake completes c's TLS handshake and hands it to its side.
func (s *split) handshake(c *slotConn) {
	lim := s.l.limits.Load()
	tc := tls.Server(c, s.cfg)
	ctx, cancel := context.WithTimeout(context.Background(), lim.handshake)
	defer cancel()
	_ = c.SetDeadline(time.Now().Add(lim.handshake))
	if err := tc.HandshakeContext(ctx); err != nil {
		if lim.handshakeError != nil {
			lim.handshakeError(c.RemoteAddr(), err)
		}
		c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	state := tc.ConnectionState()
	if s.onHandshake != nil {
		s.onHandshake(state)
	}
	var side chan net.Conn
	var out net.Conn
	switch state.NegotiatedProtocol {
	case "", "http/1.1":
		side, out = s.h1, s.l.wrap(tc, false)
	case "h2":
		side, out = s.h2, tc
	default:
		tc.Close()
		return
	}
	var closed <-chan struct{}
	if side == s.h2 {
		closed = s.h2l.closed
	}
	select {
	case side <- out:
	case <-s.l.done:
		out.Close()
	case <-closed:
		out.Close()
	}
}

// slotConn is a TLS connection's socket: closing it frees its slot, once.
type slotConn struct {
	net.Conn
	l    *Listener
	once sync.Once
	err  error
}

func (c *slotConn) Close() error {
	c.once.Do(func() {
		c.err = c.Conn.Close()
		c.l.release()
	})
	return c.err
}

// h2Listener is the HTTP/2 side of a TLS listener.
type h2Listener struct {
	s      *split
	once   sync.Once
	closed chan struct{}
}

// Accept returns the next connection that negotiated h2.
func (h *h2Listener) Accept() (net.Conn, error) { return h.s.accept(h.s.h2, h.closed) }

// Close ends this side's Accept; connections that negotiate h2 from then
// on are closed after their handshake.
func (h *h2Listener) Close() error {
	h.once.Do(func() { close(h.closed) })
	return nil
}

// Addr is the listener's address.
func (h *h2Listener) Addr() net.Addr { return h.s.l.Addr() }

// CheckHTTP2 applies to a request that came over HTTP/2 the guard's rules
// that still mean something there: the request target (:path) must be
// what an HTTP/1.1 request line may carry (RFC 9112 section 3.2: no
// fragment, no raw space or control character, valid percent escapes in
// the path), and no header name may contain an underscore (some servers
// read X_Forwarded_For as X-Forwarded-For), and at most maxHeaders header
// lines. HTTP/2's binary framing makes the rest of the guard's rules moot,
// and net/http's HTTP/2 server checks header syntax itself. It returns the
// refusal's status, JSON error code and message, or status 0.
func CheckHTTP2(r *http.Request, maxHeaders int) (status int, code, msg string) {
	if v := checkTarget([]byte(r.Method), []byte(r.RequestURI)); v != nil {
		return v.status, v.code, v.msg
	}
	lines := 0
	for name, vs := range r.Header {
		if strings.IndexByte(name, '_') >= 0 {
			return errUnderscore.status, errUnderscore.code, errUnderscore.msg
		}
		lines += len(vs)
	}
	if maxHeaders > 0 && lines > maxHeaders {
		return errTooManyHeaders.status, errTooManyHeaders.code, errTooManyHeaders.msg
	}
	return 0, "", ""
}
