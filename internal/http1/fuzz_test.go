package http1_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/http1"
	"github.com/keyward/keyward/internal/listener"
)

// FuzzServer writes arbitrary bytes to the server over a real socket,
// behind the framing guard and without it, then half-closes. Whatever the
// bytes, the server must not crash, must end the connection, and must
// have written nothing but well-formed HTTP/1.1 responses: a byte stream a
// client can parse to the end, one response per request the handler saw
// at most, never a header line the handler did not mean (the handler
// echoes the request target into a header, so a target that could break a
// line would show up as an extra field).
//
// Each input costs a TCP connection; the client closes with SO_LINGER 0 so
// that long runs do not exhaust ephemeral ports with TIME_WAIT sockets.
func FuzzServer(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n",
		"HEAD / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
		"GET /%0d%0aX-Injected:%201 HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\n\n",
		"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	addrs := map[bool]string{}
	for _, guarded := range []bool{false, true} {
		srv := &http1.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodHead {
					// No length and no body: the checker parses every
					// answer as a GET's, reading this one to the end.
					return
				}
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("X-Target", r.RequestURI)
				_, _ = io.WriteString(w, "ok")
			}),
			ReadHeaderTimeout: 2 * time.Second,
			IdleTimeout:       2 * time.Second,
			MaxHeaderBytes:    4 << 10,
		}
		var wrap func(net.Listener) net.Listener
		if guarded {
			wrap = func(ln net.Listener) net.Listener {
				return listener.Guard(ln, listener.Options{MaxHeaderBytes: 4 << 10, MaxConns: -1})
			}
		}
		addrs[guarded] = start(f, srv, wrap).addr
	}

	f.Fuzz(func(t *testing.T, input []byte, guarded bool) {
		c, err := net.Dial("tcp", addrs[guarded])
		if err != nil {
			t.Fatal(err)
		}
		tc := c.(*net.TCPConn)
		defer tc.Close()
		_ = tc.SetLinger(0)
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			_, _ = tc.Write(input)
			_ = tc.CloseWrite()
		}()
		out, err := io.ReadAll(tc)
		switch {
		case err != nil && isReset(err):
			return // the answer may be lost with the reset: nothing to check
		case err != nil:
			t.Fatalf("%q: reading the answer: %v", input, err)
		}
		br := bufio.NewReader(strings.NewReader(string(out)))
		for {
			if _, err := br.Peek(1); err == io.EOF {
				break
			}
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("%q: the server wrote something that is not an HTTP response: %v\n%q", input, err, out)
			}
			for name := range res.Header {
				switch name {
				case "X-Target", "Content-Type", "Content-Length", "Date", "Connection",
					"X-Content-Type-Options", "Cache-Control":
				default:
					t.Fatalf("%q: unexpected header %q in\n%q", input, name, out)
				}
			}
			if _, err := io.Copy(io.Discard, res.Body); err != nil {
				t.Fatalf("%q: response body: %v\n%q", input, err, out)
			}
			res.Body.Close()
		}
	})
}

// isReset reports whether err is the peer resetting the connection, which
// a server may do when it closes with input left unread.
func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}
