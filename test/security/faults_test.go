package security_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/gatewaytest"
	"golang.org/x/net/http2"
)

const faultsConfig = `
secrets:
  github: { env: GITHUB_TOKEN }
  maps:   { file: maps_key }
routes:
  - name: fault
    path: /fault/{kind}
    methods: [GET, POST]
    timeout: 100ms
    idle_timeout: 100ms
    max_body: 1KB
    upstream: "{{UP}}/fault/{kind}"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
  - name: stream
    path: /stream/{kind}
    idle_timeout: 5s
    upstream: "{{UP}}/fault/{kind}"
  - name: down
    path: /down
    upstream: "http://{{DOWN}}/maps/{secret.maps}"
    query: { set: { key: "{secret.maps}" } }
`

// faults coordinates a faulty upstream with the test driving it.
type faults struct {
	started  chan struct{} // an upstream handler began
	ctxDone  chan struct{} // an upstream handler saw its request cancelled
	half     chan struct{} // the big body is half written
	measured chan struct{} // the test measured memory; finish the body
}

const bigBody = 48 << 20

func newFaults() *faults {
	return &faults{started: make(chan struct{}, 8), ctxDone: make(chan struct{}, 8), half: make(chan struct{}, 1), measured: make(chan struct{})}
}

func (f *faults) serve(w http.ResponseWriter, r *http.Request) {
	f.started <- struct{}{}
	defer func() {
		if r.Context().Err() != nil {
			f.ctxDone <- struct{}{}
		}
	}()
	fl := w.(http.Flusher)
	switch strings.TrimPrefix(r.URL.Path, "/fault/") {
	case "hang":
		<-r.Context().Done()
	case "stall-length":
		w.Header().Set("Content-Length", "1000")
		_, _ = w.Write([]byte("0123456789"))
		fl.Flush()
		<-r.Context().Done()
	case "stall-chunked":
		_, _ = w.Write([]byte("0123456789"))
		fl.Flush()
		<-r.Context().Done()
	case "reset":
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789")
		_ = brw.Flush()
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, not FIN
		}
		conn.Close()
	case "big-headers":
		w.Header().Set("X-Big", strings.Repeat("a", 100<<10))
		w.Header().Set("X-Token", r.Header.Get("Authorization"))
		_, _ = w.Write([]byte("{}"))
	case "big-body":
		w.Header().Set("Content-Type", "application/octet-stream")
		chunk := []byte(strings.Repeat("0123456789abcdef", 2048)) // 32 KiB
		for n := 0; n < bigBody; n += len(chunk) {
			if n == bigBody/2 {
				fl.Flush()
				f.half <- struct{}{}
				select {
				case <-f.measured:
				case <-r.Context().Done():
					return
				}
			}
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	case "gone":
		<-r.Context().Done()
	case "error-text":
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = fmt.Fprintf(w, "upstream failed for %s %s with %s", r.Method, r.URL, r.Header.Get("Authorization"))
	}
}

// wait receives from c or fails the test after a generous bound.
func wait(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// get performs a real client request and reads the body. It returns the
// first error the client saw: an aborted stream fails either before the
// headers (when the gateway had not flushed them yet) or while reading
// the body; a clean truncated 200 returns nil.
func get(t *testing.T, h *gatewaytest.Harness, target string) (*http.Response, []byte, error) {
	t.Helper()
	res, err := h.GW.Client().Get(h.GW.URL + target)
	if err != nil {
		return nil, nil, err
	}
	body, rerr := io.ReadAll(res.Body)
	res.Body.Close()
	h.Record(res, body)
	return res, body, rerr
}

// aborted asserts the client saw the stream end in an error.
func aborted(t *testing.T, res *http.Response, body []byte, err error) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("status %d, %d body bytes read without error: a silent truncated response", res.StatusCode, len(body))
	case res != nil && res.StatusCode != http.StatusOK:
		t.Errorf("status %d, want the upstream's 200 then an abort", res.StatusCode)
	case res != nil && gatewaytest.CurrentEngine() == gatewaytest.H2:
		// HTTP/2 cuts a stream with RST_STREAM: any error reading the
		// body shows it.
	case res != nil && !errors.Is(err, io.ErrUnexpectedEOF):
		t.Errorf("reading the body: %v, want unexpected EOF", err)
	case res == nil && !errors.Is(err, io.EOF):
		t.Errorf("request: %v, want the connection closed before the headers", err)
	}
}

