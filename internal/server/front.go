package server

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/http1"
	"github.com/keyward/keyward/internal/listener"
)

// Front is keyward's public listener: the framing guard in front (it
// refuses ambiguous request framing, smuggling, before anything parses a
// request, and bounds connections and header lines; at the connection
// limit it has the servers close their longest-idle keep-alive
// connection), then the server engine the settings name (server.engine):
// keyward's own HTTP/1.x server (internal/http1, faster and leaner than
// net/http's; the guard's checks and http.ReadRequest keep its parsing
// strict) or net/http's. Over TLS the guard checks the decrypted stream of
// HTTP/1.1 connections, and connections that choose HTTP/2 by ALPN go to
// net/http's HTTP/2 server (listener.GuardTLS). Tests serve the gateway
// the same way.
type Front struct {
	guard *listener.Listener
	h1    engine
	h2    *stdServer // nil in plaintext
	ln    net.Listener
	hsts  atomic.Pointer[[]string] // the Strict-Transport-Security value; nil: none
	// unguarded: the HTTP/1.x server reads the socket itself (tests).
	unguarded bool
}

// engine is an HTTP server the front runs: internal/http1's or
// stdServer.
type engine interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
	Close() error
	CloseIdle(n int) int
	SetLimits(http1.Limits)
}

var (
	_ engine = (*http1.Server)(nil)
	_ engine = (*stdServer)(nil)
)

// FrontOptions adjust a Front. The zero value serves plaintext.
type FrontOptions struct {
	// TLS serves the listener over TLS with this configuration (see
	// certs.ServerConfig): HTTP/1.1 and HTTP/2. Nil: plaintext HTTP/1.x.
	TLS *tls.Config
	// Unguarded serves plaintext without the framing guard: the HTTP/1.x
	// server reads the socket itself, for tests that show which defences
	// depend on the guard. Ignored with TLS.
	Unguarded bool
	// Logger receives the servers' own log lines: handler panics, and TLS
	// handshake failures at debug level. Nil: slog.Default().
	Logger *slog.Logger
}

// NewFront builds the public listener on ln for h with st's limits and
// engine. Serve starts it.
func NewFront(ln net.Listener, h http.Handler, st gateway.Settings, opts FrontOptions) *Front {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	f := &Front{ln: ln, unguarded: opts.Unguarded && opts.TLS == nil}
	f.setHSTS(st)
	lim := limitsOf(st)
	if opts.TLS != nil {
		h = f.secure(h)
	}
	if st.Engine == "stdlib" {
		f.h1 = newStdServer(h, lim, st.MaxHeaders, false, log)
	} else {
		f.h1 = &http1.Server{Handler: h, ReadHeaderTimeout: lim.ReadHeaderTimeout, IdleTimeout: lim.IdleTimeout,
			ReadBodyTimeout: lim.ReadBodyTimeout, WriteTimeout: lim.WriteTimeout, MaxHeaderBytes: lim.MaxHeaderBytes, Logger: log}
	}
	gopts := f.guardOptions(st)
	if opts.TLS == nil {
		f.guard = listener.Guard(ln, gopts)
	} else {
		f.h2 = newStdServer(h, lim, st.MaxHeaders, true, log)
		gopts.HandshakeTimeout = st.ReadHeaderTimeout
		gopts.HandshakeError = func(remote net.Addr, err error) {
			log.Debug("TLS handshake failed", "remote", remote.String(), "error", err.Error())
		}
		f.guard = listener.GuardTLS(ln, opts.TLS, gopts)
		f.h2.crowded = f.guard.Crowded
	}
	if s, ok := f.h1.(*stdServer); ok {
		s.crowded = f.guard.Crowded
	}
	return f
}

func limitsOf(st gateway.Settings) http1.Limits {
	return http1.Limits{
		ReadHeaderTimeout: st.ReadHeaderTimeout,
		IdleTimeout:       st.IdleTimeout,
		WriteTimeout:      st.WriteTimeout,
		ReadBodyTimeout:   st.ReadBodyTimeout,
		MaxHeaderBytes:    st.MaxHeaderBytes,
	}
}

