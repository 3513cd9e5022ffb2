package upstream

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// idleCount is how many connections p holds idle.
func idleCount(tr *Transport, addr string) int {
	p := tr.pool("http", addr)
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// answerTo is the body the test servers send for a request to path.
func answerTo(path string) string { return "answer to " + path }

// bigAnswer is a response whose body the client reads past its buffered
// reader: the end of the body is read straight from the connection, and
// what follows it stays on the socket (or in the TLS buffers).
func bigAnswer(extra string) string {
	body := strings.Repeat("x", 10000)
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s%s", len(body), body, extra)
}

// readBig reads a response body with a buffer larger than the client's
// reader, as the gateway's copy does.
func readBig(t *testing.T, tr *Transport, url string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 32<<10))
	resp.Body.Close()
	if err != nil || n != 10000 {
		t.Fatalf("read %d body bytes: %v", n, err)
	}
}

// TestUnsolicitedBytesInTLSBuffers: over TLS, bytes that arrived in the
// same record as the end of a body are read from the socket already and
// sit in the tls.Conn's buffers, where no socket check sees them.
func TestUnsolicitedBytesInTLSBuffers(t *testing.T) {
	const extra = "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nunsolicited"
	cert := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(cert.Close)
	cfg := cert.TLS.Clone()
	cfg.NextProtos = nil
	cfg.DynamicRecordSizingDisabled = true // one Write, one record
	served := atomic.Int32{}
	addr := rawServer(t, func(raw net.Conn) {
		c := tls.Server(raw, cfg)
		br := bufio.NewReader(c)
		for {
			req, _, err := readRequest(br)
			if err != nil {
				return
			}
			if served.Add(1) == 1 {
				io.WriteString(c, bigAnswer(extra))
				continue
			}
			body := answerTo(req.URL.Path)
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		}
	})
	roots := cert.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	tr, dials := newTransport(t, Options{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "example.com"}})
	readBig(t, tr, "https://"+addr+"/1")
	p := tr.pool("https", addr)
	p.mu.Lock()
	idle := len(p.idle)
	p.mu.Unlock()
	if idle != 0 {
		t.Errorf("%d idle connections, want 0: a TLS connection with decrypted bytes waiting was pooled", idle)
	}
	if _, body := get(t, tr, "https://"+addr+"/2"); body != answerTo("/2") {
		t.Errorf("second request got %q, want %q", body, answerTo("/2"))
	}
	if n := dials.n.Load(); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}
}

// TestTLSConnectionPooled: the TLS check leaves a clean connection usable
// (a read past its deadline must not break the tls.Conn).
func TestTLSConnectionPooled(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, answerTo(r.URL.Path))
	}))
	t.Cleanup(srv.Close)
	roots := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	tr, dials := newTransport(t, Options{TLSClientConfig: &tls.Config{RootCAs: roots}})
	for i := range 5 {
		path := fmt.Sprint("/", i)
		if _, body := get(t, tr, srv.URL+path); body != answerTo(path) {
			t.Fatalf("body %q, want %q", body, answerTo(path))
		}
	}
	if n := dials.n.Load(); n != 1 {
		t.Errorf("dials = %d, want 1", n)
	}
}

// closeReporter serves "ok" to every request; a request to /slow gets
// half its body, then the rest once more is closed. Each connection's
// end is reported on closed.
type closeReporter struct {
	more   chan struct{}
	closed chan struct{}
}

func newCloseReporter(t *testing.T) (*closeReporter, string) {
	r := &closeReporter{more: make(chan struct{}), closed: make(chan struct{}, 8)}
	addr := rawServer(t, func(c net.Conn) {
		defer func() { r.closed <- struct{}{} }()
		br := bufio.NewReader(c)
		for {
			req, _, err := readRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path != "/slow" {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				continue
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
			<-r.more
			io.WriteString(c, "cd")
		}
	})
	return r, addr
}

// waitClosed waits until the server saw a connection end.
func (r *closeReporter) waitClosed(t *testing.T, what string) {
	t.Helper()
	select {
	case <-r.closed:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the connection was never closed", what)
	}
}

func TestRetire(t *testing.T) {
	srv, addr := newCloseReporter(t)
	tr, dials := newTransport(t, Options{})

	// One exchange in flight on a first connection, one idle connection.
	req, _ := http.NewRequest("GET", "http://"+addr+"/slow", nil)
	slow, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	get(t, tr, "http://"+addr+"/")
	if n := idleCount(tr, addr); n != 1 || dials.n.Load() != 2 {
		t.Fatalf("%d idle after %d dials, want 1 after 2", n, dials.n.Load())
	}

	tr.Retire()
	srv.waitClosed(t, "the idle connection")
	if n := idleCount(tr, addr); n != 0 {
		t.Errorf("%d idle connections after Retire, want 0", n)
	}

	close(srv.more)
	b, err := io.ReadAll(slow.Body)
	slow.Body.Close()
	if err != nil || string(b) != "abcd" {
		t.Fatalf("the exchange in flight read %q, %v; want abcd", b, err)
	}
	srv.waitClosed(t, "the connection returned by the exchange in flight")
	if n := idleCount(tr, addr); n != 0 {
		t.Errorf("%d idle connections, want 0: a retired Transport pooled a returned connection", n)
	}

	// A retired Transport still serves, one connection per request.
	for range 2 {
		if _, body := get(t, tr, "http://"+addr+"/"); body != "ok" {
			t.Fatalf("body %q after Retire, want ok", body)
		}
		srv.waitClosed(t, "a connection dialled after Retire")
	}
	if n := dials.n.Load(); n != 4 {
		t.Errorf("dials = %d, want 4", n)
	}
	tr.Retire() // idempotent
}

// BenchmarkTLSCheck is what the check of a TLS connection's own buffers
// adds to a request over TLS, twice (the socket check comes on top).
func BenchmarkTLSCheck(b *testing.B) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv.TLS)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.(*tls.Conn).Handshake()
		_, _ = io.Copy(io.Discard, c) // until the client closes
	}()
	roots := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	tc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "example.com"})
	if err != nil {
		b.Fatal(err)
	}
	defer tc.Close()
	b.ReportAllocs()
	for b.Loop() {
		if !tlsQuiet(tc) {
			b.Fatal("not quiet")
		}
	}
}