// TestFaultsUpstream: every upstream fault ends in a clean JSON 502/504
// or an aborted stream the client can detect, never a silent truncated
// 200, and never shows the upstream's error text.
func TestFaultsUpstream(t *testing.T) {
	f := newFaults()
	h := newHarness(t, faultsConfig, f.serve)

	t.Run("upstream hangs before headers: 504, upstream request cancelled", func(t *testing.T) {
		res := h.Get("/fault/hang", nil)
		if res.Status != http.StatusGatewayTimeout || errCode(res.Body) != "upstream_timeout" {
			t.Errorf("status %d body %q, want 504 upstream_timeout", res.Status, res.Body)
		}
		authorizedOnce(t, only(t, h))
		wait(t, f.ctxDone, "the upstream request to be cancelled")
	})
	t.Run("upstream stalls after headers (stall-chunked): the stream is aborted, not cleanly truncated", func(t *testing.T) {
		res, body, err := get(t, h, "/fault/stall-chunked")
		aborted(t, res, body, err)
		only(t, h)
		wait(t, f.ctxDone, "the upstream request to be cancelled")
	})
	// A body of known length is read before the head is sent (up to a
	// buffer), so a break within it still gets a clean JSON answer
	// (issue 15.2: it was an empty reply logged as 200).
	t.Run("upstream stalls within a Content-Length body: 504 upstream_stalled", func(t *testing.T) {
		res := h.Get("/fault/stall-length", nil)
		if res.Status != http.StatusGatewayTimeout || errCode(res.Body) != "upstream_stalled" {
			t.Errorf("status %d body %q, want 504 upstream_stalled", res.Status, res.Body)
		}
		only(t, h)
		wait(t, f.ctxDone, "the upstream request to be cancelled")
	})
	t.Run("upstream resets within a Content-Length body: 502 upstream_unavailable", func(t *testing.T) {
		res := h.Get("/fault/reset", nil)
		if res.Status != http.StatusBadGateway || errCode(res.Body) != "upstream_unavailable" {
			t.Errorf("status %d body %q, want 502 upstream_unavailable", res.Status, res.Body)
		}
		only(t, h)
	})
	t.Run("huge upstream response headers: 502", func(t *testing.T) {
		res := h.Get("/fault/big-headers", nil)
		if res.Status != http.StatusBadGateway || errCode(res.Body) != "upstream_unavailable" {
			t.Errorf("status %d body %q, want 502 upstream_unavailable", res.Status, res.Body)
		}
		if res.Header.Get("X-Big") != "" || res.Header.Get("X-Token") != "" {
			t.Errorf("upstream headers passed on")
		}
		only(t, h)
	})
	t.Run("upstream error body is scrubbed, its status passed on", func(t *testing.T) {
		res := h.Get("/fault/error-text", nil)
		if res.Status != http.StatusInternalServerError || !strings.Contains(res.Body, "[REDACTED]") {
			t.Errorf("status %d body %q", res.Status, res.Body)
		}
		only(t, h)
	})
	t.Run("unreachable upstream: 502 without the dial error or the URL", func(t *testing.T) {
		res := h.Get("/down", nil)
		if res.Status != http.StatusBadGateway || errCode(res.Body) != "upstream_unavailable" {
			t.Errorf("status %d body %q, want 502 upstream_unavailable", res.Status, res.Body)
		}
		for _, leak := range []string{"127.0.0.1", "dial", "refused", "/maps", "http://"} {
			if strings.Contains(res.Body, leak) {
				t.Errorf("the client saw the upstream error (%q): %s", leak, res.Body)
			}
		}
		if !strings.Contains(h.Logs.String(), `"upstream":"http://127.0.0.1`) || !strings.Contains(h.Logs.String(), "/maps/[REDACTED]") {
			t.Errorf("the error was not logged with its target redacted")
		}
		if got := h.Up.Take(); len(got) != 0 {
			t.Errorf("recording upstream got %s", targets(got))
		}
	})
	t.Run("request body over max_body: 413 before the upstream", func(t *testing.T) {
		res := h.Raw("POST", "/fault/hang", http.Header{"Content-Type": {"application/json"}}, strings.Repeat("x", 2000))
		refused(t, h, res, http.StatusRequestEntityTooLarge, "body_too_large")
	})
	t.Run("chunked request body over max_body: 413", func(t *testing.T) {
		body := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", 2000, strings.Repeat("x", 2000))
		res := h.RawBytes("POST", "POST /fault/error-text HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"+body)
		if res.Status != http.StatusRequestEntityTooLarge || errCode(res.Body) != "body_too_large" {
			t.Errorf("status %d body %q, want 413 body_too_large", res.Status, res.Body)
		}
		for _, s := range h.Up.Take() {
			if len(s.Body) > 1024 {
				t.Errorf("upstream received %d body bytes, over max_body", len(s.Body))
			}
		}
	})
	drain(f)
}

// drain empties the coordination channels between cases.
func drain(f *faults) {
	for {
		select {
		case <-f.started:
		case <-f.ctxDone:
		default:
			return
		}
	}
}

