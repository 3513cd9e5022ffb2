package server

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyward/keyward/internal/abort"
	"github.com/keyward/keyward/internal/http1"
	"github.com/keyward/keyward/internal/listener"
)

// stdServer runs net/http's server as one of the public listener's
// engines: HTTP/1.x behind the framing guard (server.engine: stdlib), and
// HTTP/2 over TLS. It gives net/http what internal/http1 does by itself,
// so that the gateway behaves the same on every engine:
//
//   - the guard's connections are marked active while a handler runs
//     (listener's SetActive), so that a bad head pipelined after a running
//     request does not cancel it through net/http's background read;
//   - idle connections are known (ConnState), so the guard can close the
//     longest idle when its table is full (CloseIdle), and a connection
//     that ends a response while others wait for a slot closes;
//   - a reload's limits apply to new connections: each SetLimits starts a
//     new generation of http.Server (whose fields cannot change while it
//     serves) for the connections accepted from then on, while the
//     connections of the last one keep theirs;
//   - a request body must arrive within the read body timeout, and a
//     response write fails once the client has taken nothing of it for the
//     write timeout (a per-write deadline; HTTP/2 also closes a connection
//     that takes no bytes at all: WriteByteTimeout);
//   - over HTTP/2, the header count limit (max_headers) that the guard
//     applies to HTTP/1.x;
//   - a shutdown whose drain time is up cancels the running requests with
//     abort.ErrShutdown as the cause, then closes the connections, and
//     says so with an *http1.DrainError.
//
// What stays different: net/http's own refusals of requests the guard
// lets through are plain text, not the gateway's JSON, and an event
// stream cut by a shutdown ends abruptly instead of cleanly.
type stdServer struct {
	handler http.Handler
	h2      bool
	logger  *slog.Logger
	crowded func() bool // the guard's Crowded; nil: never
	limits  atomic.Pointer[http1.Limits]
	maxHdr  atomic.Int64 // header lines allowed per HTTP/2 request

	ctx    context.Context
	cancel context.CancelCauseFunc

	seq    atomic.Int64 // orders the ends of responses
	mu     sync.Mutex
	cur    *generation   // serves new connections
	gens   []*generation // every generation, the current one last
	ln     net.Listener  // what Serve accepts from
	closed bool
	idle   map[net.Conn]int64 // idle connections, by when their last response ended
	all    map[net.Conn]*connInfo
}

// connInfo is what the server knows of one connection.
type connInfo struct {
	// ended is the server's seq when a response on the connection last
	// ended (its handler returned), which orders idle connections as
	// their clients saw them go idle: net/http reports the idle state
	// only after the response went out, by which time the client may
	// have sent requests on other connections.
	ended atomic.Int64
}

// connInfoKey is the request context key of a connection's connInfo.
type connInfoKey struct{}

// generation is one http.Server and the connections handed to it.
type generation struct {
	srv   *http.Server
	conns chan net.Conn
	stop  chan struct{} // closed: takes no more connections
	once  sync.Once
}

// h2MaxStreams is how many streams an HTTP/2 client may have open at once
// on one connection: nginx's default is 128, Go's 250. Each holds a
// handler and, usually, an upstream request.
const h2MaxStreams = 100

func newStdServer(h http.Handler, l http1.Limits, maxHeaders int, h2 bool, logger *slog.Logger) *stdServer {
	s := &stdServer{h2: h2, logger: logger, idle: map[net.Conn]int64{}, all: map[net.Conn]*connInfo{}}
	s.handler = s.limit(h)
	s.ctx, s.cancel = context.WithCancelCause(abort.WithSupport(context.Background()))
	s.maxHdr.Store(int64(maxHeaders))
	s.SetLimits(l)
	return s
}

// newGeneration returns an http.Server with l's limits, serving.
func (s *stdServer) newGeneration(l http1.Limits) *generation {
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(s.h2)
	g := &generation{conns: make(chan net.Conn), stop: make(chan struct{})}
	g.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		// net/http answers "OPTIONS *" itself with a 200; the gateway
		// refuses it (400) on every engine.
		DisableGeneralOptionsHandler: true,
		Protocols:                    &protos,
		ConnState:                    s.connState,
		ConnContext:                  s.connContext,
		BaseContext:                  func(net.Listener) context.Context { return s.ctx },
		ErrorLog:                     log.New(errorLogWriter{s.logger}, "", 0),
	}
	if s.h2 {
		g.srv.HTTP2 = &http.HTTP2Config{
			MaxConcurrentStreams: h2MaxStreams,
			WriteByteTimeout:     writeTimeout(&l),
			// A connection silent this long is pinged; one that does not
			// answer within PingTimeout is closed (a peer gone without a
			// FIN would otherwise hold its slot until the idle timeout).
			SendPingTimeout: max(l.IdleTimeout/2, time.Second),
		}
	}
	go func() { _ = g.srv.Serve(&genListener{g: g, s: s}) }()
	return g
}

