package http1_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/http1"
	"github.com/keyward/keyward/internal/listener"
)

// safety bounds every wait in these tests, so a broken server fails a test
// instead of hanging it. No test waits on it to reach a state.
const safety = 5 * time.Second

// guard puts the framing guard in front of ln, as keyward's public
// listener does.
func guard(ln net.Listener) net.Listener { return listener.Guard(ln, listener.Options{}) }

// modes are the two ways a Server meets its clients: behind the guard
// (production), whose connections can wait for input without reading, and
// on a bare TCP listener.
var modes = []struct {
	name string
	wrap func(net.Listener) net.Listener
}{
	{"guarded", guard},
	{"plain", nil},
}

// testServer is a Server serving on 127.0.0.1.
type testServer struct {
	srv    *http1.Server
	addr   string
	served chan struct{} // closed when Serve returned
	err    error         // what Serve returned
}

// start serves srv on a new loopback listener, wrapped by wrap unless it is
// nil, and closes it when the test ends, waiting for Serve to return. A
// nil srv.Logger is set to discard.
func start(t testing.TB, srv *http1.Server, wrap func(net.Listener) net.Listener) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		ln = wrap(ln)
	}
	if srv.Logger == nil {
		srv.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ts := &testServer{srv: srv, addr: ln.Addr().String(), served: make(chan struct{})}
	go func() {
		defer close(ts.served)
		ts.err = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		if err := ts.wait(); !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v; want http.ErrServerClosed", err)
		}
	})
	return ts
}

// wait waits for Serve to return and returns its error.
func (ts *testServer) wait() error {
	select {
	case <-ts.served:
		return ts.err
	case <-time.After(safety):
		return errors.New("Serve did not return")
	}
}

// client is a raw TCP connection to a testServer.
type client struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &client{t: t, conn: conn, br: bufio.NewReader(conn)}
}

// send writes raw request bytes in one write.
func (c *client) send(s string) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(safety))
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("sending a request: %v", err)
	}
}

// response reads the head of the next response to a request with the given
// method; its body is left to the caller.
func (c *client) response(method string) *http.Response {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(safety))
	res, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		c.t.Fatalf("reading the response to %s: %v", method, err)
	}
	return res
}

// roundTrip reads the next whole response to a request with the given
// method and returns it with its body.
func (c *client) roundTrip(method string) (*http.Response, string) {
	c.t.Helper()
	res := c.response(method)
	b, err := io.ReadAll(res.Body)
	if err != nil {
		c.t.Fatalf("reading the body of a %d response: %v", res.StatusCode, err)
	}
	return res, string(b)
}

// line reads one raw line, CRLF included.
func (c *client) line() string {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(safety))
	s, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading a line (got %q): %v", s, err)
	}
	return s
}

// expectClosed fails the test unless the server closes the connection with
// nothing more to read.
func (c *client) expectClosed() {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(safety))
	var b [64]byte
	n, err := c.br.Read(b[:])
	switch {
	case n > 0:
		c.t.Fatalf("read %q; want the connection closed", b[:n])
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.t.Fatalf("the connection is still open after %v; want it closed", safety)
	case err == nil:
		c.t.Fatal("empty read; want the connection closed")
	}
	// io.EOF, or a reset: either way the server closed it.
}

// get is a minimal HTTP/1.1 GET for path.
func get(path string) string { return "GET " + path + " HTTP/1.1\r\nHost: test\r\n\r\n" }

// post is an HTTP/1.1 POST of body to path.
func post(path, body string) string {
	return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n%s", path, len(body), body)
}

// pathEcho answers each request with its path.
var pathEcho = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	_, _ = io.WriteString(w, r.URL.Path)
})

// errorCode returns error.code of a JSON error response, failing the test
// if the body is not the gateway's error shape.
func errorCode(t *testing.T, res *http.Response, body string) string {
	t.Helper()
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q; want application/json", ct)
	}
	var e struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("body %q is not the JSON error shape (%v)", body, err)
	}
	return e.Error.Code
}

