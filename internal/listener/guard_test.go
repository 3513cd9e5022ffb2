package listener

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/http1"
)

// safety bounds every socket operation in these tests, so a broken guard
// fails a test instead of hanging it. No test waits on it to reach a state.
const safety = 10 * time.Second

// recorder is the handler behind the guard: it notes every request it is
// given, reading the body whole, and answers "ok".
type recorder struct {
	mu   sync.Mutex
	seen []string
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	s := r.Method + " " + r.RequestURI
	if len(body) > 0 {
		s += " body=" + string(body)
	}
	if err != nil {
		s += " err"
	}
	for k, v := range r.Trailer {
		s += " trailer=" + k + ":" + strings.Join(v, ",")
	}
	rc.mu.Lock()
	rc.seen = append(rc.seen, s)
	rc.mu.Unlock()
	_, _ = io.WriteString(w, "ok")
}

func (rc *recorder) requests() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]string(nil), rc.seen...)
}

// serve starts an http.Server on 127.0.0.1 behind Guard and returns its
// address, its recorder and the guarded listener.
func serve(t *testing.T, opts Options) (string, *recorder, *Listener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if opts.MaxHeaderBytes == 0 {
		opts.MaxHeaderBytes = 64 << 10
	}
	g := Guard(ln, opts)
	rc := &recorder{}
	srv := &http.Server{
		Handler:           rc,
		MaxHeaderBytes:    opts.MaxHeaderBytes,
		ReadHeaderTimeout: safety,
		ErrorLog:          nil,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(g)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return ln.Addr().String(), rc, g
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(safety)); err != nil {
		t.Fatal(err)
	}
	return c
}

// reply is one response as the client read it.
type reply struct {
	Status int
	Close  bool   // Connection: close (ReadResponse removes the header)
	Code   string // error.code of a JSON body
	Body   string // any other body
}

// readReplies reads responses until the server closes the connection.
func readReplies(t *testing.T, r *bufio.Reader) []reply {
	t.Helper()
	var out []reply
	for {
		if _, err := r.Peek(1); err == io.EOF {
			return out
		} else if err != nil {
			t.Fatalf("reading after %d responses: %v (the connection was not closed)", len(out), err)
		}
		out = append(out, readReply(t, r))
	}
}

func readReply(t *testing.T, r *bufio.Reader) reply {
	t.Helper()
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading a response body: %v", err)
	}
	rp := reply{Status: resp.StatusCode, Close: resp.Close}
	if resp.Header.Get("Content-Type") == "application/json" {
		var e struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal(body, &e); err != nil {
			t.Fatalf("JSON error body %q: %v", body, err)
		}
		rp.Code = e.Error.Code
	} else {
		rp.Body = string(body)
	}
	return rp
}

var (
	ok200   = reply{Status: 200, Body: "ok"}
	refused = reply{Status: 400, Close: true, Code: "bad_framing"}
)

// next is a valid request pipelined after each attack: the handler must not
// see it, because nothing after a refused head may reach net/http.
const next = "GET /next HTTP/1.1\r\nHost: k\r\n\r\n"

// attack is a request the guard must refuse, sent with next after it.
type attack struct {
	name string
	send string
	opts Options
	want []reply  // responses, in order, before the close; nil: refused
	seen []string // requests the handler saw
}

