package http1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyward/keyward/internal/httperror"
	"github.com/keyward/keyward/internal/httpsyntax"
)

// Connection states, for Shutdown: only an idle connection is closed under
// a client's feet, and only before it has started reading a request.
const (
	stateNew int32 = iota // no request yet: closed by Shutdown after newGrace
	stateIdle
	stateActive
	stateClosing
)

// newGrace is how long Shutdown lets a new connection send its first
// request before closing it (net/http waits 5 s too): its client may have
// sent a request that is still on its way.
const newGrace = 5 * time.Second

// watchTick is the period of the server's watch loop (see watchLoop): a
// request is watched for a client that hung up once it has run two to
// three ticks (200-300 ms). Below that, watching would cost more than the
// work it could save: the upstream call finishes anyway, and the hang-up
// is noticed when the response is written. Under overload, when queueing
// stretches every request, a shorter delay would add a goroutine and a
// read to many of them exactly when the server can least afford it. One
// loop per server, not a timer per request: a timer due sooner than any
// other wakes the runtime's network poller, which measured 20 us per
// request (BenchmarkProxy/upstream/server).
const watchTick = 100 * time.Millisecond

// maxDrainBytes is how much of a request body the handler left unread the
// server reads and discards to keep the connection; beyond it, it closes
// (net/http's maxPostHandlerReadBytes).
const maxDrainBytes = 256 << 10

// rstAvoidance bounds how long a connection closed with unread input is
// drained first: closing a socket with unread input makes the kernel send
// RST, which can destroy the response in flight.
const rstAvoidance = 500 * time.Millisecond

var (
	readerPool   = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}
	aLongTimeAgo = time.Unix(1, 0)
)

// readWaiter is a connection that can wait for input without reading it:
// the framing guard's connections (listener.Guard).
type readWaiter interface{ WaitRead() error }

// conn is one client connection. Its goroutine reads each request, runs
// the handler and writes the response; only the watcher (and Close from
// Shutdown) touch it from elsewhere.
type conn struct {
	s      *Server
	rw     net.Conn
	remote string
	state  atomic.Int32
	cr     connReader
	br     *bufio.Reader // nil while idle
	res    response      // reused by each request; handlers must not keep it
	body   *body         // the running request's, nil without one
	born   time.Time

	// The watcher (see watch).
	armedAt  atomic.Int64 // 1 + the watch loop's tick when armed; 0: not armed
	wmu      sync.Mutex
	wstate   int
	wdone    chan struct{}
	aborting bool
	cancel   context.CancelFunc // the running request's
}

// Watcher states.
const (
	watchOff = iota
	watchArmed
	watchReading
	watchDone
)

// connReader is what the read buffer reads from: the connection, with a
// byte the watcher may have read first, and a bound on the head's size.
type connReader struct {
	c       *conn
	hasByte bool
	byteBuf [1]byte
	err     error // the watcher's read error: the client is gone
	limited bool
	remain  int
}

func (cr *connReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if cr.limited {
		if cr.remain <= 0 {
			return 0, errHeadTooLarge
		}
		p = p[:min(len(p), cr.remain)]
	}
	var n int
	var err error
	switch {
	case cr.hasByte:
		p[0], cr.hasByte, n = cr.byteBuf[0], false, 1
	case cr.err != nil:
		err = cr.err
	default:
		n, err = cr.c.rw.Read(p)
	}
	cr.remain -= n
	return n, err
}

var errHeadTooLarge = errors.New("http1: request head too large")

func (c *conn) serve() {
	defer c.close()
	s := c.s
	timeout := s.readHeaderTimeout() // a new connection gets no idle allowance
	for {
		if c.br == nil || (c.br.Buffered() == 0 && !c.cr.hasByte) {
			if c.cr.err != nil {
				return // the watcher saw the client leave
			}
			c.releaseReader()
			_ = c.rw.SetReadDeadline(time.Now().Add(timeout))
			if w, ok := c.rw.(readWaiter); ok {
				if err := w.WaitRead(); err != nil {
					return
				}
			}
			c.br = readerPool.Get().(*bufio.Reader)
			c.br.Reset(&c.cr)
			if _, err := c.br.Peek(1); err != nil {
				return // closed, timed out, or refused by the guard (see refuse)
			}
		}
		if !c.state.CompareAndSwap(stateIdle, stateActive) && !c.state.CompareAndSwap(stateNew, stateActive) {
			return // Shutdown closed it
		}
		_ = c.rw.SetReadDeadline(time.Now().Add(s.readHeaderTimeout()))
		c.cr.limited, c.cr.remain = true, s.maxHeaderBytes()+4096
		req, err := http.ReadRequest(c.br)
		c.cr.limited = false
		if err != nil {
			c.refuse(err)
			return
		}
		if !c.serveRequest(req) || s.shutdown.Load() {
			return
		}
		c.state.Store(stateIdle)
		timeout = s.idleTimeout()
	}
}

