package listener

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/certs/certtest"
	"github.com/keyward/keyward/internal/http1"
)

// tlsListener is a GuardTLS listener on 127.0.0.1 with a certificate for
// localhost signed by a fresh CA, offering h2, http/1.1 and acme-tls/1.
func tlsListener(t *testing.T, opts Options) (*Listener, *certtest.CA) {
	t.Helper()
	ca := certtest.NewCA(t)
	leaf := ca.Leaf(t, certtest.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{leaf.TLS}, NextProtos: []string{"h2", "http/1.1", "acme-tls/1"}}
	l := GuardTLS(ln, cfg, opts)
	t.Cleanup(func() { l.Close() })
	return l, ca
}

// acceptOne accepts one connection from ln in the background.
func acceptOne(ln net.Listener) <-chan net.Conn {
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	return ch
}

// TestTLSSplitsByALPN: each connection goes to the side its ALPN protocol
// names: HTTP/1.1 (or none) behind the framing guard, with its TLS state;
// h2 as the *tls.Conn net/http needs; acme-tls/1 closed after the
// handshake.
func TestTLSSplitsByALPN(t *testing.T) {
	l, ca := tlsListener(t, Options{})
	addr := l.Addr().String()
	for _, tt := range []struct {
		name   string
		protos []string
		h2     bool
	}{
		{name: "http/1.1", protos: []string{"http/1.1"}},
		{name: "no ALPN", protos: nil},
		{name: "h2 preferred", protos: []string{"h2", "http/1.1"}, h2: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			side := acceptOne(l)
			if tt.h2 {
				side = acceptOne(l.H2())
			}
			cc, err := tls.Dial("tcp", addr, ca.ClientConfig(tt.protos...))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			var sc net.Conn
			select {
			case sc = <-side:
			case <-time.After(safety):
				t.Fatal("the connection never reached its side")
			}
			defer sc.Close()
			if tt.h2 {
				if _, ok := sc.(*tls.Conn); !ok {
					t.Fatalf("h2 side got %T, want *tls.Conn", sc)
				}
				return
			}
			g, ok := sc.(*conn)
			if !ok {
				t.Fatalf("HTTP/1.1 side got %T, want the guard's connection", sc)
			}
			if st := g.ConnectionState(); !st.HandshakeComplete || st.ServerName != "" && st.ServerName != "localhost" {
				t.Errorf("ConnectionState = %+v, want a completed handshake", st)
			}
		})
	}
	// The h1 and h2 waiters of the subtests that did not match are still
	// blocked in Accept: the listener's Close ends them.

	t.Run("acme-tls/1 closed", func(t *testing.T) {
		cc, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"acme-tls/1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		if cc.ConnectionState().NegotiatedProtocol != "acme-tls/1" {
			t.Fatalf("negotiated %q", cc.ConnectionState().NegotiatedProtocol)
		}
		_ = cc.SetReadDeadline(time.Now().Add(safety))
		if _, err := cc.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("read on an acme-tls/1 connection: %v, want EOF (closed after the handshake)", err)
		}
	})
}

