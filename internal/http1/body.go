package http1

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// BodyError is what a request body's Read returns when the client failed
// to send the body: it timed out (ReadBodyTimeout, or a read deadline the
// handler set), its framing was malformed (a bad chunk size line, chunk
// data without its CRLF, a trailer net/http refuses, or bytes the framing
// guard refused), or the connection ended before the body did. The
// server closes the connection after such a request without reading
// further, so the handler's answer goes out at once.
type BodyError struct {
	// Timeout reports that the body did not arrive in time; otherwise it
	// was malformed or cut short.
	Timeout bool
	// Err is the cause: the body parser's or the connection's error.
	Err error
}

func (e *BodyError) Error() string {
	if e.Timeout {
		return "http1: reading the request body: timed out: " + e.Err.Error()
	}
	return "http1: reading the request body: malformed or cut short: " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *BodyError) Unwrap() error { return e.Err }

// ErrWriteTimeout is the cause of a request context cancelled, and is
// wrapped by the error a response's Write returns, when the client has
// taken none of the response for the server's WriteTimeout.
var ErrWriteTimeout = errors.New("http1: the client took none of the response within the write timeout")

// body is the request body the handler reads. It sends 100 Continue on the
// first read when the client asked for it and nothing of the response has
// been committed, arms the watcher at the end, and refuses reads once the
// handler returned.
type body struct {
	mu     sync.Mutex // serialises reads and the server's close
	c      *conn
	r      io.ReadCloser
	eof    bool
	err    error       // the read failed: the body cannot be read past it
	closed bool        // the handler returned (or closed the body)
	cut    atomic.Bool // the server cut a read in progress when the handler returned
	// cont says the client waits for 100 Continue. The upstream client may
	// read the body on its own goroutine while the handler commits the
	// response: cmu orders the interim answer before the head, or drops it.
	cmu  sync.Mutex
	cont bool
}

func (b *body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return 0, http.ErrBodyReadAfterClose
	case b.eof:
		return 0, io.EOF
	case b.err != nil:
		return 0, b.err
	}
	b.cmu.Lock()
	if b.cont {
		b.cont = false
		if err := b.c.write([]byte("HTTP/1.1 100 Continue\r\n\r\n")); err != nil {
			b.cmu.Unlock()
			b.err = b.fault(err)
			return 0, b.err
		}
	}
	b.cmu.Unlock()
	n, err := b.r.Read(p)
	switch {
	case err == io.EOF:
		b.eof = true
		// The body's deadline (ReadBodyTimeout) must not cut the
		// watcher's read, which would take it for a hang-up.
		_ = b.c.rw.SetReadDeadline(time.Time{})
		b.c.armWatch()
	case err != nil:
		b.err = b.fault(err)
		err = b.err
	}
	return n, err
}

// fault turns a failed read or 100 Continue into the error the handler
// sees.
func (b *body) fault(err error) error {
	if b.cut.Load() {
		return http.ErrBodyReadAfterClose
	}
	var ne net.Error
	return &BodyError{Timeout: errors.As(err, &ne) && ne.Timeout(), Err: err}
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
// it was read and discarded within maxDrainBytes and maxDrainTime. A body
// whose read failed is never drained: the client already failed to send
// it, and the handler's answer must not wait for it.
func (b *body) close() bool {
	if b == nil {
		return true
	}
	if !b.mu.TryLock() {
		// A read is still running on another goroutine (the upstream
		// client's body writer, whose upstream answered early): cut it
		// short. What is left of the body is unknown, so the connection
		// cannot be kept.
		b.cut.Store(true)
		_ = b.c.rw.SetReadDeadline(aLongTimeAgo)
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		return false
	}
	defer b.mu.Unlock()
	b.closed = true
	switch {
	case b.eof:
		return true
	case b.err != nil:
		return false
	case b.waiting():
		return false // the client is waiting for our word before sending it
	}
	_ = b.c.rw.SetReadDeadline(time.Now().Add(min(maxDrainTime, b.c.s.readHeaderTimeout())))
	n, err := io.CopyN(io.Discard, b.r, maxDrainBytes+1)
	b.eof = err == io.EOF
	return b.eof && n <= maxDrainBytes
}
