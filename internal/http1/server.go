// Package http1 serves HTTP/1.x to keyward's clients. It replaces net/http's
// server on the public listener, for speed and memory (docs/PERFORMANCE.md
// has the profiles and the before/after numbers), and keeps what made that
// server safe to use:
//
//   - Requests are parsed by the standard library (http.ReadRequest), behind
//     the framing guard (internal/listener) that refuses ambiguous framing
//     first. Bodies are read by the standard library's body readers.
//   - Responses stream: Flush sends what was written (SSE), a response of
//     unknown length is chunked, trailers are sent after the last chunk.
//   - A request's context is cancelled when its client goes away.
//
// What it does differently, and why:
//
//   - No background read per request. net/http starts a goroutine and a
//     socket read for every request, to notice a client that hangs up;
//     that was a tenth of the syscalls and a goroutine hand-off per
//     request. Here one loop per server starts a watcher on requests that
//     have run 200-300 ms: a client that hangs up on a quick request is
//     noticed when its response is written, one on a slow request within
//     300 ms, and its upstream call is cancelled.
//   - An idle connection holds no buffer: the server waits for input
//     without reading (the guard's WaitRead) and takes a pooled read buffer
//     only when a request arrives. Responses are assembled in one pooled
//     buffer and written with one syscall when they fit.
//   - Requests it cannot parse get the gateway's JSON error shape.
//   - Writes to the client are bounded by progress (WriteTimeout), request
//     bodies by total time (ReadBodyTimeout), and a body the client failed
//     to send is reported to the handler as a *BodyError, then the
//     connection is closed without waiting for the rest of it.
//
// It speaks HTTP/1.0 and 1.1, in plaintext or over TLS (a connection that
// reports its TLS state, as the framing guard's over TLS do, gives it to
// each request's http.Request.TLS), does not support protocol upgrades, ignores 1xx responses from handlers, and does
// not sniff a Content-Type the handler did not set (the gateway sends
// X-Content-Type-Options: nosniff on its own answers; an upstream's
// response keeps the type the upstream gave it).
package http1

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keyward/keyward/internal/abort"
)

// Server serves HTTP/1.x requests on the listeners given to Serve.
type Server struct {
	// Handler answers every request; it must not be nil.
	Handler http.Handler
	// ReadHeaderTimeout bounds the time from a connection's first byte
	// (or a keep-alive request's first byte) to the end of the request
	// head, and how long a new connection may stay silent. Zero: 10s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection silent this long. Zero:
	// 120s.
	IdleTimeout time.Duration
	// WriteTimeout ends a connection whose client has taken none of the
	// response for this long: the handler's Write (or Flush) fails with an
	// error wrapping ErrWriteTimeout, and the request's context is
	// cancelled with ErrWriteTimeout as its cause, so the upstream call
	// stops. It measures progress, not the whole response: a stream that
	// a slow client keeps reading is never cut. A stall is noticed between
	// WriteTimeout and 1.25 times WriteTimeout after the client last took
	// a byte. Zero: 30s.
	WriteTimeout time.Duration
	// ReadBodyTimeout bounds the time from the end of a request's head to
	// the end of its body, in total: a client trickling a body holds a
	// connection and an upstream request, and what it may take is known up
	// front. The body's Read then fails with a *BodyError whose Timeout is
	// true. Zero: 60s.
	ReadBodyTimeout time.Duration
	// MaxHeaderBytes bounds a request head when no guard does. Zero:
	// http.DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// Logger receives handler panics. Nil: slog.Default().
	Logger *slog.Logger

	limits    atomic.Pointer[Limits] // set by SetLimits: replaces the fields above
	idleSeq   atomic.Int64           // counts connections going idle: orders them for CloseIdle
	cutting   atomic.Bool            // Shutdown's time is up: requests are being ended
	ctxOnce   sync.Once
	ctx       context.Context
	tick      atomic.Int64 // watch loop ticks, from 1: the server's coarse clock
	watches   atomic.Int64 // watchers started
	loopOnce  sync.Once
	done      chan struct{} // closed by Close and Shutdown: stops the loop
	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	shutdown  atomic.Bool
}

// Limits are the timeouts and size limits of a Server that a config
// reload may change while it serves (SetLimits). Each field means what the
// Server field of the same name does, zero included.
type Limits struct {
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	WriteTimeout      time.Duration
	ReadBodyTimeout   time.Duration
	MaxHeaderBytes    int
}

// SetLimits replaces the server's timeouts and size limits (the fields of
// the same names, which it then ignores) while it serves. Each new value
// applies from the next time it is used: a new connection, a connection's
// next request or its next wait between requests, the next write of a
// response. A connection already waiting between requests keeps the idle
// timeout it began waiting with.
func (s *Server) SetLimits(l Limits) { s.limits.Store(&l) }

// crowdReporter is a listener that knows when connections wait for a slot
// (the framing guard, listener.Listener): a connection that finishes a
// response then closes instead of staying open idle, so that one waiting
// gets its slot.
type crowdReporter interface{ Crowded() bool }