var attacks = []attack{
	{name: "CL.TE: Content-Length and Transfer-Encoding", send: "POST / HTTP/1.1\r\nHost: k\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"},
	{name: "TE.CL: Transfer-Encoding before Content-Length", send: "POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"},
	{name: "Content-Length 0 with chunked", send: "POST / HTTP/1.1\r\nHost: k\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
	{name: "conflicting Content-Lengths", send: "POST / HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"},
	{name: "same Content-Length written differently", send: "POST / HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\nhello"},
	{name: "Content-Length list", send: "POST / HTTP/1.1\r\nHost: k\r\nContent-Length: 5, 5\r\n\r\nhello"},
	{name: "Content-Length with a sign", send: "POST / HTTP/1.1\r\nHost: k\r\nContent-Length: +5\r\n\r\nhello"},
	{name: "Content-Length empty", send: "POST / HTTP/1.1\r\nHost: k\r\nContent-Length: \r\n\r\n"},
	{name: "Content-Length overflowing int64", send: "POST / HTTP/1.1\r\nHost: k\r\nContent-Length: 99999999999999999999\r\n\r\n"},
	{name: "Transfer-Encoding chunked, chunked", send: "POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"},
	{name: "Transfer-Encoding xchunked", send: "POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"},
	{name: "Transfer-Encoding with a trailing space", send: "POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked \r\n\r\n0\r\n\r\n"},
	{name: "Transfer-Encoding after a tab", send: "POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n"},
	{name: "Transfer-Encoding after a vertical tab", send: "POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n"},
	{name: "Transfer-Encoding gzip, chunked", send: "POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"},
	{name: "Transfer-Encoding identity", send: "POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: identity\r\nContent-Length: 0\r\n\r\n"},
	{name: "Transfer-Encoding repeated", send: "POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
	{name: "Transfer-Encoding in HTTP/1.0", send: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
	{name: "Transfer-Encoding name with a space before the colon", send: "POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"},
	{name: "Content-Length name with a space before the colon", send: "POST / HTTP/1.1\r\nHost: k\r\nContent-Length : 5\r\n\r\nhello"},
	{name: "obs-fold continuation line", send: "GET / HTTP/1.1\r\nHost: k\r\nX-A: 1\r\n chunked\r\n\r\n"},
	{name: "obs-fold hiding Transfer-Encoding", send: "POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"},
	{name: "whitespace before the first header", send: "GET / HTTP/1.1\r\n Host: k\r\n\r\n"},
	{name: "underscore in a header name", send: "GET / HTTP/1.1\r\nHost: k\r\nX_Forwarded_For: 10.0.0.1\r\n\r\n"},
	{name: "bare LF after the request line", send: "GET / HTTP/1.1\nHost: k\r\n\r\n"},
	{name: "bare LF ending a header", send: "GET / HTTP/1.1\r\nHost: k\nX: y\r\n\r\n"},
	{name: "bare LF ending the head", send: "GET / HTTP/1.1\r\nHost: k\r\n\n"},
	{name: "bare CR inside a header", send: "GET / HTTP/1.1\r\nHost: k\rX: y\r\n\r\n"},
	{name: "NUL in a header value", send: "GET / HTTP/1.1\r\nHost: k\r\nX: a\x00b\r\n\r\n"},
	{name: "escape in a header value", send: "GET / HTTP/1.1\r\nHost: k\r\nX: a\x1bb\r\n\r\n"},
	{name: "DEL in a header value", send: "GET / HTTP/1.1\r\nHost: k\r\nX: a\x7fb\r\n\r\n"},
	{name: "header line without a colon", send: "GET / HTTP/1.1\r\nHost: k\r\nnocolon\r\n\r\n"},
	{name: "empty header name", send: "GET / HTTP/1.1\r\nHost: k\r\n: v\r\n\r\n"},
	{name: "HTTP/2 prior knowledge preface", send: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"},
	{name: "HTTP/1.2", send: "GET / HTTP/1.2\r\nHost: k\r\n\r\n"},
	{name: "lower-case version", send: "GET / http/1.1\r\nHost: k\r\n\r\n"},
	{name: "HTTP/0.9 request line", send: "GET /\r\n\r\n"},
	{name: "double space in the request line", send: "GET  / HTTP/1.1\r\nHost: k\r\n\r\n"},
	{name: "empty line before the request", send: "\r\nGET / HTTP/1.1\r\nHost: k\r\n\r\n"},
	{name: "fragment in the target", send: "GET /a#b HTTP/1.1\r\nHost: k\r\n\r\n"},
	{name: "bad percent-encoding in the path", send: "GET /%zz HTTP/1.1\r\nHost: k\r\n\r\n"},
	{name: "non-ASCII in the target", send: "GET /\xc3\xa9 HTTP/1.1\r\nHost: k\r\n\r\n"},
	{name: "authority-form CONNECT", send: "CONNECT internal:443 HTTP/1.1\r\nHost: internal:443\r\n\r\n"},
	{name: "asterisk target with GET", send: "GET * HTTP/1.1\r\nHost: k\r\n\r\n"},
	{name: "absolute-form with userinfo", send: "GET http://u@k/ HTTP/1.1\r\nHost: k\r\n\r\n"},
	{name: "missing Host in HTTP/1.1", send: "GET / HTTP/1.1\r\n\r\n"},
	{name: "two Host headers", send: "GET / HTTP/1.1\r\nHost: k\r\nHost: evil\r\n\r\n"},
	{name: "Trailer declaring Content-Length", send: "POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\nTrailer: Content-Length\r\n\r\n0\r\nContent-Length: 5\r\n\r\n"},
	{
		name: "too many header lines",
		opts: Options{MaxHeaders: 5},
		send: "GET / HTTP/1.1\r\nHost: k\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n",
		want: []reply{{Status: 431, Close: true, Code: "too_many_headers"}},
	},
	{
		name: "head larger than MaxHeaderBytes",
		opts: Options{MaxHeaderBytes: 4096},
		send: "GET / HTTP/1.1\r\nHost: k\r\nX: " + strings.Repeat("a", 6000) + "\r\n\r\n",
		want: []reply{{Status: 431, Close: true, Code: "headers_too_large"}},
	},
	{
		name: "valid request, then a smuggling one, pipelined",
		send: "GET /first HTTP/1.1\r\nHost: k\r\n\r\nPOST / HTTP/1.1\r\nHost: k\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		want: []reply{ok200, refused},
		seen: []string{"GET /first"},
	},
	{
		name: "bad request hidden after a Content-Length body",
		send: "POST /first HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: k\nX: y\r\n\r\n",
		want: []reply{ok200, refused},
		seen: []string{"POST /first body=hello"},
	},
	{
		name: "bad request hidden after a chunked body",
		send: "POST /first HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: k\r\nX_Y: 1\r\n\r\n",
		want: []reply{ok200, refused},
		seen: []string{"POST /first body=hello"},
	},
}

func TestAttacksAreRefused(t *testing.T) {
	for _, tt := range attacks {
		t.Run(tt.name, func(t *testing.T) {
			addr, rc, _ := serve(t, tt.opts)
			c := dial(t, addr)
			if _, err := io.WriteString(c, tt.send+next); err != nil {
				t.Fatal(err)
			}
			got := readReplies(t, bufio.NewReader(c))
			want := tt.want
			if want == nil {
				want = []reply{refused}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("responses (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.seen, rc.requests()); diff != "" {
				t.Errorf("requests the handler saw (-want +got):\n%s", diff)
			}
		})
	}
}

// TestChunkedBodyFaults covers framing faults found after a head was passed:
// the handler's body read fails, and the connection closes without serving
// anything pipelined after it.
func TestChunkedBodyFaults(t *testing.T) {
	tests := []struct {
		name string
		body string
	}{
		{"chunk size with a bare LF", "5\nhello\r\n0\r\n\r\n"},
		{"chunk size with a space", "5 \r\nhello\r\n0\r\n\r\n"},
		{"chunk size too long", "00000000000000005\r\nhello\r\n0\r\n\r\n"},
		{"chunk size not hex", "5g\r\nhello\r\n0\r\n\r\n"},
		{"chunk data longer than its size", "3\r\nhello\r\n0\r\n\r\n"},
		{"chunk data ended by a bare LF", "5\r\nhello\n0\r\n\r\n"},
		{"control byte in a chunk extension", "5;a=\x00\r\nhello\r\n0\r\n\r\n"},
		{"trailer with a bare LF", "0\r\nX: y\n\r\n"},
		{"trailer folded", "0\r\nX: y\r\n z\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, rc, _ := serve(t, Options{})
			c := dial(t, addr)
			send := "POST /chunked HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n" + tt.body + next
			if _, err := io.WriteString(c, send); err != nil {
				t.Fatal(err)
			}
			got := readReplies(t, bufio.NewReader(c))
			if len(got) > 1 {
				t.Errorf("got %d responses, want at most 1: %+v", len(got), got)
			}
			seen := rc.requests()
			if len(seen) != 1 || !strings.HasPrefix(seen[0], "POST /chunked") || !strings.HasSuffix(seen[0], " err") {
				t.Errorf("handler saw %q, want one POST /chunked whose body read failed", seen)
			}
		})
	}
}

func TestValidRequestsPass(t *testing.T) {
	bigHeaders := "GET /big HTTP/1.1\r\nHost: k\r\n"
	for i := range 60 {
		bigHeaders += fmt.Sprintf("X-Big-%d: %s\r\n", i, strings.Repeat("v", 1000))
	}
	bigHeaders += "\r\n"
	smuggleText := "x\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: k\r\n\r\n"
	tests := []struct {
		name   string
		writes []string // written in turn; a response is read after each when replies is nil
		want   []reply
		seen   []string
	}{
		{
			name:   "keep-alive sequence of GETs",
			writes: []string{"GET /1 HTTP/1.1\r\nHost: k\r\n\r\n", "GET /2 HTTP/1.1\r\nHost: k\r\n\r\n", "GET /3?q=a%20b HTTP/1.1\r\nHost: k\r\n\r\n"},
			want:   []reply{ok200, ok200, ok200},
			seen:   []string{"GET /1", "GET /2", "GET /3?q=a%20b"},
		},
		{
			name:   "pipelined requests in one write",
			writes: []string{"GET /1 HTTP/1.1\r\nHost: k\r\n\r\nPOST /2 HTTP/1.1\r\nHost: k\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: k\r\n\r\n"},
			want:   []reply{ok200, ok200, ok200},
			seen:   []string{"GET /1", "POST /2 body=abc", "GET /3"},
		},
		{
			name:   "chunked POST with extensions and trailers",
			writes: []string{"POST /c HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5;name=v\r\nhello\r\n1\r\n!\r\n0\r\nX-Sum: 42\r\n\r\n"},
			want:   []reply{ok200},
			seen:   []string{"POST /c body=hello! trailer=X-Sum:42"},
		},
		{
			name:   "Transfer-Encoding in capitals",
			writes: []string{"POST /c HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
			want:   []reply{ok200},
			seen:   []string{"POST /c body=abc"},
		},
		{
			name:   "body that looks like a request",
			writes: []string{fmt.Sprintf("POST /p HTTP/1.1\r\nHost: k\r\nContent-Length: %d\r\n\r\n%s", len(smuggleText), smuggleText)},
			want:   []reply{ok200},
			seen:   []string{"POST /p body=" + smuggleText},
		},
		{
			name:   "chunked body that looks like a request",
			writes: []string{fmt.Sprintf("POST /p HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(smuggleText), smuggleText)},
			want:   []reply{ok200},
			seen:   []string{"POST /p body=" + smuggleText},
		},
		{
			name:   "HTTP/1.0 without Host",
			writes: []string{"GET /old HTTP/1.0\r\n\r\n"},
			want:   []reply{{Status: 200, Close: true, Body: "ok"}},
			seen:   []string{"GET /old"},
		},
		{
			name:   "repeated identical Content-Length",
			writes: []string{"POST /r HTTP/1.1\r\nHost: k\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nhi"},
			want:   []reply{ok200},
			seen:   []string{"POST /r body=hi"},
		},
		{
			name:   "absolute-form and OPTIONS *",
			writes: []string{"GET http://k:8080/a?b HTTP/1.1\r\nHost: k\r\n\r\n", "OPTIONS * HTTP/1.1\r\nHost: k\r\n\r\n"},
			want:   []reply{ok200, {Status: 200}},
			seen:   []string{"GET http://k:8080/a?b"},
		},
		{
			name:   "large but legal headers",
			writes: []string{bigHeaders},
			want:   []reply{ok200},
			seen:   []string{"GET /big"},
		},
		{
			name:   "obs-text in a header value",
			writes: []string{"GET /t HTTP/1.1\r\nHost: k\r\nX-Name: caf\xe9\r\n\r\n"},
			want:   []reply{ok200},
			seen:   []string{"GET /t"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, rc, _ := serve(t, Options{})
			c := dial(t, addr)
			r := bufio.NewReader(c)
			var got []reply
			for _, w := range tt.writes {
				if _, err := io.WriteString(c, w); err != nil {
					t.Fatal(err)
				}
				if len(tt.writes) > 1 {
					got = append(got, readReply(t, r))
				}
			}
			for len(got) < len(tt.want) {
				got = append(got, readReply(t, r))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("responses (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.seen, rc.requests()); diff != "" {
				t.Errorf("requests the handler saw (-want +got):\n%s", diff)
			}
		})
	}
}

// TestHeadOneByteAtATime writes a request, and the next one, a byte per
// write: the guard must put the head together across reads.
func TestHeadOneByteAtATime(t *testing.T) {
	addr, rc, _ := serve(t, Options{})
	c := dial(t, addr)
	c.(*net.TCPConn).SetNoDelay(true)
	send := "POST /slow HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET /after HTTP/1.1\r\nHost: k\r\n\r\n"
	for i := range len(send) {
		if _, err := c.Write([]byte{send[i]}); err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReader(c)
	got := []reply{readReply(t, r), readReply(t, r)}
	if diff := cmp.Diff([]reply{ok200, ok200}, got); diff != "" {
		t.Errorf("responses (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"POST /slow body=abc trailer=X-T:1", "GET /after"}, rc.requests()); diff != "" {
		t.Errorf("requests the handler saw (-want +got):\n%s", diff)
	}
}

// TestBadHeadOneByteAtATime checks that a refusal does not depend on the
// violation arriving in one read.
func TestBadHeadOneByteAtATime(t *testing.T) {
	addr, rc, _ := serve(t, Options{})
	c := dial(t, addr)
	send := "GET /a HTTP/1.1\r\nHost: k\r\n\r\nPOST / HTTP/1.1\r\nHost: k\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + next
	for i := range len(send) {
		if _, err := c.Write([]byte{send[i]}); err != nil {
			// The guard may close before the last byte; that is fine.
			break
		}
	}
	got := readReplies(t, bufio.NewReader(c))
	if diff := cmp.Diff([]reply{ok200, refused}, got); diff != "" {
		t.Errorf("responses (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"GET /a"}, rc.requests()); diff != "" {
		t.Errorf("requests the handler saw (-want +got):\n%s", diff)
	}
}

// TestExpectContinue sends the head alone, waits for net/http's interim
// 100 Continue, then sends the body.
func TestExpectContinue(t *testing.T) {
	addr, rc, _ := serve(t, Options{})
	c := dial(t, addr)
	if _, err := io.WriteString(c, "POST /e HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	if got := readReply(t, r); got.Status != http.StatusContinue {
		t.Fatalf("first response %+v, want 100 Continue", got)
	}
	if _, err := io.WriteString(c, "hello"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ok200, readReply(t, r)); diff != "" {
		t.Errorf("response (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"POST /e body=hello"}, rc.requests()); diff != "" {
		t.Errorf("requests the handler saw (-want +got):\n%s", diff)
	}
}

// TestPipelinedRefusalWaitsForRunningHandler: the request before a refused
// one is still being handled when the guard finds the violation; its
// response must come out whole, before the refusal, and its context must not
// be cancelled by the guard. It runs keyward's server (internal/http1),
// whose hang-up watch is what reads the bad head: through WatchRead.
func TestPipelinedRefusalWaitsForRunningHandler(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := Guard(ln, Options{})
	rejected := make(chan struct{})
	g.onReject = func(*violation) { close(rejected) }
	release := make(chan struct{})
	started := make(chan struct{})
	ctxErr := make(chan error, 1)
	srv := &http1.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		ctxErr <- r.Context().Err()
		_, _ = io.WriteString(w, "ok")
	})}
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
	// The bad head arrives while the handler runs; the server's hang-up
	// watch is what reads it.
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: k\r\nX: \x00\r\n\r\n"+next); err != nil {
		t.Fatal(err)
	}
	<-rejected
	close(release)
	got := readReplies(t, bufio.NewReader(c))
	if diff := cmp.Diff([]reply{ok200, refused}, got); diff != "" {
		t.Errorf("responses (-want +got):\n%s", diff)
	}
	if err := <-ctxErr; err != nil {
		t.Errorf("the running request's context ended: %v", err)
	}
}

// TestWatchRead checks the guard's side of the hang-up watch contract
// (see WatchRead) on one connection: valid input passes through WatchRead
// as through Read; after a refusal, Read fails at once with a read
// *net.OpError, while WatchRead waits for the read deadline.
func TestWatchRead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := Guard(ln, Options{})
	t.Cleanup(func() { g.Close() })
	client := dial(t, ln.Addr().String())
	sc, err := g.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	w, ok := sc.(interface{ WatchRead([]byte) (int, error) })
	if !ok {
		t.Fatalf("%T has no WatchRead method", sc)
	}
	_ = sc.SetReadDeadline(time.Now().Add(safety))

	if _, err := io.WriteString(client, next); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if n, err := w.WatchRead(b[:]); n != 1 || err != nil || b[0] != 'G' {
		t.Fatalf("WatchRead on a valid head = %d, %v (byte %q); want the head's first byte", n, err, b[:n])
	}
	rest := make([]byte, len(next)-1)
	if _, err := io.ReadFull(sc, rest); err != nil || string(b[:])+string(rest) != next {
		t.Fatalf("Read after WatchRead: %q, %v; want the rest of the head", rest, err)
	}

	if _, err := io.WriteString(client, "GET / HTTP/1.1\r\nHost: k\r\nX: \x00\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_, err = sc.Read(make([]byte, 64))
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" || !errors.Is(err, errRejected) {
		t.Fatalf("Read after a refused head: %v; want a read *net.OpError wrapping the refusal", err)
	}
	_ = sc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := w.WatchRead(b[:]); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WatchRead after a refusal = %d, %v; want it to wait for the read deadline", n, err)
	}
}

func TestMaxConns(t *testing.T) {
	addr, rc, g := serve(t, Options{MaxConns: 2})
	get := func(c net.Conn, r *bufio.Reader, path string) {
		t.Helper()
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: k\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if got := readReply(t, r); got != ok200 {
			t.Fatalf("GET %s: %+v", path, got)
		}
	}
	c1, c2 := dial(t, addr), dial(t, addr)
	get(c1, bufio.NewReader(c1), "/1")
	get(c2, bufio.NewReader(c2), "/2")

	// The third connection is taken from the kernel but held, not
	// served, while two are open: the slots are all taken, and net/http's
	// server offers no idle connection to close (Options.Idle is nil).
	c3 := dial(t, addr)
	if _, err := io.WriteString(c3, "GET /3 HTTP/1.1\r\nHost: k\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the third connection to wait", func() bool { return g.Waiting() == 1 })
	if n := g.Open(); n != 2 {
		t.Fatalf("%d slots taken, want 2", n)
	}
	if !g.Crowded() {
		t.Error("Crowded() is false with a connection waiting")
	}
	if diff := cmp.Diff([]string{"GET /1", "GET /2"}, rc.requests()); diff != "" {
		t.Fatalf("served before a slot was free (-want +got):\n%s", diff)
	}

	c1.Close()
	if got := readReply(t, bufio.NewReader(c3)); got != ok200 {
		t.Fatalf("GET /3 after a close: %+v", got)
	}
	if diff := cmp.Diff([]string{"GET /1", "GET /2", "GET /3"}, rc.requests()); diff != "" {
		t.Errorf("requests the handler saw (-want +got):\n%s", diff)
	}
	if n := g.Waiting(); n != 0 {
		t.Errorf("Waiting() = %d once admitted, want 0", n)
	}
}

// waitFor polls cond until it holds, failing the test after the safety
// timeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(safety)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// fakeListener hands out in-memory connections.
type fakeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newFakeListener() *fakeListener {
	return &fakeListener{conns: make(chan net.Conn, 10), closed: make(chan struct{})}
}

func (f *fakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-f.conns:
		return c, nil
	case <-f.closed:
		return nil, net.ErrClosed
	}
}

func (f *fakeListener) Close() error   { f.once.Do(func() { close(f.closed) }); return nil }
func (f *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

func TestCloseReleasesSlotOnce(t *testing.T) {
	fl := newFakeListener()
	l := Guard(fl, Options{MaxConns: 2})
	for range 3 {
		a, _ := net.Pipe()
		fl.conns <- a
	}
	c1, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c2, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c1.Close()
	c1.Close()
	c1.Close()
	if n := l.Open(); n != 1 {
		t.Fatalf("after closing one conn three times, %d slots taken, want 1", n)
	}
	c3, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if n := l.Open(); n != 2 {
		t.Fatalf("%d slots taken, want 2", n)
	}
	c2.Close()
	c3.Close()
	if n := l.Open(); n != 0 {
		t.Fatalf("%d slots taken after closing all, want 0", n)
	}
}

func TestCloseWakesWaitingAccept(t *testing.T) {
	fl := newFakeListener()
	l := Guard(fl, Options{MaxConns: 1})
	a, _ := net.Pipe()
	b, _ := net.Pipe()
	fl.conns <- a
	if _, err := l.Accept(); err != nil {
		t.Fatal(err)
	}
	fl.conns <- b // taken and held: no slot is free
	errc := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		errc <- err
	}()
	waitFor(t, "Accept to hold the second connection", func() bool { return l.Waiting() == 1 })
	l.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
}

// idleServer is an IdleCloser over the connections the test accepted:
// those marked idle are closed on request, in order.
type idleServer struct {
	mu    sync.Mutex
	idle  []net.Conn
	asked []int
}

func (s *idleServer) CloseIdle(n int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked = append(s.asked, n)
	k := min(n, len(s.idle))
	for _, c := range s.idle[:k] {
		c.Close()
	}
	s.idle = s.idle[k:]
	return k
}

func (s *idleServer) requests() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.asked...)
}

// TestAtLimitClosesIdle: with every slot taken, a new connection is
// admitted at once by closing an idle one (the server's longest idle),
// not after the idle timeout; a busy table holds it until a connection
// ends.
func TestAtLimitClosesIdle(t *testing.T) {
	fl := newFakeListener()
	srv := &idleServer{}
	l := Guard(fl, Options{MaxConns: 2, Idle: srv})
	var conns []net.Conn
	for range 2 {
		a, _ := net.Pipe()
		fl.conns <- a
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	srv.mu.Lock()
	srv.idle = []net.Conn{conns[1]}
	srv.mu.Unlock()

	a, _ := net.Pipe()
	fl.conns <- a
	if _, err := l.Accept(); err != nil {
		t.Fatal(err)
	}
	if got := srv.requests(); !slices.Equal(got, []int{1}) {
		t.Errorf("CloseIdle calls %v, want [1]", got)
	}
	if n, r := l.Open(), l.Reclaimed(); n != 2 || r != 1 {
		t.Errorf("Open() = %d, Reclaimed() = %d; want 2, 1", n, r)
	}

	// Nothing idle now: the next one waits for a busy connection to end.
	b, _ := net.Pipe()
	fl.conns <- b
	accepted := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		accepted <- err
	}()
	waitFor(t, "the connection to wait", func() bool { return l.Waiting() == 1 })
	select {
	case err := <-accepted:
		t.Fatalf("admitted over the limit (%v)", err)
	default:
	}
	conns[0].Close()
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	if n := l.Waiting(); n != 0 {
		t.Errorf("Waiting() = %d after admission, want 0", n)
	}
}

// TestSetOptionsMaxConns: a lowered limit closes idle connections down to
// it and admits no one until busy ones end; a raised one admits a waiting
// connection at once.
func TestSetOptionsMaxConns(t *testing.T) {
	fl := newFakeListener()
	srv := &idleServer{}
	l := Guard(fl, Options{MaxConns: 4, Idle: srv})
	var conns []net.Conn
	for range 4 {
		a, _ := net.Pipe()
		fl.conns <- a
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	srv.mu.Lock()
	srv.idle = []net.Conn{conns[3]} // one idle, three busy
	srv.mu.Unlock()

	l.SetOptions(Options{MaxConns: 2, Idle: srv})
	if n := l.Open(); n != 3 {
		t.Fatalf("Open() = %d after lowering the limit to 2 with one idle connection; want 3 (busy ones are not cut)", n)
	}
	if !l.Crowded() {
		t.Error("Crowded() is false with more open than the limit")
	}
	b, _ := net.Pipe()
	fl.conns <- b
	accepted := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		accepted <- err
	}()
	waitFor(t, "the connection to wait", func() bool { return l.Waiting() == 1 })
	conns[0].Close() // 2 open: still at the limit
	select {
	case err := <-accepted:
		t.Fatalf("admitted at the lowered limit (%v)", err)
	default:
	}
	l.SetOptions(Options{MaxConns: 3, Idle: srv})
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	if n := l.Open(); n != 3 {
		t.Errorf("Open() = %d, want 3", n)
	}
}

func TestUnlimitedConns(t *testing.T) {
	fl := newFakeListener()
	l := Guard(fl, Options{MaxConns: -1})
	if n := l.maxConns(); n >= 0 {
		t.Fatalf("MaxConns -1 has a slot limit of %d", n)
	}
	if d := Guard(fl, Options{}); d.maxConns() != defaultMaxConns {
		t.Errorf("default MaxConns %d, want %d", d.maxConns(), defaultMaxConns)
	}
}

func TestResponse(t *testing.T) {
	got := string(response(errCLAndTE))
	want := "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\nContent-Length: 87\r\n\r\n" +
		`{"error":{"code":"bad_framing","message":"both Content-Length and Transfer-Encoding"}}` + "\n"
	if got != want {
		t.Errorf("response:\n%q\nwant\n%q", got, want)
	}
	if !bytes.HasPrefix(response(errTooManyHeaders), []byte("HTTP/1.1 431 Request Header Fields Too Large\r\n")) {
		t.Errorf("431 status line: %q", response(errTooManyHeaders))
	}
}