// syncBuffer is a bytes.Buffer the server's goroutines may log to while
// the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestKeepAlive(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ts := start(t, &http1.Server{Handler: pathEcho}, m.wrap)
			c := dial(t, ts.addr)
			for _, path := range []string{"/one", "/two", "/three"} {
				c.send(get(path))
				res, body := c.roundTrip("GET")
				if res.StatusCode != 200 || body != path || res.Close {
					t.Fatalf("%s: status %d, body %q, close %v; want 200, %q, keep-alive", path, res.StatusCode, body, res.Close, path)
				}
			}
		})
	}
}

func TestPipelining(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ts := start(t, &http1.Server{Handler: pathEcho}, m.wrap)
			c := dial(t, ts.addr)
			c.send(get("/first") + post("/second", "some body") + get("/third"))
			for _, want := range []string{"/first", "/second", "/third"} {
				if res, body := c.roundTrip("GET"); res.StatusCode != 200 || body != want {
					t.Fatalf("status %d, body %q; want 200, %q", res.StatusCode, body, want)
				}
			}
		})
	}
}

func TestExpectContinue(t *testing.T) {
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ignore" {
			_, _ = io.WriteString(w, "not read")
			return
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading the body: %v", err)
		}
		_, _ = w.Write(b)
	})
	head := func(path, expect string) string {
		return "POST " + path + " HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: " + expect + "\r\n\r\n"
	}

	t.Run("read", func(t *testing.T) {
		ts := start(t, &http1.Server{Handler: echo}, guard)
		c := dial(t, ts.addr)
		c.send(head("/", "100-continue"))
		if got := c.line() + c.line(); got != "HTTP/1.1 100 Continue\r\n\r\n" {
			t.Fatalf("interim response %q; want 100 Continue", got)
		}
		c.send("hello")
		if res, body := c.roundTrip("POST"); res.StatusCode != 200 || body != "hello" {
			t.Fatalf("status %d, body %q; want 200, hello", res.StatusCode, body)
		}
		c.send(get("/next"))
		if _, body := c.roundTrip("GET"); body != "" {
			t.Fatalf("next request: body %q; want the echo of an empty body", body)
		}
	})

	t.Run("not read", func(t *testing.T) {
		ts := start(t, &http1.Server{Handler: echo}, guard)
		c := dial(t, ts.addr)
		c.send(head("/ignore", "100-continue"))
		res, body := c.roundTrip("POST")
		if res.StatusCode != 200 || body != "not read" {
			t.Fatalf("status %d, body %q; want the final 200 and no 100 Continue", res.StatusCode, body)
		}
		if !res.Close {
			t.Error("no Connection: close; the unsent body leaves the connection unusable")
		}
		c.expectClosed()
	})

	t.Run("unsupported", func(t *testing.T) {
		ts := start(t, &http1.Server{Handler: echo}, guard)
		c := dial(t, ts.addr)
		c.send(head("/", "something-else") + "hello")
		res, body := c.roundTrip("POST")
		if res.StatusCode != http.StatusExpectationFailed || !res.Close {
			t.Fatalf("status %d, close %v; want 417 and Connection: close", res.StatusCode, res.Close)
		}
		if code := errorCode(t, res, body); code != "expectation_failed" {
			t.Errorf("error code %q; want expectation_failed", code)
		}
		c.expectClosed()
	})
}