// Serve accepts connections on ln and serves each on its own goroutine
// until ln fails or the server shuts down; then it returns
// http.ErrServerClosed.
func (s *Server) Serve(ln net.Listener) error {
	if !s.track(ln, true) {
		return http.ErrServerClosed
	}
	defer s.track(ln, false)
	crowd, _ := ln.(crowdReporter)
	s.loopOnce.Do(func() { go s.watchLoop() })
	var backoff time.Duration
	for {
		rw, err := ln.Accept()
		if err != nil {
			if s.shutdown.Load() {
				return http.ErrServerClosed
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of file descriptors or a transient accept error:
				// wait a moment instead of spinning, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		c := s.newConn(rw, crowd)
		if c == nil {
			rw.Close()
			return http.ErrServerClosed
		}
		go c.serve()
	}
}

// ErrShutdown is the cause of a request's context cancelled because the
// shutdown drain ran out of time (abort.ErrShutdown, so that handlers can
// tell without importing the server).
var ErrShutdown = abort.ErrShutdown

// DrainError is what Shutdown returns when its context ends before every
// request has: the requests still running were ended.
type DrainError struct {
	// Requests is how many requests were still running.
	Requests int
	// Err is the context's error.
	Err error
}

func (e *DrainError) Error() string {
	return fmt.Sprintf("http1: drain time is up: ended %d requests: %v", e.Requests, e.Err)
}

// Unwrap returns the context's error.
func (e *DrainError) Unwrap() error { return e.Err }

// cutGrace is the most a shutdown whose drain time is up gives the
// requests it ends to finish their responses: a stream gets its clean end
// (see endsCleanly), a handler waiting for its upstream answers. When
// Shutdown's context has a deadline, the requests are ended this long
// before it (a quarter of the time left, if that is less), so that all of
// it happens within the deadline: a supervisor's kill timer is usually
// the same figure as the drain time.
const cutGrace = time.Second

// Shutdown stops accepting, closes idle connections, and waits for the
// others to finish their requests. If ctx ends first (or comes within
// cutGrace of its deadline), it ends the requests still running: their
// contexts are cancelled with ErrShutdown as the cause, the responses get
// a moment to end (an event stream is ended cleanly, see endsCleanly),
// then every connection left is closed, and Shutdown returns a
// *DrainError wrapping ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdown.Store(true)
	s.closeListeners()
	grace := cutGrace
	var cutAt <-chan time.Time
	if d, ok := ctx.Deadline(); ok {
		left := time.Until(d)
		grace = min(grace, left/4)
		t := time.NewTimer(left - grace)
		defer t.Stop()
		cutAt = t.C
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.closeIdle(false) {
			return nil
		}
		select {
		case <-ctx.Done():
			return s.cut(grace, ctx.Err())
		case <-cutAt:
			return s.cut(grace, context.DeadlineExceeded)
		case <-tick.C:
		}
	}
}

// cut ends the requests still running when the drain time is up: it
// cancels them with ErrShutdown, closes the connections without one,
// waits up to grace for the rest to close, then closes them.
func (s *Server) cut(grace time.Duration, cause error) error {
	s.cutting.Store(true)
	s.mu.Lock()
	running := 0
	for c := range s.conns {
		if c.cancelRequest(ErrShutdown) {
			running++
		}
	}
	s.mu.Unlock()
	t := time.NewTimer(grace)
	defer t.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !s.closeIdle(true) {
		select {
		case <-t.C:
			s.Close()
			return &DrainError{Requests: running, Err: cause}
		case <-tick.C:
		}
	}
	return &DrainError{Requests: running, Err: cause}
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.shutdown.Store(true)
	s.closeListeners()
	s.mu.Lock()
	all := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		all = append(all, c)
	}
	s.mu.Unlock()
	for _, c := range all {
		c.rw.Close()
	}
	return nil
}

// watchLoop starts a watcher on each connection whose request has been
// armed for two ticks (conn.watchDue), until the server closes.
func (s *Server) watchLoop() {
	t := time.NewTicker(watchTick)
	defer t.Stop()
	done := s.doneChan()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		tick := s.tick.Add(1)
		s.mu.Lock()
		for c := range s.conns {
			if c.watchDue(tick) {
				s.watches.Add(1)
				go c.watch()
			}
		}
		s.mu.Unlock()
	}
}

func (s *Server) doneChan() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		s.done = make(chan struct{})
	}
	return s.done
}

func (s *Server) track(ln net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.listeners, ln)
		return true
	}
	if s.shutdown.Load() {
		return false
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
	}
	s.listeners[ln] = struct{}{}
	return true
}

// closeListeners closes the listeners and stops the watch loop.
func (s *Server) closeListeners() {
	done := s.doneChan()
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-done:
	default:
		close(done)
	}
	for ln := range s.listeners {
		ln.Close()
	}
}

