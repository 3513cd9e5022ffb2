// Package listener guards keyward's public socket: it bounds how many client
// connections are open and checks the framing of every HTTP/1.1 request
// before the HTTP server (internal/http1) sees a byte of it.
//
// Go's request parser is lenient where a front end may be strict: given both
// Content-Length and Transfer-Encoding it drops Content-Length and keeps the
// connection open; it accepts folded header lines and bare LF line endings.
// When a load balancer in front of keyward frames the same bytes another way,
// the difference is a smuggled request (RFC 9112 §11.2). The guard parses the
// byte stream itself, holds each request head until it is complete and valid,
// tracks the body that head implies so it knows where the next request
// starts, and on any ambiguity answers 400 (431 for oversized heads) with
// Connection: close and closes the connection. Valid bytes pass unmodified.
//
// The guard speaks HTTP/1.x. HTTP/2 with prior knowledge is refused. On a
// TLS listener (GuardTLS) it checks the decrypted stream of the connections
// that negotiated HTTP/1.1, after the handshake; those that negotiated h2 by
// ALPN bypass it and go, as *tls.Conn, to net/http's HTTP/2 server, whose
// binary framing has no such ambiguity (its own limits are tested in
// test/security). One connection limit covers both.
//
// A server behind the guard reads requests with Read and watches for a
// client hanging up with WatchRead (internal/http1 does), so that a bad
// head pipelined after a running request is refused after that request's
// response, without cancelling it. net/http's background read uses Read:
// its server must mark the connection active while a handler runs
// (SetActive, from http.Server.ConnState), so that such a refusal waits for
// the response instead of cancelling the running request.
//
// A handler that hijacks a connection after a 101 Switching Protocols
// (WebSocket through httputil.ReverseProxy) would still have its reads
// checked as HTTP and refused. keyward refuses upgrades today; a route that
// opts into them needs the guard to learn of the switch first.
package listener

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keyward/keyward/internal/httperror"
)

// Options configures Guard. The zero value is ready to use.
type Options struct {
	// MaxConns bounds the client connections open at once. When all slots
	// are taken, a new connection waits for one instead of being refused:
	// Accept takes it from the kernel and holds it, asks Idle to close its
	// longest-idle keep-alive connection, and admits it when a slot is
	// free. Connections behind it queue in the kernel's accept backlog, so
	// a burst is served late rather than reset, and a client that gives up
	// simply goes away. Zero means 10000; a negative value means no limit.
	MaxConns int
	// MaxHeaderBytes bounds a request head: the request line, the header
	// lines and the empty line ending them. A longer head is answered with
	// 431. Use the http.Server's MaxHeaderBytes, so that the two agree.
	// Zero means http.DefaultMaxHeaderBytes (1 MiB).
	MaxHeaderBytes int
	// MaxHeaders bounds the header lines of a request head (and of a chunked
	// body's trailer section). More are answered with 431. Zero means 100.
	MaxHeaders int
	// Idle is the server behind the guard, which knows which of its
	// connections are idle. At the limit, the guard asks it to close the
	// longest-idle keep-alive connection for each connection waiting, as
	// nginx does: an idle keep-alive slot is worth less than a client that
	// cannot get in. Nil: a waiting connection waits for one to close by
	// itself (idle ones after the server's idle timeout).
	Idle IdleCloser
	// HandshakeTimeout bounds a TLS handshake (GuardTLS), from the
	// connection's acceptance: a client that opens connections and sends
	// nothing holds a slot this long at most. Zero: 10s.
	HandshakeTimeout time.Duration
	// HandshakeError, if set, is told of each failed TLS handshake (a
	// scanner, a client that does not trust the certificate, an unknown
	// server name). Nil: they are dropped silently.
	HandshakeError func(remote net.Addr, err error)
}

// IdleCloser is the server behind the guard, as the guard needs it when
// its connection table is full. internal/http1's Server implements it.
type IdleCloser interface {
	// CloseIdle closes up to n idle keep-alive connections, longest idle
	// first, and reports how many it closed. An idle connection is one
	// between requests that has not begun to read the next request: an
	// HTTP/1.1 client retries an idempotent request on a connection
	// closed while idle (RFC 9112 section 9.3.1). Each close frees a slot
	// through the connection's Close.
	CloseIdle(n int) int
}