func TestUnreadBody(t *testing.T) {
	ignore := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.URL.Path)
	})

	t.Run("small", func(t *testing.T) {
		ts := start(t, &http1.Server{Handler: ignore}, guard)
		c := dial(t, ts.addr)
		c.send(post("/unread", strings.Repeat("x", 1000)))
		if _, body := c.roundTrip("POST"); body != "/unread" {
			t.Fatalf("body %q; want /unread", body)
		}
		c.send(get("/next"))
		if res, body := c.roundTrip("GET"); res.StatusCode != 200 || body != "/next" {
			t.Fatalf("next request: status %d, body %q; want 200, /next", res.StatusCode, body)
		}
	})

	t.Run("large", func(t *testing.T) {
		ts := start(t, &http1.Server{Handler: ignore}, guard)
		c := dial(t, ts.addr)
		const size = 1 << 20 // well past the 256 KiB the server drains
		c.send(fmt.Sprintf("POST /unread HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n", size))
		// The body is sent alongside: the server may stop reading it, and
		// the write then fails, which is the point.
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			_, _ = c.conn.Write(make([]byte, size))
		}()
		t.Cleanup(func() { c.conn.Close(); <-wrote })
		res, body := c.roundTrip("POST")
		if res.StatusCode != 200 || body != "/unread" {
			t.Fatalf("status %d, body %q; want 200, /unread", res.StatusCode, body)
		}
		if !res.Close {
			t.Error("no Connection: close, though the server closes the connection")
		}
		c.expectClosed()
	})
}

func TestHangUpCancelsContext(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			started := make(chan struct{})
			ended := make(chan error, 1)
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(started)
				select {
				case <-r.Context().Done():
					ended <- nil
				case <-time.After(safety):
					ended <- errors.New("the request's context was not cancelled after the client hung up")
				}
			})
			ts := start(t, &http1.Server{Handler: h}, m.wrap)
			c := dial(t, ts.addr)
			c.send(get("/"))
			<-started
			c.conn.Close()
			select {
			case err := <-ended:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(2 * safety):
				t.Fatal("the handler did not return")
			}
		})
	}
}

// TestPipelinedDuringSlowRequest sends a second request while the first
// one's handler runs long enough to be watched, so that the watcher reads the
// second request's first byte: it must be kept, and not be taken for a
// hang-up.
func TestPipelinedDuringSlowRequest(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			srv := &http1.Server{}
			watching, sent := make(chan struct{}), make(chan struct{})
			srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/slow" {
					// Run until the watch loop has started watching this
					// connection, then let the next request arrive while
					// the watcher reads.
					waitFor(t, "the watcher to start", func() bool { return http1.Watches(srv) > 0 })
					close(watching)
					<-sent
					waitFor(t, "the watcher to take the next request's first byte", func() bool { return http1.PendingByte(srv) })
					if err := r.Context().Err(); err != nil {
						t.Errorf("context of the slow request: %v; want it live", err)
					}
				}
				// The method shows a lost first byte ("ET" is a valid one).
				_, _ = io.WriteString(w, r.Method+" "+r.URL.Path)
			})
			ts := start(t, srv, m.wrap)
			c := dial(t, ts.addr)
			c.send(get("/slow"))
			<-watching
			c.send(get("/next"))
			close(sent)
			for _, want := range []string{"GET /slow", "GET /next"} {
				if res, body := c.roundTrip("GET"); res.StatusCode != 200 || body != want {
					t.Fatalf("status %d, body %q; want 200, %q", res.StatusCode, body, want)
				}
			}
		})
	}
}

func TestMalformedRequests(t *testing.T) {
	tests := []struct {
		name     string
		request  string
		status   int
		code     string
		maxBytes int
	}{
		{
			name:    "garbage",
			request: "GARBAGE\r\n\r\n",
			status:  http.StatusBadRequest,
			code:    "bad_request",
		},
		{
			name:    "missing host",
			request: "GET / HTTP/1.1\r\n\r\n",
			status:  http.StatusBadRequest,
			code:    "bad_request",
		},
		{
			name:    "bad host",
			request: "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
			status:  http.StatusBadRequest,
			code:    "bad_request",
		},
		{
			name:     "head too large",
			request:  "GET / HTTP/1.1\r\nHost: test\r\nX-Big: " + strings.Repeat("x", 16<<10) + "\r\n\r\n",
			status:   http.StatusRequestHeaderFieldsTooLarge,
			code:     "headers_too_large",
			maxBytes: 1 << 10,
		},
		{
			name:    "HTTP/2 version",
			request: "GET / HTTP/2.0\r\nHost: test\r\n\r\n",
			status:  http.StatusHTTPVersionNotSupported,
			code:    "unsupported_version",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var called atomic.Bool
			h := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called.Store(true) })
			ts := start(t, &http1.Server{Handler: h, MaxHeaderBytes: tt.maxBytes}, nil)
			c := dial(t, ts.addr)
			c.send(tt.request)
			res, body := c.roundTrip("GET")
			if res.StatusCode != tt.status {
				t.Errorf("status %d; want %d", res.StatusCode, tt.status)
			}
			if code := errorCode(t, res, body); code != tt.code {
				t.Errorf("error code %q; want %q", code, tt.code)
			}
			if !res.Close {
				t.Error("no Connection: close")
			}
			c.expectClosed()
			if called.Load() {
				t.Error("the handler ran")
			}
		})
	}
}