// closeIdle closes the connections waiting for a request, and new ones
// that have sent nothing for newGrace (all new ones if all is set), and
// reports whether none are left. The closing happens outside the lock: a
// guarded connection with a refusal to send lingers in Close.
func (s *Server) closeIdle(all bool) bool {
	now := time.Now()
	var idle []*conn
	s.mu.Lock()
	for c := range s.conns {
		if c.state.CompareAndSwap(stateIdle, stateClosing) ||
			(all || now.Sub(c.born) >= newGrace) && c.state.CompareAndSwap(stateNew, stateClosing) {
			idle = append(idle, c)
		}
	}
	left := len(s.conns)
	s.mu.Unlock()
	for _, c := range idle {
		c.rw.Close()
	}
	return left == 0
}

// CloseIdle closes up to n of the connections waiting between requests,
// longest idle first, and reports how many it closed. The framing guard
// (listener.IdleCloser) calls it when its connection table is full, to
// admit a new connection. A connection is idle from the end of a response
// until the first byte of its next request arrives: an HTTP/1.1 client
// retries an idempotent request on a connection closed while idle (RFC
// 9112 section 9.3.1), as it must for any keep-alive timeout. A new
// connection that has not sent its first request is not idle.
func (s *Server) CloseIdle(n int) int {
	if n <= 0 {
		return 0
	}
	var idle []*conn
	s.mu.Lock()
	for c := range s.conns {
		if c.state.Load() == stateIdle {
			idle = append(idle, c)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(idle, func(a, b *conn) int { return cmp.Compare(a.idleSeq.Load(), b.idleSeq.Load()) })
	closed := 0
	for _, c := range idle {
		if closed == n {
			break
		}
		// A connection that has begun a request since is not idle any more.
		if c.state.CompareAndSwap(stateIdle, stateClosing) {
			c.rw.Close()
			closed++
		}
	}
	return closed
}

// tlsConn is a connection over TLS whose handshake is done (the framing
// guard's, from listener.GuardTLS, or a *tls.Conn).
type tlsConn interface {
	ConnectionState() tls.ConnectionState
}

func (s *Server) newConn(rw net.Conn, crowd crowdReporter) *conn {
	c := &conn{s: s, rw: rw, crowd: crowd, remote: rw.RemoteAddr().String(), wdone: make(chan struct{}, 1), born: time.Now()}
	c.cr.c = c
	if tc, ok := rw.(tlsConn); ok {
		if st := tc.ConnectionState(); st.HandshakeComplete {
			c.tls = &st
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown.Load() {
		return nil
	}
	if s.conns == nil {
		s.conns = make(map[*conn]struct{})
	}
	s.conns[c] = struct{}{}
	return c
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// baseContext is the parent of every request's context. It says that a
// handler may abort its response with panic(http.ErrAbortHandler) (see
// internal/abort): keyward's forwarder does so when an upstream body
// breaks off, so that the client sees the stream cut instead of ended.
func (s *Server) baseContext() context.Context {
	s.ctxOnce.Do(func() {
		s.ctx = abort.WithSupport(context.Background())
	})
	return s.ctx
}

// The accessors below read a limit from SetLimits' values if set, else
// from the fields, and apply the default. A limits load is one atomic
// pointer load: write reads the write timeout on every call.

func (s *Server) readHeaderTimeout() time.Duration {
	d := s.ReadHeaderTimeout
	if l := s.limits.Load(); l != nil {
		d = l.ReadHeaderTimeout
	}
	if d > 0 {
		return d
	}
	return 10 * time.Second
}

func (s *Server) idleTimeout() time.Duration {
	d := s.IdleTimeout
	if l := s.limits.Load(); l != nil {
		d = l.IdleTimeout
	}
	if d > 0 {
		return d
	}
	return 120 * time.Second
}

func (s *Server) writeTimeout() time.Duration {
	d := s.WriteTimeout
	if l := s.limits.Load(); l != nil {
		d = l.WriteTimeout
	}
	if d > 0 {
		return d
	}
	return 30 * time.Second
}

// rearmTicks is how many watch loop ticks a write deadline, set a quarter
// of the write timeout ahead, may be kept before a write moves it: kept
// any longer, it could pass while the client still takes bytes. Zero (a
// timeout under four ticks) moves it at every write.
func (s *Server) rearmTicks() int64 {
	return int64(s.writeTimeout() / 4 / watchTick)
}

func (s *Server) readBodyTimeout() time.Duration {
	d := s.ReadBodyTimeout
	if l := s.limits.Load(); l != nil {
		d = l.ReadBodyTimeout
	}
	if d > 0 {
		return d
	}
	return 60 * time.Second
}

func (s *Server) maxHeaderBytes() int {
	n := s.MaxHeaderBytes
	if l := s.limits.Load(); l != nil {
		n = l.MaxHeaderBytes
	}
	if n > 0 {
		return n
	}
	return http.DefaultMaxHeaderBytes
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}
