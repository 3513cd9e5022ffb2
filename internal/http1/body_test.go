package http1_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/http1"
)

// bodyFault answers as the gateway does: 400 for a malformed or cut body,
// 408 for a slow one, 500 if the body's error is not a *BodyError, and
// "read" when the body was read whole.
func bodyFault(w http.ResponseWriter, err error) {
	var be *http1.BodyError
	switch {
	case err == nil:
		_, _ = io.WriteString(w, "read")
	case errors.As(err, &be) && be.Timeout:
		w.WriteHeader(http.StatusRequestTimeout)
	case errors.As(err, &be):
		w.WriteHeader(http.StatusBadRequest)
	default:
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, err.Error())
	}
}

// chunked is the head of a chunked POST.
const chunked = "POST /chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"

// TestMalformedBody: a body whose framing is broken is reported to the
// handler as a *BodyError, the handler's answer goes out at once with
// Connection: close, and nothing pipelined after the body is served.
func TestMalformedBody(t *testing.T) {
	tests := []struct{ name, body string }{
		{"0x as a chunk size", "0x5\r\nhello\r\n0\r\n\r\n"},
		{"chunk data without CRLF", "5\r\nhelloXX0\r\n\r\n"},
		{"chunk size not hex", "g\r\nhello\r\n0\r\n\r\n"},
		{"chunk size line too long", "5;" + strings.Repeat("x", 5000) + "\r\nhello\r\n0\r\n\r\n"},
	}
	for _, m := range modes {
		for _, tt := range tests {
			t.Run(m.name+"/"+tt.name, func(t *testing.T) {
				var served atomic.Int32
				h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					served.Add(1)
					_, err := io.ReadAll(r.Body)
					bodyFault(w, err)
				})
				ts := start(t, &http1.Server{Handler: h}, m.wrap)
				c := dial(t, ts.addr)
				c.send(chunked + tt.body + get("/next"))
				res, body := c.roundTrip("POST")
				if res.StatusCode != http.StatusBadRequest || !res.Close {
					t.Errorf("status %d, close %v (body %q); want 400 and Connection: close", res.StatusCode, res.Close, body)
				}
				c.expectClosed()
				if n := served.Load(); n != 1 {
					t.Errorf("served %d requests; want only the one with the bad body", n)
				}
			})
		}
	}
}

// TestBodyCutShort: a client that ends the connection mid-body gets the
// same treatment (it may still read the answer after a half-close).
func TestBodyCutShort(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, err := io.ReadAll(r.Body)
				bodyFault(w, err)
			})
			ts := start(t, &http1.Server{Handler: h}, m.wrap)
			c := dial(t, ts.addr)
			c.send("POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nonly ten b")
			if err := c.conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			res, body := c.roundTrip("POST")
			if res.StatusCode != http.StatusBadRequest || !res.Close {
				t.Errorf("status %d, close %v (body %q); want 400 and Connection: close", res.StatusCode, res.Close, body)
			}
			c.expectClosed()
		})
	}
}

// TestSlowBody: a body that does not arrive in time is a *BodyError with
// Timeout set, whether the bound is the server's ReadBodyTimeout or a read
// deadline the handler set, and the answer goes out at once: the server
// does not wait for the rest of a body whose read failed. The head timeout
// is long, so that a server draining the body first would hold the answer
// past the client's patience.
func TestSlowBody(t *testing.T) {
	const short = 200 * time.Millisecond
	tests := []struct {
		name    string
		server  time.Duration // ReadBodyTimeout
		handler time.Duration // a read deadline the handler sets, if any
	}{
		{"ReadBodyTimeout", short, 0},
		{"the handler's read deadline", time.Hour, short},
	}
	for _, m := range modes {
		for _, tt := range tests {
			t.Run(m.name+"/"+tt.name, func(t *testing.T) {
				h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if tt.handler > 0 {
						if err := http.NewResponseController(w).SetReadDeadline(time.Now().Add(tt.handler)); err != nil {
							t.Errorf("SetReadDeadline: %v", err)
						}
					}
					_, err := io.ReadAll(r.Body)
					bodyFault(w, err)
				})
				srv := &http1.Server{Handler: h, ReadBodyTimeout: tt.server, ReadHeaderTimeout: time.Hour}
				ts := start(t, srv, m.wrap)
				c := dial(t, ts.addr)
				c.send("POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nonly ten b")
				res, body := c.roundTrip("POST")
				if res.StatusCode != http.StatusRequestTimeout || !res.Close {
					t.Errorf("status %d, close %v (body %q); want 408 and Connection: close", res.StatusCode, res.Close, body)
				}
				c.expectClosed()
			})
		}
	}
}