func TestHandlerPanic(t *testing.T) {
	t.Run("before the response", func(t *testing.T) {
		var log syncBuffer
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Lost", "1")
			_, _ = io.WriteString(w, "held, never sent")
			panic("handler bug 42")
		})
		ts := start(t, &http1.Server{Handler: h, Logger: slog.New(slog.NewTextHandler(&log, nil))}, guard)
		c := dial(t, ts.addr)
		c.send(get("/"))
		res, body := c.roundTrip("GET")
		if res.StatusCode != http.StatusInternalServerError || !res.Close {
			t.Fatalf("status %d, close %v; want 500 and Connection: close", res.StatusCode, res.Close)
		}
		if code := errorCode(t, res, body); code != "internal_error" {
			t.Errorf("error code %q; want internal_error", code)
		}
		if res.Header.Get("X-Lost") != "" {
			t.Error("the 500 carries the handler's headers")
		}
		c.expectClosed()
		// The log line is written before the 500 is sent.
		if got := log.String(); !strings.Contains(got, "handler panic") || !strings.Contains(got, "handler bug 42") {
			t.Errorf("log %q; want the panic and its value", got)
		}
	})

	t.Run("abort after a flush", func(t *testing.T) {
		var log syncBuffer
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		})
		ts := start(t, &http1.Server{Handler: h, Logger: slog.New(slog.NewTextHandler(&log, nil))}, guard)
		c := dial(t, ts.addr)
		c.send(get("/"))
		res := c.response("GET")
		if res.StatusCode != 200 {
			t.Fatalf("status %d; want the 200 that was flushed", res.StatusCode)
		}
		b, err := io.ReadAll(res.Body)
		if err == nil {
			t.Fatalf("body %q read to a clean end; want an error for the missing last chunk", b)
		}
		if string(b) != "partial" {
			t.Errorf("body %q before the error; want partial", b)
		}
		if got := log.String(); got != "" {
			t.Errorf("log %q; http.ErrAbortHandler is not logged", got)
		}
	})
}

func TestShutdown(t *testing.T) {
	release := make(chan struct{})
	inFlight := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(inFlight)
			<-release
		}
		_, _ = io.WriteString(w, r.URL.Path)
	})
	ts := start(t, &http1.Server{Handler: h}, guard)

	idle := dial(t, ts.addr)
	idle.send(get("/quick"))
	if _, body := idle.roundTrip("GET"); body != "/quick" {
		t.Fatalf("body %q; want /quick", body)
	}
	busy := dial(t, ts.addr)
	busy.send(get("/slow"))
	<-inFlight

	shut := make(chan error, 1)
	go func() { shut <- ts.srv.Shutdown(context.Background()) }()
	idle.expectClosed()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}

	close(release)
	res, body := busy.roundTrip("GET")
	if res.StatusCode != 200 || body != "/slow" || !res.Close {
		t.Fatalf("in-flight request: status %d, body %q, close %v; want 200, /slow, Connection: close", res.StatusCode, body, res.Close)
	}
	busy.expectClosed()
	select {
	case err := <-shut:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(safety):
		t.Fatal("Shutdown did not return after the last request")
	}
	if err := ts.wait(); !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve returned %v; want http.ErrServerClosed", err)
	}
	if _, err := net.Dial("tcp", ts.addr); err == nil {
		t.Error("the listener still accepts connections")
	}
}

