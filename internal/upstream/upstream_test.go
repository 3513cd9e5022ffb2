package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// counter is a DialContext that counts dials, so tests can prove reuse.
type counter struct {
	n atomic.Int32
	d net.Dialer
}

func (c *counter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c.n.Add(1)
	return c.d.DialContext(ctx, network, addr)
}

func newTransport(t *testing.T, opts Options) (*Transport, *counter) {
	t.Helper()
	c := &counter{}
	if opts.DialContext == nil {
		opts.DialContext = c.dial
	}
	tr := New(opts)
	t.Cleanup(tr.CloseIdleConnections)
	return tr, c
}

// rawServer serves each accepted connection with handle, for answers
// net/http's server would never send.
func rawServer(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// readRequest consumes one request from the connection.
func readRequest(br *bufio.Reader) (*http.Request, []byte, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, nil, err
	}
	body, err := io.ReadAll(req.Body)
	return req, body, err
}

func get(t *testing.T, tr http.RoundTripper, url string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp, string(b)
}

func TestKeepAliveReuse(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	}))
	defer srv.Close()
	tr, dials := newTransport(t, Options{})
	for i := range 10 {
		_, body := get(t, tr, fmt.Sprintf("%s/%d", srv.URL, i))
		if want := fmt.Sprintf("hello /%d", i); body != want {
			t.Fatalf("body = %q, want %q", body, want)
		}
	}
	if n := dials.n.Load(); n != 1 {
		t.Errorf("dials = %d, want 1 (one keep-alive connection for sequential requests)", n)
	}
}

func TestWireFormat(t *testing.T) {
	got := make(chan string, 4)
	addr := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			var head strings.Builder
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				head.WriteString(line)
				if line == "\r\n" {
					break
				}
			}
			h := head.String()
			if strings.Contains(h, "Content-Length: 5") {
				body := make([]byte, 5)
				io.ReadFull(br, body)
				h += string(body)
			}
			got <- h
			io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
		}
	})
	tr, _ := newTransport(t, Options{})
	tests := []struct {
		name string
		req  func() *http.Request
		want string
	}{
		{"get", func() *http.Request {
			r, _ := http.NewRequest("GET", "http://"+addr+"/a%2Fb/c?x=1&y=%20", nil)
			r.Header["User-Agent"] = []string{"keyward/test"}
			return r
		}, "GET /a%2Fb/c?x=1&y=%20 HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: keyward/test\r\n\r\n"},
		{"post with a body of known length", func() *http.Request {
			r, _ := http.NewRequest("POST", "http://"+addr+"/p", strings.NewReader("hello"))
			r.Header["User-Agent"] = []string{"k"}
			return r
		}, "POST /p HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: k\r\nContent-Length: 5\r\n\r\nhello"},
		{"bodiless post gets Content-Length: 0", func() *http.Request {
			r, _ := http.NewRequest("POST", "http://"+addr+"/p", nil)
			r.Header["User-Agent"] = []string{""}
			return r
		}, "POST /p HTTP/1.1\r\nHost: " + addr + "\r\nContent-Length: 0\r\n\r\n"},
		{"no User-Agent header: net/http's default, no Accept-Encoding", func() *http.Request {
			r, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
			return r
		}, "GET / HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: Go-http-client/1.1\r\n\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := tr.RoundTrip(tc.req())
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if diff := cmp.Diff(tc.want, <-got); diff != "" {
				t.Errorf("request on the wire (-want +got):\n%s", diff)
			}
		})
	}
}

func TestInvalidRequestsRefused(t *testing.T) {
	addr := rawServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	tr, dials := newTransport(t, Options{})
	tests := []struct {
		name string
		mod  func(r *http.Request)
	}{
		{"newline in a header value", func(r *http.Request) { r.Header["X-A"] = []string{"a\r\nX-Injected: 1"} }},
		{"space in a header name", func(r *http.Request) { r.Header["X A"] = []string{"1"} }},
		{"newline in the host", func(r *http.Request) { r.Host = "a\r\nX: y" }},
		{"space in the query", func(r *http.Request) { r.URL.RawQuery = "a=1 HTTP/1.1\r\nX: y" }},
		{"bad method", func(r *http.Request) { r.Method = "GET /x" }},
		{"ftp scheme", func(r *http.Request) { r.URL.Scheme = "ftp" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
			tc.mod(r)
			if resp, err := tr.RoundTrip(r); err == nil {
				resp.Body.Close()
				t.Fatal("RoundTrip succeeded, want an error")
			}
		})
	}
	_ = dials
}

