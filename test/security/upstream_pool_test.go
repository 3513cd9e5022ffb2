package security_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// standIn is a raw-TCP upstream that answers every request with a body
// naming the request's path, and misbehaves once: after its first answer
// it waits for the test's go-ahead and then writes, on the same
// connection, bytes that answer no request. The go-ahead comes once the
// gateway has finished that exchange and pooled the connection, so the
// bytes are waiting on an idle pooled connection when the next client
// arrives, whatever the timing of the network.
type standIn struct {
	addr        string
	unsolicited string
	goAhead     chan struct{} // closed by the test
	written     chan struct{} // closed by the stand-in
	conns       atomic.Int32  // connections accepted
	misbehaved  atomic.Bool
	release     sync.Once

	mu   sync.Mutex
	open []net.Conn // closed when the test ends: the gateway's pool keeps its side open
}

// proceed gives the go-ahead.
func (s *standIn) proceed() { s.release.Do(func() { close(s.goAhead) }) }

func newStandIn(t *testing.T, unsolicited string) *standIn {
	t.Helper()
	s := &standIn{unsolicited: unsolicited, goAhead: make(chan struct{}), written: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		s.proceed() // a test that failed early
		s.mu.Lock()
		for _, c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			s.mu.Lock()
			s.open = append(s.open, c)
			s.mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				s.serve(c)
			})
		}
	})
	return s
}

// answer is the body the stand-in sends for a request to path.
func answer(path string) string { return "answer to " + path }

func (s *standIn) serve(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		body := answer(req.URL.Path)
		head := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n", len(body))
		if req.Method == http.MethodHead {
			body = ""
		}
		if _, err := io.WriteString(c, head+body); err != nil {
			return
		}
		if s.misbehaved.Swap(true) {
			continue
		}
		<-s.goAhead
		_, _ = io.WriteString(c, s.unsolicited)
		close(s.written)
	}
}

// TestUpstreamUnsolicitedBytesNeverReachAnotherClient: bytes an upstream
// sends after a complete response answer no request. A pooled connection
// holding them must not carry the next exchange, or the next client (any
// client) reads them as its answer: another client's data, or an
// attacker-shaped response. Each case runs one client's request, lets the
// upstream send the extra bytes on the now idle connection, and checks a
// second client on its own connection gets its own answer, from a fresh
// upstream connection.
func TestUpstreamUnsolicitedBytesNeverReachAnotherClient(t *testing.T) {
	tests := []struct {
		name        string
		firstMethod string
		unsolicited string
	}{
		{"a second, unsolicited response after a GET", http.MethodGet,
			"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 24\r\n\r\nunsolicited: for nobody!"},
		{"a body after the answer to a HEAD", http.MethodHead, answer("/r/1")},
		{"bytes past the Content-Length of a body", http.MethodGet, "unsolicited: past the declared length\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := newStandIn(t, tc.unsolicited)
			h := newHarness(t, `
routes:
  - name: stand-in
    path: /r/{n}
    methods: [GET, HEAD]
    upstream: "http://`+up.addr+`/r/{n}"
`, nil)
			l := serveLiveOn(t, h, true)

			first := l.send(t, tc.firstMethod, tc.firstMethod+" /r/1 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
			want := answer("/r/1")
			if tc.firstMethod == http.MethodHead {
				want = ""
			}
			if first.Status != http.StatusOK || first.Body != want {
				t.Fatalf("first client: status %d body %q, want 200 %q", first.Status, first.Body, want)
			}
			l.waitDone(t) // the exchange has ended: the connection is pooled
			up.proceed()
			<-up.written

			second := l.send(t, http.MethodGet, "GET /r/2 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
			l.waitDone(t)
			if second.Status != http.StatusOK || second.Body != answer("/r/2") {
				t.Errorf("second client: status %d body %q, want 200 %q", second.Status, second.Body, answer("/r/2"))
			}
			if strings.Contains(second.Body, "unsolicited") {
				t.Errorf("the second client received the bytes the upstream sent after the first exchange")
			}
			if n := up.conns.Load(); n != 2 {
				t.Errorf("the upstream accepted %d connections, want 2: the one holding unsolicited bytes must not be reused", n)
			}
		})
	}
}