const (
	defaultMaxConns   = 10000
	defaultMaxHeaders = 100
	defaultHandshake  = 10 * time.Second
	// bufSize is the size of the buffers that hold an incomplete head; it
	// matches net/http's read buffer, so one socket read fills either.
	bufSize = 4096
	// lingerTime and lingerBytes bound how long a refused connection is
	// drained before it is closed. Closing a socket with unread input makes
	// the kernel send RST, which can destroy the refusal in flight; net/http
	// waits 500ms for the same reason (rstAvoidanceDelay).
	lingerTime  = 500 * time.Millisecond
	lingerBytes = 256 << 10
)

// Guard returns a listener whose connections are checked by the framing guard
// and whose number is bounded by opts.MaxConns. Closing the returned listener
// closes ln and wakes an Accept waiting for a free slot.
func Guard(ln net.Listener, opts Options) *Listener {
	l := &Listener{Listener: ln, done: make(chan struct{}), wake: make(chan struct{}, 1)}
	l.set(opts)
	return l
}

// Listener is the guarded listener Guard returns. Its limits can change
// while it serves (SetOptions), and it reports its connections for metrics
// and readiness.
type Listener struct {
	net.Listener
	limits    atomic.Pointer[limits]
	max       atomic.Int64  // connection limit; negative: none
	open      atomic.Int64  // connections accepted and not yet closed
	held      atomic.Int64  // connections accepted, waiting for a slot
	reclaimed atomic.Uint64 // idle connections closed to make room
	wake      chan struct{} // a slot was freed or the limit rose
	done      chan struct{}
	closeOnce sync.Once
	tls       *split // set by GuardTLS
	// Test hooks, copied to each connection.
	onHead   func(framing)
	onReject func(*violation)
}

// limits are the Options a new connection is checked with.
type limits struct {
	maxHeaderBytes int
	maxHeaders     int
	idle           IdleCloser
	handshake      time.Duration
	handshakeError func(net.Addr, error)
}

func (l *Listener) set(opts Options) {
	lim := &limits{maxHeaderBytes: opts.MaxHeaderBytes, maxHeaders: opts.MaxHeaders, idle: opts.Idle,
		handshake: opts.HandshakeTimeout, handshakeError: opts.HandshakeError}
	if lim.maxHeaderBytes <= 0 {
		lim.maxHeaderBytes = http.DefaultMaxHeaderBytes
	}
	if lim.maxHeaders <= 0 {
		lim.maxHeaders = defaultMaxHeaders
	}
	if lim.handshake <= 0 {
		lim.handshake = defaultHandshake
	}
	l.limits.Store(lim)
	switch {
	case opts.MaxConns == 0:
		l.max.Store(defaultMaxConns)
	case opts.MaxConns > 0:
		l.max.Store(int64(opts.MaxConns))
	default:
		l.max.Store(-1)
	}
}

// SetOptions replaces the limits, as a config reload does. Connections
// accepted afterwards are checked with the new header limits; those open
// keep the ones they were accepted with. A new MaxConns applies at once:
// a raised limit admits a waiting connection, a lowered one closes idle
// keep-alive connections down to it (through opts.Idle) and admits no one
// until the connections still busy have ended; none of them is cut.
func (l *Listener) SetOptions(opts Options) {
	l.set(opts)
	l.signal()
	if over := l.Open() - l.maxConns(); l.maxConns() >= 0 && over > 0 && opts.Idle != nil {
		l.reclaimed.Add(uint64(opts.Idle.CloseIdle(over)))
	}
}

// Open reports how many connections are open: accepted and not yet
// closed, each holding a slot.
func (l *Listener) Open() int { return int(l.open.Load()) }

// Waiting reports how many connections wait for a slot: the one Accept
// holds and, while it holds one, those queued behind it in the kernel's
// accept backlog (where the platform reports it). Zero while slots are
// free.
func (l *Listener) Waiting() int {
	n := int(l.held.Load())
	if n == 0 {
		return 0
	}
	return n + backlog(l.Listener)
}