// genListener hands a generation the connections Serve accepted for it.
type genListener struct {
	g *generation
	s *stdServer
}

func (l *genListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.g.conns:
		return c, nil
	case <-l.g.stop:
		return nil, net.ErrClosed
	}
}

func (l *genListener) Close() error {
	l.g.once.Do(func() { close(l.g.stop) })
	return nil
}

func (l *genListener) Addr() net.Addr {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if l.s.ln != nil {
		return l.s.ln.Addr()
	}
	return &net.TCPAddr{}
}

// Serve accepts connections on ln and hands each to the current
// generation, until Shutdown or Close.
func (s *stdServer) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	s.ln = ln
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return http.ErrServerClosed
			}
			return err
		}
		if !s.hand(c) {
			c.Close()
			return http.ErrServerClosed
		}
	}
}

// hand gives c to the current generation; false once the server closed.
func (s *stdServer) hand(c net.Conn) bool {
	for {
		s.mu.Lock()
		g, closed := s.cur, s.closed
		s.mu.Unlock()
		if closed {
			return false
		}
		select {
		case g.conns <- c:
			return true
		case <-g.stop: // replaced by a reload meanwhile: try the new one
		}
	}
}

// SetLimits applies a reload's limits: write and body timeouts from each
// request on, the rest to connections accepted from now on.
func (s *stdServer) SetLimits(l http1.Limits) {
	s.limits.Store(&l)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	old := s.cur
	s.cur = s.newGeneration(l)
	s.gens = append(s.gens, s.cur)
	if old != nil {
		old.once.Do(func() { close(old.stop) })
	}
}

// setMaxHeaders sets the header lines allowed per HTTP/2 request.
func (s *stdServer) setMaxHeaders(n int) { s.maxHdr.Store(int64(n)) }

// connContext registers a new connection and gives its requests its
// connInfo.
func (s *stdServer) connContext(ctx context.Context, c net.Conn) context.Context {
	info := &connInfo{}
	s.mu.Lock()
	s.all[c] = info
	s.mu.Unlock()
	return context.WithValue(ctx, connInfoKey{}, info)
}