// refuse answers a request that could not be read. A connection that
// ended, timed out, or was refused by the guard (whose Close sends the
// refusal) is closed without a word, as net/http does.
func (c *conn) refuse(err error) {
	var ne net.Error
	var oe *net.OpError
	switch {
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &ne) && ne.Timeout() ||
		errors.As(err, &oe) && oe.Op == "read":
		return
	case errors.Is(err, errHeadTooLarge):
		c.reply(http.StatusRequestHeaderFieldsTooLarge, "headers_too_large", "request line and headers too large")
	default:
		c.reply(http.StatusBadRequest, "bad_request", "malformed HTTP request")
	}
}

// reply writes a whole refusal and marks the connection for closing.
func (c *conn) reply(status int, code, msg string) {
	_ = c.rw.SetWriteDeadline(time.Now().Add(rstAvoidance))
	_, _ = c.rw.Write(httperror.Response(status, code, msg))
	_ = c.rw.SetWriteDeadline(time.Time{})
	c.res.lingering = true
}

// check applies the rules net/http's server adds to http.ReadRequest's
// parsing (the guard applies them first on keyward's public listener).
func check(req *http.Request) (status int, code, msg string) {
	if req.ProtoMajor != 1 {
		return http.StatusHTTPVersionNotSupported, "unsupported_version", "unsupported HTTP version; this listener speaks HTTP/1.0 and HTTP/1.1"
	}
	// http.ReadRequest refused repeated Host headers and moved the one
	// left to req.Host.
	if req.ProtoAtLeast(1, 1) && req.Host == "" {
		return http.StatusBadRequest, "bad_request", "missing Host header"
	}
	if !validHost(req.Host) {
		return http.StatusBadRequest, "bad_request", "malformed Host header"
	}
	for name, vs := range req.Header {
		if !httpsyntax.IsToken(name) {
			return http.StatusBadRequest, "bad_request", "malformed header name"
		}
		for _, v := range vs {
			if !validValue(v) {
				return http.StatusBadRequest, "bad_request", "header value contains a control character"
			}
		}
	}
	return 0, "", ""
}

// serveRequest runs the handler for req and finishes its response. It
// reports whether the connection may carry another request.
func (c *conn) serveRequest(req *http.Request) bool {
	w := &c.res
	w.reset(c, req)
	if status, code, msg := check(req); status != 0 {
		c.reply(status, code, msg)
		return false
	}
	expectContinue := false
	if ex, ok := req.Header["Expect"]; ok {
		if len(ex) != 1 || !strings.EqualFold(ex[0], "100-continue") || !req.ProtoAtLeast(1, 1) {
			c.reply(http.StatusExpectationFailed, "expectation_failed", "the only expectation supported is 100-continue")
			return false
		}
		delete(req.Header, "Expect")
		expectContinue = true
	}
	ctx, cancel := context.WithCancel(c.s.baseContext())
	req = req.WithContext(ctx)
	req.RemoteAddr = c.remote
	c.setCancel(cancel)
	_ = c.rw.SetReadDeadline(time.Time{})
	c.body = nil
	if req.Body == http.NoBody || req.Body == nil {
		c.armWatch()
	} else {
		// A body of its own per request: a transport goroutine still
		// reading the last one must find it closed, not this one.
		c.body = &body{c: c, r: req.Body, cont: expectContinue}
		req.Body = c.body
		w.reqBody = c.body
	}

	ok := c.runHandler(w, req)
	c.stopWatch()
	cancel()
	c.setCancel(nil)
	if !ok {
		return false
	}
	// While the head is unsent, what is left of the body is read first, so
	// that a response on a connection about to close says Connection:
	// close (RFC 9112 section 9.6; net/http does the same). Otherwise the
	// client may send its next request on a connection already closing.
	keep := w.committed || c.body.close()
	if !keep {
		w.closeAfter = true
	}
	w.finish()
	if keep {
		keep = c.body.close() // drains only if the head went out earlier
	}
	c.body = nil
	if !keep {
		w.closeAfter = true
		w.lingering = true
	}
	return !w.closeAfter && w.err == nil
}

// runHandler calls the handler. A panic closes the connection: net/http's
// http.ErrAbortHandler (a response cut off mid-stream) silently, anything
// else logged and, if nothing was sent yet, answered with a 500.
func (c *conn) runHandler(w *response, req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			ok = false
			if v != http.ErrAbortHandler {
				c.s.logger().Error("http1: handler panic", "panic", v)
				if !w.committed {
					w.buf = w.buf[:0]
					c.reply(http.StatusInternalServerError, "internal_error", "internal error")
				}
			}
			w.release()
		}
	}()
	c.s.Handler.ServeHTTP(w, req)
	return true
}

func (c *conn) releaseReader() {
	if c.br != nil {
		c.br.Reset(nil)
		readerPool.Put(c.br)
		c.br = nil
	}
}

