package http1_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/http1"
)

// stalled is what a handler writing to a client that stopped reading saw.
type stalled struct {
	err      error         // the Write that failed
	cause    error         // the request context's cause at that point
	stall    time.Duration // from the last Write that returned to the failure
	progress int           // bytes written before it
}

// TestWriteTimeoutCutsStalledClient: a client that stops reading is cut
// once it has taken nothing for WriteTimeout, not before (nor much
// after, though it had taken part of the write that stalled); the handler's
// Write fails with ErrWriteTimeout, the request's context is cancelled
// with that cause, and the connection is closed.
func TestWriteTimeoutCutsStalledClient(t *testing.T) {
	// Under four watch loop ticks the deadline moves at every write;
	// above, with the server's tick.
	for _, timeout := range []time.Duration{200 * time.Millisecond, 800 * time.Millisecond} {
		for _, m := range modes {
			t.Run(m.name+"/"+timeout.String(), func(t *testing.T) {
				testStalledClient(t, timeout, m.wrap)
			})
		}
	}
}

func testStalledClient(t *testing.T, timeout time.Duration, wrap func(net.Listener) net.Listener) {
	got := make(chan stalled, 1)
	chunk := bytes.Repeat([]byte("s"), 64<<10)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var s stalled
		last := time.Now()
		for {
			if _, err := w.Write(chunk); err != nil {
				s.err, s.cause, s.stall = err, context.Cause(r.Context()), time.Since(last)
				break
			}
			s.progress += len(chunk)
			last = time.Now()
		}
		got <- s
	})
	srv := &http1.Server{Handler: h, WriteTimeout: timeout}
	ts := start(t, srv, wrap)
	c := dial(t, ts.addr)
	c.send(get("/stream"))
	// The client reads nothing until the handler is done.
	var s stalled
	select {
	case s = <-got:
	case <-time.After(safety):
		t.Fatalf("the handler was still writing to a client that reads nothing after %v", safety)
	}
	if !errors.Is(s.err, http1.ErrWriteTimeout) {
		t.Errorf("Write failed with %v; want an error wrapping http1.ErrWriteTimeout", s.err)
	}
	if s.cause != http1.ErrWriteTimeout {
		t.Errorf("request context cause %v; want http1.ErrWriteTimeout", s.cause)
	}
	t.Logf("cut after %v without progress, %d bytes written", s.stall, s.progress)
	// The server promises one to one and a quarter timeouts; twice the
	// timeout leaves room for a loaded machine's scheduling.
	if s.stall < timeout || s.stall > 2*timeout {
		t.Errorf("cut after %v without progress; want between the write timeout %v and twice that", s.stall, timeout)
	}
	if s.progress == 0 {
		t.Error("no write succeeded: the socket buffers should have taken some")
	}
	// What was sent, then the end: the connection is closed.
	_ = c.conn.SetReadDeadline(time.Now().Add(safety))
	if _, err := io.Copy(io.Discard, c.br); err != nil && !isReset(err) {
		t.Errorf("reading to the end of the connection: %v; want it closed", err)
	}
	waitFor(t, "the server to forget the connection", func() bool { return http1.Conns(srv) == 0 })
}

// TestHandlerWriteDeadline: a deadline the handler sets through
// http.ResponseController is kept, and is final, under a longer
// WriteTimeout.
func TestHandlerWriteDeadline(t *testing.T) {
	got := make(chan error, 1)
	chunk := bytes.Repeat([]byte("d"), 64<<10)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := http.NewResponseController(w).SetWriteDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			got <- err
			return
		}
		for {
			if _, err := w.Write(chunk); err != nil {
				got <- err
				return
			}
		}
	})
	ts := start(t, &http1.Server{Handler: h, WriteTimeout: time.Hour}, guard)
	c := dial(t, ts.addr)
	c.send(get("/"))
	select {
	case err := <-got:
		if !errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, http1.ErrWriteTimeout) {
			t.Errorf("Write failed with %v; want the handler's own deadline, not the write timeout", err)
		}
	case <-time.After(safety):
		t.Fatal("the handler's write deadline did not end the write")
	}
}