// Crowded reports whether a connection should close at the end of its
// response instead of staying open idle: connections are waiting for a
// slot, or more are open than a lowered limit allows. internal/http1
// asks it after each response.
func (l *Listener) Crowded() bool {
	if l.held.Load() > 0 {
		return true
	}
	max := l.max.Load()
	return max >= 0 && l.open.Load() > max
}

// Reclaimed reports how many idle keep-alive connections the guard has
// closed to admit waiting ones or to meet a lowered limit.
func (l *Listener) Reclaimed() uint64 { return l.reclaimed.Load() }

func (l *Listener) maxConns() int { return int(l.max.Load()) }

// Accept takes the next connection and returns it once it has a slot. At
// the limit, it holds the connection and asks the server to close idle
// ones (Options.Idle) until a slot is free. On a TLS listener (GuardTLS)
// it returns the next HTTP/1.x connection whose handshake is done.
func (l *Listener) Accept() (net.Conn, error) {
	if l.tls != nil {
		return l.tls.accept(l.tls.h1, nil)
	}
	c, err := l.acceptSlot()
	if err != nil {
		return nil, err
	}
	return l.wrap(c, true), nil
}

// acceptSlot takes the next connection from the kernel and returns it
// once it holds a slot.
func (l *Listener) acceptSlot() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if l.acquire() {
		return c, nil
	}
	return l.admit(c)
}

// admit holds c until a slot is free, closing idle connections to free
// one. Each wake (a slot freed, the limit changed) is a new attempt.
func (l *Listener) admit(c net.Conn) (net.Conn, error) {
	l.held.Add(1)
	defer l.held.Add(-1)
	select { // a stale wake from before the hold
	case <-l.wake:
	default:
	}
	for !l.acquire() {
		if idle := l.limits.Load().idle; idle != nil {
			l.reclaimed.Add(uint64(idle.CloseIdle(1)))
		}
		if l.acquire() {
			break
		}
		select {
		case <-l.wake:
		case <-l.done:
			c.Close()
			return nil, &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: net.ErrClosed}
		}
	}
	return c, nil
}

// acquire takes a slot if one is free.
func (l *Listener) acquire() bool {
	max := l.max.Load()
	for {
		n := l.open.Load()
		if max >= 0 && n >= max {
			return false
		}
		if l.open.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// wrap puts c behind the framing guard. With slot, closing it frees the
// slot c holds; without, c is a TLS connection whose own Close does.
func (l *Listener) wrap(c net.Conn, slot bool) *conn {
	lim := l.limits.Load()
	return &conn{
		Conn: c,
		l:    l,
		slot: slot,
		ps:   parser{maxHeaderBytes: lim.maxHeaderBytes, maxHeaders: lim.maxHeaders},

		onHead:   l.onHead,
		onReject: l.onReject,
	}
}

// release frees a slot and wakes an Accept holding a connection. The
// order (free, then look for a waiter) pairs with admit's (count itself,
// then try): one of the two sees the other.
func (l *Listener) release() {
	l.open.Add(-1)
	if l.held.Load() > 0 {
		l.signal()
	}
}

func (l *Listener) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Close closes the underlying listener and wakes a waiting Accept (on a
// TLS listener, the HTTP/2 side's too).
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// conn is one guarded client connection. The server calls Read, WatchRead
// and WaitRead from one goroutine at a time; Close may come from another.
//
// Bytes read from the socket are either passed to the caller or held in buf:
// buf[r:pass] is checked and waiting to be read, buf[pass:w] is the start of
// a head (or trailer section) still incomplete. While nothing is held, Read
// reads straight into the caller's slice and only copies what it must hold
// back, so a valid request costs one scan and no copy.
type conn struct {
	net.Conn
	l    *Listener
	slot bool // Close frees a slot (a plaintext connection)
	ps   parser

	buf        []byte
	r, pass, w int
	readErr    error // socket error to report once the passable bytes are read
	undrained  bool  // the last socket read filled its buffer: input may remain
	raw        syscall.RawConn
	waited     bool
	peek       [1]byte
	readyFn    func(uintptr) bool
	rejected   bool
	active     atomic.Bool               // a handler runs: see SetActive
	reply      atomic.Pointer[violation] // refusal to send on Close
	closeOnce  sync.Once
	closeErr   error
	onHead     func(framing)    // test hook: each head passed
	onReject   func(*violation) // test hook: each refusal
}

// errRejected is what the server reads once a request was refused. As a read
// *net.OpError it makes the server close the connection without writing an
// answer of its own.
var errRejected = errors.New("listener: request refused by the framing guard")

// Read passes the next checked bytes of the client's stream. Once the
// guard has refused the stream, it fails with a read *net.OpError: the
// server closes the connection without an answer of its own, and Close
// sends the refusal.
func (c *conn) Read(p []byte) (int, error) { return c.read(p, false) }

// WatchRead is Read for a server's hang-up watch: a read made while a
// handler runs, to notice its client leaving (internal/http1 calls it). It
// passes input and reports the client's errors as Read does, but once the
// guard has refused the stream (a bad head pipelined after the running
// request) it blocks like a quiet socket until the read deadline passes
// or the connection ends: reporting the refusal would cancel a request
// that did nothing wrong, whose response must still go out before the
// refusal. Input arriving meanwhile is discarded; the connection is
// ending.
func (c *conn) WatchRead(p []byte) (int, error) { return c.read(p, true) }

func (c *conn) read(p []byte, watch bool) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if c.r < c.pass {
			n := copy(p, c.buf[c.r:c.pass])
			c.r += n
			if c.r == c.w {
				c.freeBuf()
			}
			return n, nil
		}
		if err := c.readErr; err != nil {
			c.readErr = nil
			return 0, err
		}
		if c.rejected {
			if watch || c.active.Load() && c.reply.Load() != nil {
				return c.discardUntilError()
			}
			return 0, &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errRejected}
		}
		if c.r == c.w {
			// Nothing held: read into p and hand back what checks out.
			n, err := c.Conn.Read(p)
			c.undrained = n == len(p)
			if n > 0 {
				k := c.scan(p[:n])
				if k < n && !c.rejected {
					c.hold(p[k:n])
				}
				if k > 0 {
					c.readErr = err
					return k, nil
				}
			}
			if err != nil {
				return 0, err
			}
			continue
		}
		c.fill()
	}
}