func TestStreamingBody(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "data: second\n\n")
	}))
	defer srv.Close()
	defer close(release)
	tr, _ := newTransport(t, Options{})
	req, _ := http.NewRequest("GET", srv.URL, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The second event is held back by the server until the first has been
	// read here: a client that buffered the body would hang.
	br := bufio.NewReader(resp.Body)
	var first string
	for !strings.HasSuffix(first, "\n\n") {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the first event: %v", err)
		}
		first += line
	}
	if first != "data: first\n\n" {
		t.Fatalf("first event = %q", first)
	}
	release <- struct{}{}
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "data: second\n\n" {
		t.Fatalf("rest = %q, %v", rest, err)
	}
}

// closeWatcher is a raw server that reads one request, then acts, then
// reports when the client closed the connection.
func closeWatcher(t *testing.T, act func(c net.Conn)) (addr string, gotRequest, clientClosed chan struct{}) {
	gotRequest, clientClosed = make(chan struct{}), make(chan struct{})
	addr = rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, _, err := readRequest(br); err != nil {
			return
		}
		act(c)
		close(gotRequest)
		io.Copy(io.Discard, br) // returns when the client closes
		close(clientClosed)
	})
	return addr, gotRequest, clientClosed
}

var errCause = errors.New("test cause")

func TestCancelWhileWaitingForHeaders(t *testing.T) {
	addr, gotRequest, clientClosed := closeWatcher(t, func(net.Conn) {})
	tr, _ := newTransport(t, Options{})
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() { <-gotRequest; cancel(errCause) }()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
	_, err := tr.RoundTrip(req)
	if !errors.Is(err, errCause) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want one wrapping the cause and context.Canceled", err)
	}
	<-clientClosed
}

func TestCancelWhileReadingBody(t *testing.T) {
	addr, gotRequest, clientClosed := closeWatcher(t, func(c net.Conn) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
	})
	tr, _ := newTransport(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	<-gotRequest
	buf := make([]byte, 10)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	// A Read blocked on the upstream is woken by the cancellation.
	done := make(chan error)
	go func() {
		_, err := resp.Body.Read(buf)
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Read after cancel: %v, want context.Canceled", err)
	}
	<-clientClosed
	resp.Body.Close()
}

// staleServer answers one request per connection and then closes it,
// reporting the close: a server whose idle timeout is shorter than ours.
func staleServer(t *testing.T) (addr string, closed chan struct{}) {
	closed = make(chan struct{}, 10)
	addr = rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, _, err := readRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		c.(*net.TCPConn).CloseWrite()
		c.Close()
		closed <- struct{}{}
	})
	return addr, closed
}

// racingServer answers the first request on each connection and closes
// the connection when the second arrives, unanswered: an upstream whose
// idle timeout fired as our request was on its way, which no check
// before sending can see.
func racingServer(t *testing.T) string {
	return rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, _, err := readRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		readRequest(br)
	})
}

func TestStaleConnectionRetry(t *testing.T) {
	t.Run("GET is retried once on a fresh connection", func(t *testing.T) {
		addr := racingServer(t)
		tr, dials := newTransport(t, Options{})
		get(t, tr, "http://"+addr+"/")
		_, body := get(t, tr, "http://"+addr+"/")
		if body != "ok" || dials.n.Load() != 2 {
			t.Fatalf("body %q after %d dials, want ok after 2", body, dials.n.Load())
		}
	})
	t.Run("POST with a body is not retried", func(t *testing.T) {
		addr := racingServer(t)
		tr, dials := newTransport(t, Options{})
		get(t, tr, "http://"+addr+"/")
		req, _ := http.NewRequest("POST", "http://"+addr+"/", io.NopCloser(strings.NewReader("payload")))
		req.ContentLength = 7
		if resp, err := tr.RoundTrip(req); err == nil {
			resp.Body.Close()
			t.Fatal("POST on a stale connection succeeded; it must fail rather than be sent twice")
		}
		if n := dials.n.Load(); n != 1 {
			t.Errorf("dials = %d, want 1 (no retry)", n)
		}
	})
	t.Run("a connection the upstream closed while pooled is not used", func(t *testing.T) {
		if runtime.GOOS != "linux" {
			t.Skip("the socket check peeks on Linux only")
		}
		addr, closed := staleServer(t)
		tr, dials := newTransport(t, Options{})
		get(t, tr, "http://"+addr+"/")
		<-closed
		// At once, not after a pause: the check before use runs every time.
		req, _ := http.NewRequest("POST", "http://"+addr+"/", io.NopCloser(strings.NewReader("payload")))
		req.ContentLength = 7
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("POST on a connection closed while pooled: %v; the check before use should have found the close", err)
		}
		resp.Body.Close()
		if n := dials.n.Load(); n != 2 {
			t.Errorf("dials = %d, want 2", n)
		}
	})
}