func (f *Front) guardOptions(st gateway.Settings) listener.Options {
	return listener.Options{
		MaxConns:       st.MaxConnections,
		MaxHeaderBytes: st.MaxHeaderBytes,
		MaxHeaders:     st.MaxHeaders,
		Idle:           f,
	}
}

// Guard returns the guarded listener, which counts the connections (for
// metrics and readiness).
func (f *Front) Guard() *listener.Listener { return f.guard }

// Addr is the listener's address.
func (f *Front) Addr() net.Addr { return f.ln.Addr() }

// Serve serves until Shutdown or Close, then returns http.ErrServerClosed
// (or the first error a server failed with).
func (f *Front) Serve() error {
	errc := make(chan error, 2)
	var ln net.Listener = f.guard
	if f.unguarded {
		ln = f.ln
	}
	go func() { errc <- f.h1.Serve(ln) }()
	n := 1
	if f.h2 != nil {
		n++
		go func() { errc <- f.h2.Serve(f.guard.H2()) }()
	}
	var first error
	for range n {
		if err := <-errc; first == nil || errors.Is(first, http.ErrServerClosed) {
			first = err
		}
	}
	return first
}

// Shutdown stops accepting, lets the running requests finish, and past
// ctx's deadline ends them (see http1.Server.Shutdown): the engines drain
// at once. A *http1.DrainError reports the requests ended.
func (f *Front) Shutdown(ctx context.Context) error {
	errc := make(chan error, 1)
	if f.h2 != nil {
		go func() { errc <- f.h2.Shutdown(ctx) }()
	}
	err := f.h1.Shutdown(ctx)
	f.guard.Close()
	if f.h2 == nil {
		return err
	}
	err2 := <-errc
	var d1, d2 *http1.DrainError
	switch {
	case errors.As(err, &d1) && errors.As(err2, &d2):
		return &http1.DrainError{Requests: d1.Requests + d2.Requests, Err: d1.Err}
	case err == nil:
		return err2
	}
	return err
}

// Close closes the listener and every connection at once.
func (f *Front) Close() error {
	err := f.h1.Close()
	if f.h2 != nil {
		err = errors.Join(err, f.h2.Close())
	}
	return errors.Join(err, f.guard.Close())
}

// CloseIdle closes up to n idle connections for the guard (see
// listener.IdleCloser): HTTP/1.x keep-alive ones first, then HTTP/2
// connections with no stream open.
func (f *Front) CloseIdle(n int) int {
	closed := f.h1.CloseIdle(n)
	if f.h2 != nil && closed < n {
		closed += f.h2.CloseIdle(n - closed)
	}
	return closed
}

// Apply gives the listener a reloaded config's settings: the servers'
// timeouts and sizes for new connections and requests (see stdServer for
// what net/http keeps), the guard's limits (a lowered max_connections
// closes idle connections and admits no one until under it; busy ones
// finish), and the HSTS max-age.
func (f *Front) Apply(st gateway.Settings) {
	lim := limitsOf(st)
	f.h1.SetLimits(lim)
	if s, ok := f.h1.(*stdServer); ok {
		s.setMaxHeaders(st.MaxHeaders)
	}
	if f.h2 != nil {
		f.h2.SetLimits(lim)
		f.h2.setMaxHeaders(st.MaxHeaders)
	}
	f.guard.SetOptions(f.guardOptions(st))
	f.setHSTS(st)
}

func (f *Front) setHSTS(st gateway.Settings) {
	if st.TLS == nil || st.TLS.HSTS <= 0 {
		f.hsts.Store(nil)
		return
	}
	v := []string{"max-age=" + strconv.FormatInt(int64(st.TLS.HSTS/time.Second), 10)}
	f.hsts.Store(&v)
}

// secure wraps h for responses over TLS: Strict-Transport-Security when
// tls.hsts asks for it (RFC 6797; never over plain HTTP, where a browser
// must ignore it).
func (f *Front) secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v := f.hsts.Load(); v != nil {
			w.Header()["Strict-Transport-Security"] = *v
		}
		h.ServeHTTP(w, r)
	})
}