func (c *conn) close() {
	c.stopWatch()
	c.res.release()
	if c.res.lingering {
		// Unread input would turn the close into a RST that can destroy
		// the response: stop sending, drain a little, then close.
		if cw, ok := c.rw.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			_ = c.rw.SetReadDeadline(time.Now().Add(rstAvoidance))
			_, _ = io.CopyN(io.Discard, c.rw, maxDrainBytes)
		}
	}
	c.rw.Close()
	c.releaseReader()
	c.s.forget(c)
}

func (c *conn) setCancel(f context.CancelFunc) {
	c.wmu.Lock()
	c.cancel = f
	c.wmu.Unlock()
}

// armWatch asks the watch loop to watch the connection once the request
// has run a while. It is called when the request's body has been read:
// from then on any input is either the next pipelined request or the
// client leaving.
func (c *conn) armWatch() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wstate != watchOff {
		return
	}
	c.wstate = watchArmed
	c.armedAt.Store(c.s.tick.Load() + 1) // +1: zero means not armed
}

// watchDue reports, to the watch loop at tick, whether the connection's
// request has been armed for two full ticks (200-300 ms), and if so claims
// the watch.
func (c *conn) watchDue(tick int64) bool {
	if at := c.armedAt.Load(); at == 0 || tick-(at-1) < 3 {
		return false
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wstate != watchArmed {
		return false
	}
	c.wstate = watchReading
	c.armedAt.Store(0)
	return true
}

// watch reads one byte from a connection whose request is running. A byte
// is kept for the next request; an error means the client is gone, and
// the request's context is cancelled so the upstream call stops.
func (c *conn) watch() {
	n, err := c.rw.Read(c.cr.byteBuf[:])
	c.wmu.Lock()
	if n == 1 {
		c.cr.hasByte = true
	}
	if err != nil && !c.aborting {
		c.cr.err = err
		if c.cancel != nil {
			c.cancel()
		}
	}
	c.wstate = watchDone
	c.wmu.Unlock()
	c.wdone <- struct{}{}
}

// stopWatch ends the watch when the request is done. A read in progress is
// cut short with a past deadline, and its timeout is not taken for a
// hang-up.
func (c *conn) stopWatch() {
	c.wmu.Lock()
	switch c.wstate {
	case watchOff:
		c.wmu.Unlock()
		return
	case watchArmed:
		c.armedAt.Store(0)
		c.wstate = watchOff
		c.wmu.Unlock()
		return
	case watchReading:
		c.aborting = true
		c.wmu.Unlock()
		_ = c.rw.SetReadDeadline(aLongTimeAgo)
		<-c.wdone
	case watchDone:
		c.wmu.Unlock()
		<-c.wdone
	}
	c.wmu.Lock()
	c.aborting = false
	c.wstate = watchOff
	c.wmu.Unlock()
}

// body is the request body the handler reads. It sends 100 Continue on the
// first read when the client asked for it and nothing of the response has
// been committed, arms the watcher at the end, and refuses reads once the
// handler returned.
type body struct {
	mu     sync.Mutex // serialises reads and the server's close
	c      *conn
	r      io.ReadCloser
	eof    bool
	closed bool
	// cont says the client waits for 100 Continue. The upstream client may
	// read the body on its own goroutine while the handler commits the
	// response: cmu orders the interim answer before the head, or drops it.
	cmu  sync.Mutex
	cont bool
}

func (b *body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.eof {
		return 0, io.EOF
	}
	b.cmu.Lock()
	if b.cont {
		b.cont = false
		if _, err := b.c.rw.Write([]byte("HTTP/1.1 100 Continue\r\n\r\n")); err != nil {
			b.cmu.Unlock()
			return 0, err
		}
	}
	b.cmu.Unlock()
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.eof = true
		b.c.armWatch()
	}
	return n, err
}

// noContinue is called when the response's head is committed: from then
// on a 100 Continue would land after it.
func (b *body) noContinue() {
	b.cmu.Lock()
	b.cont = false
	b.cmu.Unlock()
}

// waiting reports whether the client still waits for 100 Continue.
func (b *body) waiting() bool {
	b.cmu.Lock()
	defer b.cmu.Unlock()
	return b.cont
}

// Close marks the body closed for the handler; the server reads what is
// left of it (see close).
func (b *body) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// close ends the body after the handler returned and reports whether the
// connection can carry another request: there was no body, or the rest of
// it was read and discarded within maxDrainBytes and the head timeout.
func (b *body) close() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	if b.eof {
		return true
	}
	if b.waiting() {
		return false // the client is waiting for our word before sending it
	}
	_ = b.c.rw.SetReadDeadline(time.Now().Add(b.c.s.readHeaderTimeout()))
	n, err := io.CopyN(io.Discard, b.r, maxDrainBytes+1)
	b.eof = err == io.EOF
	return b.eof && n <= maxDrainBytes
}