// SetActive tells the guard whether a handler is running on the
// connection, for a server whose hang-up watch uses Read (net/http's
// background read; its http.Server.ConnState calls SetActive(true) on
// StateActive and SetActive(false) on StateIdle). While active, a refused
// head (pipelined after the running request) makes Read wait like a quiet
// socket, as WatchRead does, instead of failing: the failure would cancel
// the running request. Once inactive, the next Read reports the refusal
// and the server closes the connection, sending it. A body fault still
// fails Read at once: the running request's own body is broken.
func (c *conn) SetActive(active bool) { c.active.Store(active) }

// ConnectionState returns the TLS state of a connection from GuardTLS;
// its HandshakeComplete is false for a plaintext one. The server behind
// the guard reads it for http.Request.TLS.
func (c *conn) ConnectionState() tls.ConnectionState {
	if tc, ok := c.Conn.(*tls.Conn); ok {
		return tc.ConnectionState()
	}
	return tls.ConnectionState{}
}

// WaitRead blocks until Read has something to return (input, an error, or
// the read deadline passing) without reading, so that a server can leave an
// idle connection without a read buffer. It returns at once when the guard
// holds checked bytes or when its last socket read filled its buffer
// (input may remain that no new readiness event will announce).
func (c *conn) WaitRead() error {
	if c.r < c.pass || c.readErr != nil || c.rejected || c.undrained {
		return nil
	}
	if c.raw == nil {
		sc, ok := c.Conn.(syscall.Conn)
		if !ok {
			return nil
		}
		raw, err := sc.SyscallConn()
		if err != nil {
			return nil
		}
		c.raw, c.readyFn = raw, c.ready
	}
	c.waited = false
	return c.raw.Read(c.readyFn)
}

// fill reads more of a held, incomplete section into buf and scans it.
func (c *conn) fill() {
	if c.w == len(c.buf) {
		if c.r > 0 {
			copy(c.buf, c.buf[c.r:c.w])
			c.w -= c.r
			c.pass -= c.r
			c.r = 0
		} else {
			// A section larger than the buffer; the parser refuses it
			// past MaxHeaderBytes, so this stops at about twice that.
			nb := make([]byte, 2*len(c.buf))
			copy(nb, c.buf[:c.w])
			c.putBuf()
			c.buf = nb
		}
	}
	n, err := c.Conn.Read(c.buf[c.w:])
	c.took(n, err)
}