// TestFaultsHugeBodyFlatMemory: a huge response streams through with
// memory that does not grow with its size.
func TestFaultsHugeBodyFlatMemory(t *testing.T) {
	f := newFaults()
	h := newHarness(t, faultsConfig, f.serve)
	before := heapInUse()
	// Its own route: the fault route's 100ms idle timeout could cut the
	// stream while the test measures on a loaded machine.
	res, err := h.GW.Client().Get(h.GW.URL + "/stream/big-body")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	h.Record(res, nil)
	type result struct {
		n   int64
		err error
	}
	read := make(chan result, 1)
	go func() {
		n, err := io.Copy(io.Discard, res.Body)
		read <- result{n, err}
	}()
	// The upstream pauses at half the body; the client has read what
	// arrived and waits for more.
	wait(t, f.half, "the upstream to write half the body")
	during := heapInUse()
	close(f.measured)
	var r result
	select {
	case r = <-read:
	case <-time.After(30 * time.Second):
		t.Fatal("timed out reading the body")
	}
	if r.err != nil || r.n != bigBody {
		t.Fatalf("read %d bytes, err %v; want %d", r.n, r.err, bigBody)
	}
	after := heapInUse()
	const bound = 8 << 20
	t.Logf("heap in use: before %d KiB, mid-stream %d KiB, after %d KiB (body %d MiB)", before>>10, during>>10, after>>10, bigBody>>20)
	if during > before+bound || after > before+bound {
		t.Errorf("heap grew by more than %d MiB streaming a %d MiB body", bound>>20, bigBody>>20)
	}
	only(t, h)
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestFaultsClientDisconnect: a client that goes away cancels the
// upstream request, and the access log records 499. The route waits 30 s
// for the upstream, so only the hang-up can end the exchange (the server
// watches a request for hang-ups once it has run 200-300 ms).
func TestFaultsClientDisconnect(t *testing.T) {
	f := newFaults()
	h := newHarness(t, faultsConfig, f.serve)
	l := serveLive(t, h)
	if l.gw.Engine == gatewaytest.H2 {
		// Over HTTP/2 the client resets its stream (the connection
		// stays).
		c := gatewaytest.DialH2(t, l.gw)
		if err := c.WriteHeaders(1, true, gatewaytest.H2Request("GET", "/stream/gone")...); err != nil {
			t.Fatal(err)
		}
		wait(t, f.started, "the upstream to receive the request")
		if err := c.Framer.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
			t.Fatal(err)
		}
	} else {
		conn := l.gw.DialH1(t)
		if _, err := io.WriteString(conn, "GET /stream/gone HTTP/1.1\r\nHost: gw.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		wait(t, f.started, "the upstream to receive the request")
		conn.Close()
	}
	wait(t, f.ctxDone, "the upstream request to be cancelled")
	l.waitDone(t)
	only(t, h)
	var found bool
	sc := bufio.NewScanner(strings.NewReader(h.Logs.String()))
	for sc.Scan() {
		var line struct {
			Msg, Route, Error string
			Status            int
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "request" && line.Route == "stream" {
			found = true
			if line.Status != 499 || line.Error != "client_closed_request" {
				t.Errorf("access log status %d error %q, want 499 client_closed_request", line.Status, line.Error)
			}
		}
	}
	if !found {
		t.Errorf("no access-log line for the request")
	}
}

// TestFaultsOutboundPolicy: a route whose upstream name resolves to a
// denied address gets 502 upstream_address_denied and no connection is
// made; an IP written in the config is the config's own choice.
func TestFaultsOutboundPolicy(t *testing.T) {
	var hits atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	t.Cleanup(target.Close)
	_, port, _ := net.SplitHostPort(target.Listener.Addr().String())
	h := newHarness(t, `
secrets:
  github: { env: GITHUB_TOKEN }
outbound: { deny: ["127.0.0.0/8", "::1/128"] }
routes:
  - name: by-name
    path: /by-name
    upstream: "http://localhost:`+port+`/x"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
  - name: literal
    path: /literal
    upstream: "{{UP}}/x"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
`, nil)
	t.Run("a name resolving to a denied address: 502, nothing dialled", func(t *testing.T) {
		res := h.Get("/by-name", nil)
		if res.Status != http.StatusBadGateway || errCode(res.Body) != "upstream_address_denied" {
			t.Errorf("status %d body %q, want 502 upstream_address_denied", res.Status, res.Body)
		}
		if strings.Contains(res.Body, "127.0.0.1") || strings.Contains(res.Body, "localhost") {
			t.Errorf("the refusal names the address: %s", res.Body)
		}
		if n := hits.Load(); n != 0 {
			t.Errorf("the denied address received %d requests", n)
		}
	})
	t.Run("an IP literal in the config is dialled", func(t *testing.T) {
		authorizedOnce(t, ok(t, h, h.Get("/literal", nil)))
	})
	t.Run("proxy environment variables are ignored", func(t *testing.T) {
		// A proxy that does not exist: a client that consulted these would
		// fail (or send the credential to the proxy) instead of reaching
		// the upstream directly.
		dead := "http://" + gatewaytest.ClosedAddr(t)
		for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"} {
			t.Setenv(k, dead)
		}
		t.Setenv("NO_PROXY", "")
		authorizedOnce(t, ok(t, h, h.Get("/literal", nil)))
	})
}