func TestNotPooled(t *testing.T) {
	tests := []struct {
		name, answer string
		body         string
	}{
		{"Connection: close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", "ok"},
		{"HTTP/1.0 without keep-alive", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "ok"},
		{"HTTP/1.0 body to EOF", "HTTP/1.0 200 OK\r\n\r\nuntil close", "until close"},
		{"no framing", "HTTP/1.1 200 OK\r\n\r\nuntil close", "until close"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := rawServer(t, func(c net.Conn) {
				br := bufio.NewReader(c)
				if _, _, err := readRequest(br); err != nil {
					return
				}
				io.WriteString(c, tc.answer)
			})
			tr, dials := newTransport(t, Options{})
			for range 2 {
				if _, body := get(t, tr, "http://"+addr+"/"); body != tc.body {
					t.Fatalf("body = %q, want %q", body, tc.body)
				}
			}
			if n := dials.n.Load(); n != 2 {
				t.Errorf("dials = %d, want 2: the connection must not be reused", n)
			}
		})
	}
}

func TestHTTP10KeepAlivePooled(t *testing.T) {
	addr := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			if _, _, err := readRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	tr, dials := newTransport(t, Options{})
	for range 3 {
		get(t, tr, "http://"+addr+"/")
	}
	if n := dials.n.Load(); n != 1 {
		t.Errorf("dials = %d, want 1", n)
	}
}

func TestBodilessResponsesPooled(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/204" {
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer srv.Close()
	tr, dials := newTransport(t, Options{})
	for _, method := range []string{"HEAD", "GET", "HEAD"} {
		req, _ := http.NewRequest(method, srv.URL+"/204", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if n := dials.n.Load(); n != 1 {
		t.Errorf("dials = %d, want 1", n)
	}
}

func TestChunkedWithTrailers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "part one, ")
		w.(http.Flusher).Flush()
		io.WriteString(w, "part two")
		w.Header().Set("X-Checksum", "abc")
	}))
	defer srv.Close()
	tr, dials := newTransport(t, Options{})
	for range 2 {
		resp, body := get(t, tr, srv.URL)
		if body != "part one, part two" {
			t.Errorf("body = %q", body)
		}
		if diff := cmp.Diff(http.Header{"X-Checksum": {"abc"}}, resp.Trailer); diff != "" {
			t.Errorf("trailer (-want +got):\n%s", diff)
		}
	}
	if n := dials.n.Load(); n != 1 {
		t.Errorf("dials = %d, want 1", n)
	}
}

func TestHugeResponseHeaders(t *testing.T) {
	addr := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, _, err := readRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\n")
		line := "X-Big: " + strings.Repeat("a", 1000) + "\r\n"
		for range 100 {
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
		io.WriteString(c, "Content-Length: 0\r\n\r\n")
	})
	tr, _ := newTransport(t, Options{})
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	_, err := tr.RoundTrip(req)
	if err == nil || !strings.Contains(err.Error(), "exceeded 65536 bytes") {
		t.Fatalf("err = %v, want the header limit", err)
	}
}