// took accounts for a socket read of n bytes into buf[w:]: it scans them,
// passing what checks out, and keeps the error for after them.
func (c *conn) took(n int, err error) {
	c.undrained = n == len(c.buf)-c.w
	if n > 0 {
		c.w += n
		c.pass += c.scan(c.buf[c.pass:c.w])
		if c.rejected {
			c.w = c.pass
		}
	}
	c.readErr = err
}

// scan runs the parser over d, whose first byte is the first unscanned byte
// of the stream, and returns how many bytes of d may be passed: whole heads,
// body bytes, and nothing of a head that is incomplete or invalid.
func (c *conn) scan(d []byte) int {
	i := 0
	for i < len(d) {
		switch c.ps.phase {
		case phHead, phTrailer:
			head := c.ps.phase == phHead
			n, v := c.ps.section(d[i:])
			if v != nil {
				c.reject(v, head)
				return i
			}
			if n < 0 {
				return i
			}
			if head && c.onHead != nil {
				c.onHead(c.ps.headFraming(n))
			}
			i += n
		default:
			n, v := c.ps.body(d[i:])
			i += n
			if v != nil {
				// body counts the offending byte as consumed. The bytes
				// before it are body bytes the server may be reading: pass
				// them, then fail the read.
				c.reject(v, false)
				return i - 1
			}
		}
	}
	return i
}

// reject stops the stream. A refused head is answered with v when the server
// closes the connection: by then it has written every response it owes, so
// the answer cannot land inside one. A fault inside a body is not answered:
// that request's handler is already running and may have responded.
func (c *conn) reject(v *violation, answer bool) {
	c.rejected = true
	c.ps.phase = phRejected
	if answer {
		c.reply.Store(v)
	}
	if c.onReject != nil {
		c.onReject(v)
	}
}

// discardUntilError is WatchRead after a refusal: it reads and drops input
// until the socket fails (the deadline the server sets to end the watch,
// or the client leaving).
func (c *conn) discardUntilError() (int, error) {
	var scratch [512]byte
	for {
		if _, err := c.Conn.Read(scratch[:]); err != nil {
			return 0, err
		}
	}
}

// hold keeps b, the start of an incomplete section, for the next fill.
func (c *conn) hold(b []byte) {
	if c.buf == nil {
		c.getBuf()
	}
	if len(b) > len(c.buf) {
		c.putBuf()
		c.buf = make([]byte, len(b)+bufSize)
	}
	c.r, c.pass, c.w = 0, 0, copy(c.buf, b)
}

var bufPool = sync.Pool{New: func() any { return new([bufSize]byte) }}

func (c *conn) getBuf() { c.buf = bufPool.Get().(*[bufSize]byte)[:] }

func (c *conn) putBuf() {
	if len(c.buf) == bufSize {
		bufPool.Put((*[bufSize]byte)(c.buf))
	}
	c.buf = nil
}

// freeBuf returns the buffer once everything in it is passed, so an idle
// keep-alive connection holds no buffer.
func (c *conn) freeBuf() {
	if c.buf != nil {
		c.putBuf()
	}
	c.r, c.pass, c.w = 0, 0, 0
}

// Close sends a pending refusal, closes the connection and frees its slot,
// all exactly once.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		if v := c.reply.Swap(nil); v != nil {
			c.answer(v)
		}
		c.closeErr = c.Conn.Close()
		if c.slot {
			c.l.release()
		}
	})
	return c.closeErr
}

// CloseWrite shuts down the sending side, for the server's lingering close.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// answer writes the refusal, then drains the client's input for a moment
// before the close (see lingerTime). Errors are ignored: the client may be
// gone, and the connection is closed either way.
func (c *conn) answer(v *violation) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(lingerTime))
	_, _ = c.Conn.Write(response(v))
	if c.CloseWrite() != nil {
		return
	}
	_ = c.Conn.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.CopyN(io.Discard, c.Conn, lingerBytes)
}

// response is the complete HTTP/1.1 refusal for v, in the gateway's JSON
// error shape.
func response(v *violation) []byte { return httperror.Response(v.status, v.code, v.msg) }
