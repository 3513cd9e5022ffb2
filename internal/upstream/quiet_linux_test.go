package upstream

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// These tests need the socket check, which peeks on Linux only.

// misbehaving answers every request with answerTo(path); after its first
// answer it waits for goAhead and writes extra, bytes that answer no
// request, then closes written.
type misbehaving struct {
	extra            string
	goAhead, written chan struct{}
	first            atomic.Bool
	release          sync.Once
}

// proceed gives the go-ahead; a test that failed early calls it too, so
// the server's goroutine ends.
func (m *misbehaving) proceed() { m.release.Do(func() { close(m.goAhead) }) }

func (m *misbehaving) serve(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		req, _, err := readRequest(br)
		if err != nil {
			return
		}
		body := answerTo(req.URL.Path)
		head := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(body))
		if req.Method == http.MethodHead {
			body = ""
		}
		io.WriteString(c, head+body)
		if !m.first.Swap(true) {
			<-m.goAhead
			io.WriteString(c, m.extra)
			close(m.written)
		}
	}
}

// TestUnsolicitedBytesWhileIdle: bytes that reach a pooled connection
// after its exchange ended (a second response, a body after the answer to
// a HEAD, bytes past a Content-Length) are found when the connection is
// taken from the pool, however short the pause: the next request gets a
// fresh connection and its own answer.
func TestUnsolicitedBytesWhileIdle(t *testing.T) {
	tests := []struct {
		name, method, extra string
	}{
		{"a second response", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nunsolicited"},
		{"a body after a HEAD", "HEAD", answerTo("/1")},
		{"bytes past the Content-Length", "GET", "unsolicited bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := &misbehaving{extra: tc.extra, goAhead: make(chan struct{}), written: make(chan struct{})}
			addr := rawServer(t, m.serve)
			t.Cleanup(m.proceed)
			tr, dials := newTransport(t, Options{})
			req, _ := http.NewRequest(tc.method, "http://"+addr+"/1", nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if n := idleCount(tr, addr); n != 1 {
				t.Fatalf("%d idle connections after a clean exchange, want 1", n)
			}
			m.proceed()
			<-m.written
			if _, body := get(t, tr, "http://"+addr+"/2"); body != answerTo("/2") {
				t.Errorf("second request got %q, want %q", body, answerTo("/2"))
			}
			if n := dials.n.Load(); n != 2 {
				t.Errorf("dials = %d, want 2: the connection holding unsolicited bytes was reused", n)
			}
		})
	}
}

// TestUnsolicitedBytesWhenPooled: bytes that arrived with the answer but
// past what the client's reader buffered are found when the exchange
// ends, so the connection is closed instead of pooled.
func TestUnsolicitedBytesWhenPooled(t *testing.T) {
	const extra = "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nunsolicited"
	served := atomic.Int32{}
	addr := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, _, err := readRequest(br)
			if err != nil {
				return
			}
			if served.Add(1) == 1 {
				io.WriteString(c, bigAnswer(extra)) // one write: the extra bytes arrive with the body
				continue
			}
			body := answerTo(req.URL.Path)
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		}
	})
	tr, dials := newTransport(t, Options{})
	readBig(t, tr, "http://"+addr+"/1")
	if n := idleCount(tr, addr); n != 0 {
		t.Errorf("%d idle connections, want 0: a connection with bytes waiting was pooled", n)
	}
	if _, body := get(t, tr, "http://"+addr+"/2"); body != answerTo("/2") {
		t.Errorf("second request got %q, want %q", body, answerTo("/2"))
	}
	if n := dials.n.Load(); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}
}

// waitReadable blocks until nc's socket has something to read (bytes or
// a FIN), without reading it.
func waitReadable(t *testing.T, nc net.Conn) {
	t.Helper()
	rc, err := nc.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN // false: wait until readable, then call again
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSocketCheck: the check tells a quiet socket from one with bytes or
// a FIN waiting, reads nothing, and allocates nothing (it runs twice per
// request).
func TestSocketCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	var s socket
	s.init(client)
	if !s.isQuiet() {
		t.Fatal("a socket with nothing to read is not quiet")
	}
	if n := testing.AllocsPerRun(100, func() { s.isQuiet() }); n != 0 {
		t.Errorf("a check allocates %v times, want 0", n)
	}
	io.WriteString(server, "x")
	waitReadable(t, client)
	for range 2 { // the peek leaves the byte where it was
		if s.isQuiet() {
			t.Fatal("a socket with a byte to read is quiet")
		}
	}
	var b [2]byte
	if n, err := client.Read(b[:]); n != 1 || err != nil {
		t.Fatalf("read %d bytes, %v: the check consumed what it saw", n, err)
	}
	server.Close()
	waitReadable(t, client)
	if s.isQuiet() {
		t.Fatal("a socket the peer closed is quiet")
	}
}

// BenchmarkSocketCheck is the cost the check adds to a request, twice
// (when the connection is pooled and when it is taken).
func BenchmarkSocketCheck(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer server.Close()
	var s socket
	s.init(client)
	b.ReportAllocs()
	for b.Loop() {
		if !s.isQuiet() {
			b.Fatal("not quiet")
		}
	}
}