func TestMalformedResponses(t *testing.T) {
	tests := []struct{ name, answer string }{
		{"garbage", "hello\r\n\r\n"},
		{"bad status code", "HTTP/1.1 2x0 OK\r\n\r\n"},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"},
		{"conflicting Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"},
		{"negative Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok"},
		{"unknown transfer coding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok"},
		{"headers cut short", "HTTP/1.1 200 OK\r\nContent-Le"},
		{"body cut short", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"},
		{"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"},
		{"chunked cut short", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"},
		{"space in header name", "HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n"},
		{"101 not asked for", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"},
		{"too many 1xx", strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", 6) + "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{"nothing", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := rawServer(t, func(c net.Conn) {
				br := bufio.NewReader(c)
				if _, _, err := readRequest(br); err != nil {
					return
				}
				io.WriteString(c, tc.answer)
			})
			tr, _ := newTransport(t, Options{})
			req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				return
			}
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				t.Fatalf("status %d and a whole body, want an error", resp.StatusCode)
			}
		})
	}
}

func TestInterimResponses(t *testing.T) {
	addr := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, _, err := readRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	tr, _ := newTransport(t, Options{})
	var got []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		got = append(got, fmt.Sprint(code, " ", h.Get("Link")))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://"+addr+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if diff := cmp.Diff([]string{"103 </style.css>; rel=preload"}, got); diff != "" {
		t.Errorf("1xx seen (-want +got):\n%s", diff)
	}
	if resp.StatusCode != 200 {
		t.Errorf("status = %d", resp.StatusCode)
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	}))
	defer srv.Close()
	tr, _ := newTransport(t, Options{})
	resp, _ := get(t, tr, srv.URL+"/here")
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/elsewhere" {
		t.Fatalf("got %d %q, want the 302 itself", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestProxyEnvironmentIgnored(t *testing.T) {
	t.Setenv("HTTP_PROXY", "http://127.0.0.1:1")
	t.Setenv("http_proxy", "http://127.0.0.1:1")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "direct") }))
	defer srv.Close()
	tr := New(Options{})
	defer tr.CloseIdleConnections()
	if _, body := get(t, tr, srv.URL); body != "direct" {
		t.Fatalf("body = %q", body)
	}
}

func TestRequestBodies(t *testing.T) {
	t.Run("unknown length streams chunked", func(t *testing.T) {
		gotFirst := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			buf := make([]byte, 5)
			if _, err := io.ReadFull(r.Body, buf); err != nil {
				t.Error(err)
				return
			}
			close(gotFirst) // the first part arrived before the second was written
			rest, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%v %s%s", r.TransferEncoding, buf, rest)
		}))
		defer srv.Close()
		tr, _ := newTransport(t, Options{})
		pr, pw := io.Pipe()
		go func() {
			io.WriteString(pw, "part1")
			<-gotFirst
			io.WriteString(pw, "part2")
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", srv.URL, pr)
		req.ContentLength = -1
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "[chunked] part1part2" {
			t.Fatalf("server saw %q", b)
		}
	})
	t.Run("a body read error is reported as such", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
		defer srv.Close()
		tr, _ := newTransport(t, Options{})
		rec := httptest.NewRecorder()
		body := http.MaxBytesReader(rec, io.NopCloser(strings.NewReader(strings.Repeat("x", 100))), 10)
		req, _ := http.NewRequest("POST", srv.URL, body)
		req.ContentLength = -1
		_, err := tr.RoundTrip(req)
		var maxErr *http.MaxBytesError
		if !errors.As(err, &maxErr) {
			t.Fatalf("err = %v, want a *http.MaxBytesError", err)
		}
	})
	t.Run("an early answer is heard while the body is unsent", func(t *testing.T) {
		// net/http's server drains a body before answering, so a raw one
		// plays the upstream that refuses an upload after its headers.
		addr := rawServer(t, func(c net.Conn) {
			br := bufio.NewReader(c)
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
			io.Copy(io.Discard, br)
		})
		tr, dials := newTransport(t, Options{})
		pr, pw := io.Pipe()
		defer pw.Close()
		go io.WriteString(pw, "never finished")
		req, _ := http.NewRequest("POST", "http://"+addr+"/", pr)
		req.ContentLength = -1
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status = %d", resp.StatusCode)
		}
		// The upload never finished, so the connection is not reused.
		get(t, tr, "http://"+addr+"/")
		if n := dials.n.Load(); n != 2 {
			t.Errorf("dials = %d, want 2", n)
		}
	})
}