// TestBodyReadCutWhenHandlerReturns: the body is being read on another
// goroutine (internal/upstream's body writer, whose upstream answered
// early) when the handler returns. The answer goes out at once, not when
// the client sends more, and that read ends.
func TestBodyReadCutWhenHandlerReturns(t *testing.T) {
	readErr := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first := make(chan struct{})
		go func() {
			buf := make([]byte, 100)
			_, _ = r.Body.Read(buf) // the part the client sent
			close(first)
			_, err := r.Body.Read(buf) // blocks: the rest never comes
			readErr <- err
		}()
		<-first
		_, _ = io.WriteString(w, "early answer")
	})
	ts := start(t, &http1.Server{Handler: h, ReadBodyTimeout: time.Hour, ReadHeaderTimeout: time.Hour}, guard)
	c := dial(t, ts.addr)
	c.send("POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nonly ten b")
	res, body := c.roundTrip("POST")
	if res.StatusCode != http.StatusOK || body != "early answer" || !res.Close {
		t.Errorf("status %d, body %q, close %v; want 200, early answer, Connection: close", res.StatusCode, body, res.Close)
	}
	c.expectClosed()
	select {
	case err := <-readErr:
		if !errors.Is(err, http.ErrBodyReadAfterClose) {
			t.Errorf("the cut read returned %v; want http.ErrBodyReadAfterClose", err)
		}
	case <-time.After(safety):
		t.Error("the body read on another goroutine never returned")
	}
}

// TestUnreadSlowBody: a handler answers without reading a body that is
// still arriving slowly. The server tries to read the rest to keep the
// connection, but only briefly: the answer is not held back for long.
func TestUnreadSlowBody(t *testing.T) {
	ts := start(t, &http1.Server{Handler: pathEcho, ReadBodyTimeout: time.Hour, ReadHeaderTimeout: time.Hour}, guard)
	c := dial(t, ts.addr)
	c.send("POST /ignored HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nonly ten b")
	res, body := c.roundTrip("POST")
	if res.StatusCode != http.StatusOK || body != "/ignored" || !res.Close {
		t.Errorf("status %d, body %q, close %v; want 200, /ignored, Connection: close", res.StatusCode, body, res.Close)
	}
	c.expectClosed()
}

// TestBodyDeadlineLiftedAtEnd: once the body has been read, its deadline
// no longer applies: the hang-up watch of a request that runs on must not
// take it for the client leaving.
func TestBodyDeadlineLiftedAtEnd(t *testing.T) {
	const bodyTimeout = 100 * time.Millisecond
	srv := &http1.Server{ReadBodyTimeout: bodyTimeout}
	ctxErr := make(chan error, 1)
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			t.Errorf("reading the body: %v", err)
		}
		waitFor(t, "the watcher to start", func() bool { return http1.Watches(srv) > 0 })
		// Outlive the body's deadline several times over; the context
		// must stay live all along.
		select {
		case <-r.Context().Done():
			ctxErr <- context.Cause(r.Context())
		case <-time.After(5 * bodyTimeout):
			ctxErr <- nil
		}
		_, _ = io.WriteString(w, "done")
	})
	ts := start(t, srv, guard)
	c := dial(t, ts.addr)
	c.send(post("/", "a body"))
	if res, body := c.roundTrip("POST"); res.StatusCode != http.StatusOK || body != "done" {
		t.Errorf("status %d, body %q; want 200, done", res.StatusCode, body)
	}
	if err := <-ctxErr; err != nil {
		t.Errorf("the request's context ended after its body was read: %v", err)
	}
}