// connState tracks idle connections, tells the guard when a handler
// runs, and closes a connection going idle while others wait for a slot.
func (s *stdServer) connState(c net.Conn, st http.ConnState) {
	if a, ok := c.(interface{ SetActive(bool) }); ok {
		a.SetActive(st == http.StateActive)
	}
	if st == http.StateIdle && s.crowded != nil && s.crowded() {
		c.Close()
		return // StateClosed follows
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch st {
	case http.StateIdle:
		if info := s.all[c]; info != nil {
			s.idle[c] = info.ended.Load()
		}
	case http.StateActive:
		delete(s.idle, c)
	case http.StateClosed, http.StateHijacked:
		delete(s.idle, c)
		delete(s.all, c)
	}
}

// CloseIdle closes up to n idle connections, longest idle first (see
// listener.IdleCloser).
func (s *stdServer) CloseIdle(n int) int {
	if n <= 0 {
		return 0
	}
	type entry struct {
		c   net.Conn
		seq int64
	}
	s.mu.Lock()
	idle := make([]entry, 0, len(s.idle))
	for c, seq := range s.idle {
		idle = append(idle, entry{c, seq})
	}
	s.mu.Unlock()
	slices.SortFunc(idle, func(a, b entry) int { return cmp.Compare(a.seq, b.seq) })
	closed := 0
	for _, e := range idle[:min(n, len(idle))] {
		e.c.Close()
		closed++
	}
	return closed
}

// stopAccepting marks the server closed and returns its generations.
func (s *stdServer) stopAccepting() []*generation {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.ln != nil {
		s.ln.Close()
	}
	return s.gens
}

// Shutdown stops accepting and waits for the running requests. If ctx
// ends first (or comes within http1's grace of its deadline), the running
// requests are cancelled with abort.ErrShutdown as the cause, given a
// moment to answer, and every connection is closed.
func (s *stdServer) Shutdown(ctx context.Context) error {
	gens := s.stopAccepting()
	grace := time.Second
	cctx := ctx
	if d, ok := ctx.Deadline(); ok {
		grace = min(grace, time.Until(d)/4)
		var cancel context.CancelFunc
		cctx, cancel = context.WithDeadline(ctx, d.Add(-grace))
		defer cancel()
	}
	err := shutdownAll(cctx, gens)
	if err == nil {
		return nil
	}
	s.mu.Lock()
	running := len(s.all) - len(s.idle)
	s.mu.Unlock()
	s.cancel(abort.ErrShutdown)
	gctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if shutdownAll(gctx, gens) != nil {
		for _, g := range gens {
			g.srv.Close()
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return &http1.DrainError{Requests: running, Err: err}
	}
	return err
}

func shutdownAll(ctx context.Context, gens []*generation) error {
	errc := make(chan error, len(gens))
	for _, g := range gens {
		go func() { errc <- g.srv.Shutdown(ctx) }()
	}
	var first error
	for range gens {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Close closes the listener and every connection at once.
func (s *stdServer) Close() error {
	var errs []error
	for _, g := range s.stopAccepting() {
		errs = append(errs, g.srv.Close())
	}
	return errors.Join(errs...)
}

// limit wraps h with the per-request limits net/http lacks (see
// stdServer).
func (s *stdServer) limit(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.h2 {
			// The guard's rules that HTTP/2 leaves standing (its HTTP/1.1
			// connections had them applied before parsing).
			if status, code, msg := listener.CheckHTTP2(r, int(s.maxHdr.Load())); status != 0 {
				writeRefusal(w, status, code, msg)
				return
			}
		}
		l := s.limits.Load()
		rc := http.NewResponseController(w)
		if r.Body != nil && r.Body != http.NoBody {
			_ = rc.SetReadDeadline(time.Now().Add(bodyTimeout(l)))
			r.Body = &bodyDeadline{ReadCloser: r.Body, rc: rc}
		}
		pw := &progressWriter{ResponseWriter: w, rc: rc, timeout: writeTimeout(l)}
		if !s.h2 {
			pw.crowded = s.crowded
		}
		if info, ok := r.Context().Value(connInfoKey{}).(*connInfo); ok {
			defer func() { info.ended.Store(s.seq.Add(1)) }()
		}
		h.ServeHTTP(pw, r)
	})
}

func bodyTimeout(l *http1.Limits) time.Duration {
	if l.ReadBodyTimeout > 0 {
		return l.ReadBodyTimeout
	}
	return 60 * time.Second
}

func writeTimeout(l *http1.Limits) time.Duration {
	if l.WriteTimeout > 0 {
		return l.WriteTimeout
	}
	return 30 * time.Second
}

// writeRefusal writes the gateway's JSON error shape (as
// internal/httperror does for refusals written to a connection).
func writeRefusal(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": msg}})
	body = append(body, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// bodyDeadline lifts the body's read deadline once the body has been read
// whole: from then on net/http's background read watches for the client
// leaving, and a deadline passing there would cancel the request.
type bodyDeadline struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *bodyDeadline) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// progressWriter bounds each write of the response by the write timeout:
// a write the client takes nothing of for that long fails. The deadline
// is moved at most every quarter timeout, so a stream of small writes
// does not pay for a deadline each.
type progressWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	armed   time.Time   // when the deadline was last set; zero: never
	crowded func() bool // HTTP/1.x only: the guard's Crowded
	wrote   bool        // the head (a final status) was written
}

func (p *progressWriter) arm() {
	now := time.Now()
	if p.armed.IsZero() || now.Sub(p.armed) >= p.timeout/4 {
		p.armed = now
		_ = p.rc.SetWriteDeadline(now.Add(p.timeout))
	}
}

func (p *progressWriter) Write(b []byte) (int, error) {
	if !p.wrote {
		p.WriteHeader(http.StatusOK)
	}
	p.arm()
	return p.ResponseWriter.Write(b)
}

// WriteHeader sends the head. Over HTTP/1.x, while connections wait for
// a slot, it says Connection: close, so that this one frees its slot
// (internal/http1 does the same).
func (p *progressWriter) WriteHeader(status int) {
	if !p.wrote && status >= 200 {
		p.wrote = true
		if p.crowded != nil && p.crowded() {
			p.Header().Set("Connection", "close")
		}
	}
	p.ResponseWriter.WriteHeader(status)
}

// Flush sends what was written, within the write timeout.
func (p *progressWriter) Flush() {
	p.arm()
	_ = p.rc.Flush()
}

// FlushError is Flush reporting the error, for http.ResponseController.
func (p *progressWriter) FlushError() error {
	p.arm()
	return p.rc.Flush()
}

// Unwrap gives http.ResponseController the underlying writer.
func (p *progressWriter) Unwrap() http.ResponseWriter { return p.ResponseWriter }
