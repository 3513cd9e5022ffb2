package http1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
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

// maxDrainTime bounds that drain. It happens before the response's head is
// sent (so the head can say Connection: close if it fails): a client
// sending slowly would otherwise delay the handler's answer for as long as
// the drain may take, to save a connection that is cheap to open again.
const maxDrainTime = 500 * time.Millisecond

// rstAvoidance bounds how long a connection closed with unread input is
// drained first: closing a socket with unread input makes the kernel send
// RST, which can destroy the response in flight.
const rstAvoidance = 500 * time.Millisecond

var (
	readerPool   = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, ReadBufferSize) }}
	aLongTimeAgo = time.Unix(1, 0)
)

// ReadBufferSize is the size of a connection's read buffer. It bounds more
// than the reads' size: net/http's chunked body reader, which reads
// request bodies from it, refuses a chunk-size line or a trailer section
// that does not fit in it, and the framing guard (internal/listener)
// applies the same limits first (its tests check that the two agree).
const ReadBufferSize = 4096

// The framing guard's connections (listener.Guard) offer two methods the
// server uses when it finds them; a test of each contract, run behind the
// guard, fails if a method goes missing.

// readWaiter is a connection that can wait for input without reading it,
// so that an idle connection holds no read buffer.
type readWaiter interface{ WaitRead() error }

// hangUpWatcher is a connection with a read for the hang-up watch: it
// reports a client that left and keeps input for the next request, as
// Read does, but does not report a refusal of the input that follows the
// running request (the guard refuses a bad pipelined head that way), which
// would cancel a request that did nothing wrong.
type hangUpWatcher interface {
	WatchRead(p []byte) (int, error)
}

