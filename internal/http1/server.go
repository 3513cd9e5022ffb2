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
// It speaks HTTP/1.0 and 1.1 on plaintext connections only, does not
// support protocol upgrades, ignores 1xx responses from handlers, and does
// not sniff a Content-Type the handler did not set (the gateway sends
// X-Content-Type-Options: nosniff on its own answers; an upstream's
// response keeps the type the upstream gave it).
package http1

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
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

// Serve accepts connections on ln and serves each on its own goroutine
// until ln fails or the server shuts down; then it returns
// http.ErrServerClosed.
func (s *Server) Serve(ln net.Listener) error {
	if !s.track(ln, true) {
		return http.ErrServerClosed
	}
	defer s.track(ln, false)
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
		c := s.newConn(rw)
		if c == nil {
			rw.Close()
			return http.ErrServerClosed
		}
		go c.serve()
	}
}

// Shutdown stops accepting, closes idle connections, and waits for the
// others to finish their requests, or for ctx to end (then it closes them
// and returns ctx.Err()).
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdown.Store(true)
	s.closeListeners()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.closeIdle() {
			return nil
		}
		select {
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		case <-tick.C:
		}
	}
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
// that have sent nothing for newGrace, and reports whether none are left.
// The closing happens outside the lock: a guarded connection with a
// refusal to send lingers in Close.
func (s *Server) closeIdle() bool {
	now := time.Now()
	var idle []*conn
	s.mu.Lock()
	for c := range s.conns {
		if c.state.CompareAndSwap(stateIdle, stateClosing) ||
			now.Sub(c.born) >= newGrace && c.state.CompareAndSwap(stateNew, stateClosing) {
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

func (s *Server) newConn(rw net.Conn) *conn {
	c := &conn{s: s, rw: rw, remote: rw.RemoteAddr().String(), wdone: make(chan struct{}, 1), born: time.Now()}
	c.cr.c = c
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

func (s *Server) readHeaderTimeout() time.Duration {
	if s.ReadHeaderTimeout > 0 {
		return s.ReadHeaderTimeout
	}
	return 10 * time.Second
}

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout > 0 {
		return s.IdleTimeout
	}
	return 120 * time.Second
}

func (s *Server) writeTimeout() time.Duration {
	if s.WriteTimeout > 0 {
		return s.WriteTimeout
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
	if s.ReadBodyTimeout > 0 {
		return s.ReadBodyTimeout
	}
	return 60 * time.Second
}

func (s *Server) maxHeaderBytes() int {
	if s.MaxHeaderBytes > 0 {
		return s.MaxHeaderBytes
	}
	return http.DefaultMaxHeaderBytes
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}