func TestEarlyCloseAndCloseIdle(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", 64<<10))
	}))
	defer srv.Close()
	tr, dials := newTransport(t, Options{})
	req, _ := http.NewRequest("GET", srv.URL, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Read(make([]byte, 10))
	resp.Body.Close() // before EOF: the connection cannot be reused
	get(t, tr, srv.URL)
	if n := dials.n.Load(); n != 2 {
		t.Fatalf("dials after an early close = %d, want 2", n)
	}
	tr.CloseIdleConnections()
	get(t, tr, srv.URL)
	if n := dials.n.Load(); n != 3 {
		t.Fatalf("dials after CloseIdleConnections = %d, want 3", n)
	}
	if _, err := resp.Body.Read(make([]byte, 1)); err == nil {
		t.Error("Read after Close succeeded")
	}
}

func TestIdleTimeout(t *testing.T) {
	closed := make(chan struct{}, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed <- struct{}{}
		}
	}
	srv.Start()
	defer srv.Close()
	tr, _ := newTransport(t, Options{IdleConnTimeout: 10 * time.Millisecond})
	get(t, tr, srv.URL)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the idle connection was not closed by the idle timeout")
	}
}

func TestConcurrent(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Query().Get("i"))
	}))
	defer srv.Close()
	for _, max := range []int{0, 4} {
		t.Run(fmt.Sprint("MaxConnsPerHost=", max), func(t *testing.T) {
			tr, dials := newTransport(t, Options{MaxConnsPerHost: max, MaxIdleConnsPerHost: 2})
			var wg sync.WaitGroup
			for g := range 32 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 20 {
						want := fmt.Sprint(g*100 + i)
						req, _ := http.NewRequest("GET", srv.URL+"/?i="+want, nil)
						resp, err := tr.RoundTrip(req)
						if err != nil {
							t.Error(err)
							return
						}
						b, err := io.ReadAll(resp.Body)
						resp.Body.Close()
						if err != nil || string(b) != want {
							t.Errorf("got %q, %v; want %q", b, err, want)
						}
					}
				}()
			}
			wg.Wait()
			if n := dials.n.Load(); max > 0 && int(n) > max*20 {
				t.Errorf("dials = %d", n)
			}
		})
	}
}

func TestMaxConnsPerHostWaitEndsWithContext(t *testing.T) {
	addr, gotRequest, _ := closeWatcher(t, func(net.Conn) {})
	tr, _ := newTransport(t, Options{MaxConnsPerHost: 1})
	ctx1, cancel1 := context.WithCancel(context.Background())
	defer cancel1()
	go func() {
		req, _ := http.NewRequestWithContext(ctx1, "GET", "http://"+addr+"/", nil)
		tr.RoundTrip(req)
	}()
	<-gotRequest // the only connection is busy
	ctx2, cancel2 := context.WithCancelCause(context.Background())
	cancel2(errCause)
	req, _ := http.NewRequestWithContext(ctx2, "GET", "http://"+addr+"/", nil)
	if _, err := tr.RoundTrip(req); !errors.Is(err, errCause) {
		t.Fatalf("err = %v, want the cause", err)
	}
}

func TestTLSUpstream(t *testing.T) {
	var protos sync.Map
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		protos.Store(r.Proto, true)
		io.WriteString(w, "secure")
	}))
	srv.EnableHTTP2 = true // the upstream offers h2; we must still speak HTTP/1.1
	srv.StartTLS()
	defer srv.Close()
	roots := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	tr, dials := newTransport(t, Options{TLSClientConfig: &tls.Config{RootCAs: roots}})
	for range 3 {
		if _, body := get(t, tr, srv.URL); body != "secure" {
			t.Fatalf("body = %q", body)
		}
	}
	if n := dials.n.Load(); n != 1 {
		t.Errorf("dials = %d, want 1", n)
	}
	var seen []string
	protos.Range(func(k, _ any) bool { seen = append(seen, k.(string)); return true })
	if diff := cmp.Diff([]string{"HTTP/1.1"}, seen); diff != "" {
		t.Errorf("protocols seen by the server (-want +got):\n%s", diff)
	}

	t.Run("untrusted certificate", func(t *testing.T) {
		tr := New(Options{})
		req, _ := http.NewRequest("GET", srv.URL, nil)
		if _, err := tr.RoundTrip(req); err == nil {
			t.Fatal("a certificate from an unknown authority was accepted")
		}
	})
}