// conn is one client connection. Its goroutine reads each request, runs
// the handler and writes the response; only the watcher (and Close from
// Shutdown) touch it from elsewhere.
type conn struct {
	s       *Server
	rw      net.Conn
	crowd   crowdReporter // rw's listener, if it reports waiting connections
	remote  string
	tls     *tls.ConnectionState // nil in plaintext; shared by its requests, as net/http does
	state   atomic.Int32
	idleSeq atomic.Int64 // the server's idleSeq when its last response ended
	cr      connReader
	br      *bufio.Reader // nil while idle
	res     response      // reused by each request; handlers must not keep it
	body    *body         // the running request's, nil without one
	born    time.Time

	// Writes (see write). Only one goroutine writes at a time: the
	// connection's, or a body reader sending 100 Continue, ordered by the
	// body's cmu.
	armed   bool      // a write deadline is set on rw
	armTick int64     // the server's tick when it was set
	userWD  time.Time // the handler's own write deadline; zero: none

	// The watcher (see watch).
	armedAt  atomic.Int64 // 1 + the watch loop's tick when armed; 0: not armed
	wmu      sync.Mutex
	wstate   int
	wdone    chan struct{}
	aborting bool
	cancel   context.CancelCauseFunc // the running request's
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
		if !c.serveRequest(req) || s.shutdown.Load() || c.crowded() {
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
	if c.body != nil {
		c.body.noContinue() // waits for a 100 Continue being written
	}
	c.armed = false
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
	if !httpsyntax.ValidHost(req.Host) {
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
	ctx, cancel := context.WithCancelCause(c.s.baseContext())
	req = req.WithContext(ctx)
	req.RemoteAddr = c.remote
	req.TLS = c.tls
	c.setCancel(cancel)
	if !c.userWD.IsZero() {
		c.userWD, c.armed = time.Time{}, false // the last handler's
	}
	c.body = nil
	if req.Body == http.NoBody || req.Body == nil {
		_ = c.rw.SetReadDeadline(time.Time{})
		c.armWatch()
	} else {
		_ = c.rw.SetReadDeadline(time.Now().Add(c.s.readBodyTimeout()))
		// A body of its own per request: a transport goroutine still
		// reading the last one must find it closed, not this one.
		c.body = &body{c: c, r: req.Body, cont: expectContinue}
		req.Body = c.body
		w.reqBody = c.body
	}

	ok := c.runHandler(w, req)
	c.stopWatch()
	cancel(nil)
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
	// The connection's place in the idle order is taken before the
	// response's end goes out: once the client has it, it may use its
	// other connections, which must count as idle for less time.
	c.idleSeq.Store(c.s.idleSeq.Add(1))
	w.finish()
	if keep {
		keep = c.body.close() // drains only if the head went out earlier
	}
	c.body = nil
	if !keep {
		w.closeAfter = true
		w.lingering = true
	}
	// An idle connection must not keep its last exchange alive: the
	// request, and the header map whose values may point into the
	// handler's per-request state (measured: 9-12 MB per 10,000 idle
	// connections).
	clear(w.header)
	w.req, w.reqBody = nil, nil
	return !w.closeAfter && w.err == nil
}

// runHandler calls the handler. A panic closes the connection: net/http's
// http.ErrAbortHandler (a response cut off mid-stream) silently, anything
// else logged and, if nothing was sent yet, answered with a 500. An event
// stream the server itself ended (see endsCleanly) is finished, not cut.
func (c *conn) runHandler(w *response, req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			ok = false
			switch {
			case v == http.ErrAbortHandler && w.endsCleanly():
				w.closeAfter = true
				w.finish()
			case v != http.ErrAbortHandler:
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

// write sends p to the client, bounded by progress: it fails once the
// client has taken nothing for the server's WriteTimeout, and never while
// it keeps taking bytes, however slowly.
//
// The write deadline is set a quarter of the timeout ahead and moved
// forward by the server's coarse clock (the watch loop's tick), not at
// every write: a write that does not block costs one atomic load, where a
// clock read cost 200 ns and setting a deadline 550 ns on the 2-core
// virtual machine this was measured on. A deadline that passes is a
// checkpoint, not a verdict (see writeStalled).
func (c *conn) write(p []byte) error {
	if !c.armed || c.s.tick.Load()-c.armTick >= c.s.rearmTicks() {
		c.armWrite(time.Now().Add(c.s.writeTimeout() / 4))
	}
	n, err := c.rw.Write(p)
	if err == nil {
		return nil
	}
	return c.writeStalled(p[n:], n > 0, err)
}

// writeStalled goes on with a write that failed with err after sending
// some of it (progressed) or none. A deadline that passed is not yet a
// stall: bytes the client took during the wait count as taken now, so a
// flowing stream is never cut; the client is cut once it has taken
// nothing for the timeout since. The deadline stays at most a quarter of
// the timeout ahead, so the cut comes between one and one and a quarter
// timeouts after the client last took a byte.
func (c *conn) writeStalled(p []byte, progressed bool, err error) error {
	timeout := c.s.writeTimeout()
	var since time.Time // when the client last took bytes, as far as known
	for {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return err
		}
		now := time.Now()
		if !c.userWD.IsZero() && !now.Before(c.userWD) {
			return err // the handler's own deadline is final
		}
		switch {
		case progressed || since.IsZero():
			// The first deadline was at most a quarter of the timeout
			// after the write began, so counting from it is never early.
			since = now
		case now.Sub(since) >= timeout:
			return fmt.Errorf("%w: %w", ErrWriteTimeout, err)
		}
		next := since.Add(timeout)
		if soon := now.Add(timeout / 4); soon.Before(next) {
			next = soon
		}
		c.armWrite(next)
		var n int
		if n, err = c.rw.Write(p); err == nil {
			return nil
		}
		p, progressed = p[n:], n > 0
	}
}

// armWrite sets the connection's write deadline to t, or to the handler's
// own deadline if that is sooner.
func (c *conn) armWrite(t time.Time) {
	c.armed, c.armTick = true, c.s.tick.Load()
	if !c.userWD.IsZero() && c.userWD.Before(t) {
		t = c.userWD
	}
	_ = c.rw.SetWriteDeadline(t)
}

// cancelRequest cancels the running request's context with cause, and
// reports whether a request was running.
func (c *conn) cancelRequest(cause error) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.cancel == nil {
		return false
	}
	c.cancel(cause)
	return true
}

// crowded reports whether the connection should close after its response
// to give its slot to one waiting (see crowdReporter).
func (c *conn) crowded() bool { return c.crowd != nil && c.crowd.Crowded() }

func (c *conn) setCancel(f context.CancelCauseFunc) {
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
	var n int
	var err error
	if hw, ok := c.rw.(hangUpWatcher); ok {
		n, err = hw.WatchRead(c.cr.byteBuf[:])
	} else {
		n, err = c.rw.Read(c.cr.byteBuf[:])
	}
	c.wmu.Lock()
	if n == 1 {
		c.cr.hasByte = true
	}
	if err != nil && !c.aborting {
		c.cr.err = err
		if c.cancel != nil {
			c.cancel(nil)
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