// TestTLSGuardSeesDecryptedStream: over TLS the framing guard still refuses
// ambiguous framing (it checks the decrypted bytes), and the handler sees
// the request's TLS state.
func TestTLSGuardSeesDecryptedStream(t *testing.T) {
	l, ca := tlsListener(t, Options{})
	sawTLS := make(chan bool, 2)
	srv := &http1.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawTLS <- r.TLS != nil && r.TLS.HandshakeComplete
		_, _ = io.WriteString(w, "ok")
	})}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	cc, err := tls.Dial("tcp", l.Addr().String(), ca.ClientConfig("http/1.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_ = cc.SetDeadline(time.Now().Add(safety))
	smuggle := "POST / HTTP/1.1\r\nHost: k\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
	if _, err := io.WriteString(cc, "GET /first HTTP/1.1\r\nHost: k\r\n\r\n"+smuggle); err != nil {
		t.Fatal(err)
	}
	got := readReplies(t, bufio.NewReader(cc))
	if diff := cmp.Diff([]reply{ok200, refused}, got); diff != "" {
		t.Errorf("responses (-want +got):\n%s", diff)
	}
	if !<-sawTLS {
		t.Error("the handler's request had no TLS state")
	}
}

// TestTLSHandshakeTimeout: a client that connects and sends nothing is
// closed after the handshake timeout, and its slot is freed.
func TestTLSHandshakeTimeout(t *testing.T) {
	failed := make(chan error, 1)
	l, _ := tlsListener(t, Options{MaxConns: 1, HandshakeTimeout: 100 * time.Millisecond,
		HandshakeError: func(_ net.Addr, err error) { failed <- err }})
	go func() { _, _ = l.Accept() }() // starts the accept loop
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(safety))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the silent connection got bytes")
	}
	select {
	case err := <-failed:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("handshake error %v, want a timeout", err)
		}
	case <-time.After(safety):
		t.Fatal("no handshake error reported")
	}
	waitFor(t, "the slot to be freed", func() bool { return l.Open() == 0 })
}

// TestTLSOneLimitForBoth: an HTTP/2 connection holds a slot like any
// other: with the limit at one, a second client waits until it closes.
func TestTLSOneLimitForBoth(t *testing.T) {
	l, ca := tlsListener(t, Options{MaxConns: 1})
	h2 := acceptOne(l.H2())
	h1 := acceptOne(l)
	first, err := tls.Dial("tcp", l.Addr().String(), ca.ClientConfig("h2"))
	if err != nil {
		t.Fatal(err)
	}
	sc := <-h2
	second, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	waitFor(t, "the second connection to wait for a slot", func() bool { return l.Waiting() > 0 })
	select {
	case <-h1:
		t.Fatal("a second connection was admitted over the limit")
	default:
	}
	first.Close()
	sc.Close()
	waitFor(t, "the second connection to be admitted", func() bool { return l.Waiting() == 0 && l.Open() == 1 })
}

// TestSetActiveKeepsNetHTTPRequest is TestPipelinedRefusalWaitsForRunningHandler
// for net/http's server, whose background read uses Read: with SetActive
// called from ConnState, the running request keeps its context and its
// response comes before the refusal.
func TestSetActiveKeepsNetHTTPRequest(t *testing.T) {
	for _, tt := range []struct {
		name      string
		setActive bool
	}{{"with SetActive", true}, {"without", false}} {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			g := Guard(ln, Options{})
			rejected := make(chan struct{})
			g.onReject = func(*violation) { close(rejected) }
			release, started := make(chan struct{}), make(chan struct{})
			ctxErr := make(chan error, 1)
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(started)
				select {
				case <-release:
				case <-r.Context().Done():
				}
				ctxErr <- r.Context().Err()
				_, _ = io.WriteString(w, "ok")
			})}
			if tt.setActive {
				srv.ConnState = func(c net.Conn, s http.ConnState) {
					if a, ok := c.(interface{ SetActive(bool) }); ok {
						a.SetActive(s == http.StateActive)
					}
				}
			}
			served := make(chan struct{})
			go func() {
				defer close(served)
				_ = srv.Serve(g)
			}()
			t.Cleanup(func() {
				srv.Close()
				<-served
			})
			c := dial(t, ln.Addr().String())
			if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: k\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			<-started
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: k\r\nX: \x00\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			<-rejected
			if !tt.setActive {
				// The case that shows why SetActive exists: the refusal
				// reaches the background read and cancels the request.
				if err := <-ctxErr; err == nil {
					t.Error("without SetActive the running request was not cancelled: the test shows nothing")
				}
				return
			}
			close(release)
			if err := <-ctxErr; err != nil {
				t.Errorf("the running request's context ended: %v", err)
			}
			got := readReplies(t, bufio.NewReader(c))
			if diff := cmp.Diff([]reply{ok200, refused}, got); diff != "" {
				t.Errorf("responses (-want +got):\n%s", diff)
			}
		})
	}
}
