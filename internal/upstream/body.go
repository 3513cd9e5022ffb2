package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
)

// Body states. Only the goroutine reading the body moves it from open to
// eof or failed; Close may race with it and moves open to closed.
const (
	bodyOpen int32 = iota
	bodyEOF
	bodyFailed
	bodyClosed
)

var errReadOnClosedBody = errors.New("upstream: read on closed response body")

// bodyReader is the response body handed to the caller. It reads straight
// from the connection's buffer, so a Read returns what has arrived, and it
// ends the exchange: at EOF the connection goes back to the pool when HTTP
// allows it, on an error or an early Close it is closed.
type bodyReader struct {
	c        *conn
	rc       io.ReadCloser // http.ReadResponse's body; never touched after the exchange ends
	ctx      context.Context
	stop     func() bool // unregisters the context's abort; nil without a cancellable context
	wrote    chan error  // the request body writer's result; nil without a request body
	reusable bool
	state    atomic.Int32
	err      error // sticky error once failed; written before state
}

// Read reads the body as it arrives.
func (b *bodyReader) Read(p []byte) (int, error) {
	switch b.state.Load() {
	case bodyEOF:
		return 0, io.EOF
	case bodyFailed:
		return 0, b.err
	case bodyClosed:
		return 0, errReadOnClosedBody
	}
	n, err := b.rc.Read(p)
	if err == nil {
		return n, nil
	}
	if err == io.EOF {
		b.finish(true, nil)
		return n, io.EOF
	}
	if b.ctx.Err() != nil {
		// Exactly the cause, as net/http returns it: a forwarder compares
		// the copy error with context.Canceled to stay quiet when the
		// client went away.
		err = context.Cause(b.ctx)
	} else {
		err = fmt.Errorf("upstream: reading response body from %s: %w", b.c.pool.addr, err)
	}
	b.finish(false, err)
	return n, err
}

// Close ends the exchange. Before EOF the rest of the body is unknown, so
// the connection cannot carry another exchange and is closed; that also
// unblocks a Read in progress on another goroutine.
func (b *bodyReader) Close() error {
	if b.state.CompareAndSwap(bodyOpen, bodyClosed) {
		if b.stop != nil {
			b.stop()
		}
		b.c.close()
		return nil
	}
	b.state.CompareAndSwap(bodyEOF, bodyClosed)
	return nil
}

// finish ends the exchange once, from the reading goroutine.
func (b *bodyReader) finish(eof bool, err error) {
	b.err = err
	next := bodyEOF
	if !eof {
		next = bodyFailed
	}
	if !b.state.CompareAndSwap(bodyOpen, next) {
		return
	}
	reuse := eof && b.reusable
	if b.stop != nil && !b.stop() {
		reuse = false // the context ended: its abort is closing the connection
	}
	if b.wrote != nil {
		// The request body must have been written in full for the
		// connection to be in a known state; a writer still busy (the
		// upstream answered early) is cut off by the close.
		select {
		case werr := <-b.wrote:
			reuse = reuse && werr == nil
		default:
			reuse = false
		}
	}
	if reuse {
		b.c.pool.put(b.c)
	} else {
		b.c.close()
	}
}