func TestShutdownTimeout(t *testing.T) {
	release := make(chan struct{})
	inFlight := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(inFlight)
		<-release
	})
	ts := start(t, &http1.Server{Handler: h}, guard)
	t.Cleanup(func() { close(release) }) // runs before the server's clean-up
	c := dial(t, ts.addr)
	c.send(get("/"))
	<-inFlight

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown returned %v; want context.DeadlineExceeded", err)
	}
	c.expectClosed() // Shutdown closed the connection when giving up
}

func TestTimeouts(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Run("silent new connection", func(t *testing.T) {
				ts := start(t, &http1.Server{Handler: pathEcho, ReadHeaderTimeout: 200 * time.Millisecond}, m.wrap)
				dial(t, ts.addr).expectClosed()
			})
			t.Run("incomplete head", func(t *testing.T) {
				ts := start(t, &http1.Server{Handler: pathEcho, ReadHeaderTimeout: 200 * time.Millisecond}, m.wrap)
				c := dial(t, ts.addr)
				c.send("GET / HTTP/1.1\r\nHost: te")
				c.expectClosed()
			})
			t.Run("idle keep-alive", func(t *testing.T) {
				ts := start(t, &http1.Server{Handler: pathEcho, IdleTimeout: 200 * time.Millisecond}, m.wrap)
				c := dial(t, ts.addr)
				c.send(get("/"))
				if res, _ := c.roundTrip("GET"); res.Close {
					t.Fatal("Connection: close on the first response; want keep-alive")
				}
				c.expectClosed()
			})
		})
	}
}

// waitListener reports, on waits, each time one of its connections is
// asked to wait for input: the server's connection goroutine has then
// finished with its read buffer. The wait begins once the test closes the
// channel it was sent, so that the test can look at the connection
// without a data race.
type waitListener struct {
	net.Listener
	waits chan chan struct{}
}

func (l *waitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &waitConn{Conn: c, waits: l.waits, gone: make(chan struct{})}, nil
}

type waitConn struct {
	net.Conn
	waits     chan chan struct{}
	gone      chan struct{} // closed by Close
	closeOnce sync.Once
}

func (c *waitConn) WaitRead() error {
	seen := make(chan struct{})
	select {
	case c.waits <- seen:
		select {
		case <-seen:
		case <-c.gone:
		}
	case <-c.gone:
	}
	return c.Conn.(interface{ WaitRead() error }).WaitRead()
}

func (c *waitConn) CloseWrite() error {
	return c.Conn.(interface{ CloseWrite() error }).CloseWrite()
}

func (c *waitConn) Close() error {
	c.closeOnce.Do(func() { close(c.gone) })
	return c.Conn.Close()
}

func TestIdleConnHoldsNoReadBuffer(t *testing.T) {
	waits := make(chan chan struct{})
	wrap := func(ln net.Listener) net.Listener { return &waitListener{Listener: guard(ln), waits: waits} }
	ts := start(t, &http1.Server{Handler: pathEcho}, wrap)
	c := dial(t, ts.addr)
	idle := func(when string) {
		t.Helper()
		var seen chan struct{}
		select {
		case seen = <-waits:
		case <-time.After(safety):
			t.Fatalf("%s: the connection never waited for input", when)
		}
		n := http1.ReadBuffers(ts.srv)
		close(seen)
		if n != 0 {
			t.Fatalf("%s: %d connections hold a read buffer while idle; want 0", when, n)
		}
	}
	idle("before the first request")
	for _, path := range []string{"/one", "/two"} {
		c.send(get(path))
		if _, body := c.roundTrip("GET"); body != path {
			t.Fatalf("body %q; want %q", body, path)
		}
		idle("after " + path)
	}
}

// waitFor polls cond until it holds, failing the test after the safety
// timeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(safety)
	for !cond() {
		if time.Now().After(deadline) {
			t.Errorf("timed out waiting for %s", what)
			return
		}
		time.Sleep(time.Millisecond)
	}
}
