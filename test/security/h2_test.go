package security_test

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/keyward/keyward/internal/certs"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
)

// The HTTP/2 defences, proven with raw frames (golang.org/x/net/http2's
// Framer) against the public listener as keyward serves HTTP/2 over TLS
// (net/http's server, configured by internal/server). They run in the
// suite's h2 run only: the other engines do not speak HTTP/2.

// onlyH2 skips a test outside the suite's h2 run.
func onlyH2(t *testing.T) {
	t.Helper()
	if gatewaytest.CurrentEngine() != gatewaytest.H2 {
		t.Skip("HTTP/2 frames: runs under the h2 engine")
	}
}

// blocking is a handler that counts the requests running at once and
// holds each until released, whatever its client does: the worst case
// for a server that must bound how many run.
type blocking struct {
	running, peak atomic.Int64
	started       atomic.Int64
	release       chan struct{}
	once          sync.Once
}

func newBlocking(t *testing.T) *blocking {
	b := &blocking{release: make(chan struct{})}
	t.Cleanup(b.free)
	return b
}

func (b *blocking) free() { b.once.Do(func() { close(b.release) }) }

func (b *blocking) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.started.Add(1)
	n := b.running.Add(1)
	for {
		p := b.peak.Load()
		if n <= p || b.peak.CompareAndSwap(p, n) {
			break
		}
	}
	<-b.release
	b.running.Add(-1)
	_, _ = io.WriteString(w, "ok")
}

// serveH2 serves handler with the default settings of a config, as the
// h2 engine does.
func serveH2(t *testing.T, handler http.Handler) *gatewaytest.Server {
	t.Helper()
	h := newHarness(t, baseConfig, nil)
	ok(t, h, h.Get("/my-repos", nil)) // a metric for the scan
	return gatewaytest.Serve(t, handler, h.Gateway.Settings(), slog.New(slog.DiscardHandler))
}

// closedWith reads frames until the server ends the connection and
// returns the GOAWAY's error code (ErrCodeNo if it closed without one),
// and the IDs of the streams it reset.
func closedWith(t *testing.T, c *gatewaytest.H2Conn) (http2.ErrCode, []uint32) {
	t.Helper()
	_ = c.Conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	var resets []uint32
	for {
		f, err := c.Framer.ReadFrame()
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the server never ended the connection")
			}
			return http2.ErrCodeNo, resets
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			return f.ErrCode, resets
		case *http2.RSTStreamFrame:
			resets = append(resets, f.StreamID)
		}
	}
}

// goAway reads until the server's GOAWAY and returns its code and the
// last stream it says it processed.
func goAway(t *testing.T, c *gatewaytest.H2Conn) (http2.ErrCode, uint32) {
	t.Helper()
	_ = c.Conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		f, err := c.Framer.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY before the connection ended: %v", err)
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			return g.ErrCode, g.LastStreamID
		}
	}
}

// TestH2RapidReset (CVE-2023-44487): a client that opens streams and
// resets them at once cannot make the server run more handlers than it
// allows streams; a client that keeps doing it while the handlers run is
// disconnected (GOAWAY ENHANCE_YOUR_CALM), long before its streams run
// out.
func TestH2RapidReset(t *testing.T) {
	onlyH2(t)
	b := newBlocking(t)
	gw := serveH2(t, b)
	c := gatewaytest.DialH2(t, gw)
	limit := int64(c.Settings[http2.SettingMaxConcurrentStreams])
	if limit == 0 || limit > 250 {
		t.Fatalf("SETTINGS_MAX_CONCURRENT_STREAMS %d: want a bound of at most 250", limit)
	}
	const attempts = 5000
	sent := make(chan int, 1)
	go func() {
		n := 0
		for id := uint32(1); n < attempts; id += 2 {
			if c.WriteHeaders(id, true, gatewaytest.H2Request("GET", "/")...) != nil ||
				c.Framer.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
				break
			}
			n++
		}
		sent <- n
	}()
	code, last := goAway(t, c)
	c.Conn.Close()
	n := <-sent
	if code != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("connection ended with %v, want GOAWAY ENHANCE_YOUR_CALM", code)
	}
	// On a busy machine the client's writes may all sit in the socket
	// buffers before the server reads them: what counts is how far the
	// server went, the last stream its GOAWAY says it processed.
	if last >= 2*attempts-1 {
		t.Errorf("the server processed all %d streams (last %d) before cutting the connection", attempts, last)
	}
	if p := b.peak.Load(); p > limit {
		t.Errorf("%d handlers ran at once, over the %d streams allowed", p, limit)
	}
	t.Logf("sent %d HEADERS+RST_STREAM pairs, the server went to stream %d; %d handlers started, at most %d at once (limit %d)", n, last, b.started.Load(), b.peak.Load(), limit)
}

// TestH2ConcurrentStreamLimit: the server advertises a stream limit and
// refuses a stream beyond it without running its handler.
func TestH2ConcurrentStreamLimit(t *testing.T) {
	onlyH2(t)
	b := newBlocking(t)
	gw := serveH2(t, b)
	c := gatewaytest.DialH2(t, gw)
	limit := c.Settings[http2.SettingMaxConcurrentStreams]
	if limit != 100 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS %d, want 100", limit)
	}
	id := uint32(1)
	for range limit {
		if err := c.WriteHeaders(id, true, gatewaytest.H2Request("GET", "/")...); err != nil {
			t.Fatal(err)
		}
		id += 2
	}
	waitUntil(t, "every allowed stream's handler to run", func() bool { return b.running.Load() == int64(limit) })
	over := id
	if err := c.WriteHeaders(over, true, gatewaytest.H2Request("GET", "/")...); err != nil {
		t.Fatal(err)
	}
	_ = c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := c.Framer.ReadFrame()
		if err != nil {
			t.Fatalf("no refusal of the stream over the limit: %v", err)
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == over {
			if rst.ErrCode != http2.ErrCodeRefusedStream && rst.ErrCode != http2.ErrCodeProtocol {
				t.Errorf("stream over the limit reset with %v, want REFUSED_STREAM or PROTOCOL_ERROR", rst.ErrCode)
			}
			break
		}
	}
	if got := b.started.Load(); got != int64(limit) {
		t.Errorf("%d handlers started, want %d", got, limit)
	}
}

// TestH2ContinuationFlood (CVE-2023-45288): a header block continued
// without end (CONTINUATION frames after CONTINUATION frames) is cut off
// once it passes the header list limit by a small margin: the server
// closes the connection instead of reading it all.
func TestH2ContinuationFlood(t *testing.T) {
	onlyH2(t)
	b := newBlocking(t)
	gw := serveH2(t, b)
	c := gatewaytest.DialH2(t, gw)
	limit := int(c.Settings[http2.SettingMaxHeaderListSize])
	if limit == 0 || limit > 1<<20 {
		t.Fatalf("SETTINGS_MAX_HEADER_LIST_SIZE %d: want a bound", limit)
	}
	// One literal header field after another, never ending the block.
	field := c.EncodeHeaders(hpack.HeaderField{Name: "x-flood", Value: strings.Repeat("a", 1000)})
	frag := []byte(strings.Repeat(string(field), (16<<10)/len(field)))
	const flood = 64 << 20
	sent := make(chan int, 1)
	go func() {
		n := 0
		err := c.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: 1,
			BlockFragment: c.EncodeHeaders(gatewaytest.H2Request("GET", "/")...), EndStream: true})
		for err == nil && n < flood {
			err = c.Framer.WriteContinuation(1, false, frag)
			n += len(frag)
		}
		sent <- n
	}()
	code, _ := closedWith(t, c)
	c.Conn.Close()
	n := <-sent
	if code != http2.ErrCodeProtocol && code != http2.ErrCodeNo {
		t.Errorf("connection ended with %v, want GOAWAY PROTOCOL_ERROR (or a close)", code)
	}
	// What the client could write before noticing includes the socket
	// buffers on both sides (a few MiB at most on loopback).
	if n >= flood {
		t.Errorf("the server read a %d MiB header block without ending the connection", n>>20)
	}
	if got := b.started.Load(); got != 0 {
		t.Errorf("%d handlers started for a header block that never ended", got)
	}
	t.Logf("header list limit %d bytes; the client wrote %d KiB of CONTINUATION before the close", limit, n>>10)
}

// TestH2HeaderListLimit: a request whose headers pass the advertised
// header list size is answered 431 (or its connection closed) without
// reaching the gateway or the upstream.
func TestH2HeaderListLimit(t *testing.T) {
	onlyH2(t)
	h := newHarness(t, baseConfig, nil)
	c := gatewaytest.DialH2(t, h.GW)
	limit := int(c.Settings[http2.SettingMaxHeaderListSize])
	fields := gatewaytest.H2Request("GET", "/my-repos")
	for i := 0; fieldsSize(fields) <= limit+1000; i++ {
		// Distinct values: HPACK cannot shrink them to table references.
		fields = append(fields, hpack.HeaderField{Name: "x-big", Value: strings.Repeat(string(rune('a'+i%26)), 900) + strings.Repeat("0", i)})
	}
	if err := c.WriteHeaders(1, true, fields...); err != nil {
		t.Fatal(err)
	}
	res, err := c.ReadResponse(1)
	if err == nil && res.Status != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("status %d, want 431", res.Status)
	}
	if got := h.Up.Take(); len(got) != 0 {
		t.Errorf("upstream received %d requests, want none", len(got))
	}
	ok(t, h, h.Get("/my-repos", nil)) // a metric for the scan
}

func fieldsSize(fs []hpack.HeaderField) int {
	n := 0
	for _, f := range fs {
		n += int(f.Size())
	}
	return n
}

// TestH2ContentLengthMismatch: a request whose content-length disagrees
// with its DATA frames is refused (the stream reset, RFC 9113 section
// 8.1.1) and nothing reaches the upstream: neither the shorter body nor
// the longer one.
func TestH2ContentLengthMismatch(t *testing.T) {
	onlyH2(t)
	h := newHarness(t, `
routes:
  - name: submit
    path: /submit
    methods: [POST]
    upstream: "{{UP}}/api/submit"
    validate: { body: { type: object } }
`, nil)
	for _, tt := range []struct {
		name     string
		declared string
		data     string
	}{
		{"fewer bytes than declared", "100", `{"a":1}`},
		{"more bytes than declared", "3", `{"a":1}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := gatewaytest.DialH2(t, h.GW)
			fields := append(gatewaytest.H2Request("POST", "/submit"),
				hpack.HeaderField{Name: "content-type", Value: "application/json"},
				hpack.HeaderField{Name: "content-length", Value: tt.declared})
			if err := c.WriteHeaders(1, false, fields...); err != nil {
				t.Fatal(err)
			}
			if err := c.WriteData(1, []byte(tt.data), true); err != nil {
				t.Fatal(err)
			}
			res, err := c.ReadResponse(1)
			if err == nil && res.Status/100 != 4 {
				t.Errorf("status %d, want the stream reset or a 4xx", res.Status)
			}
			if got := h.Up.Take(); len(got) != 0 {
				t.Errorf("upstream received %d requests, want none", len(got))
			}
		})
	}
	ok(t, h, h.Raw("POST", "/submit", http.Header{"Content-Type": {"application/json"}}, `{"a":1}`))
}

// TestH2ConnectionSpecificHeaders: HTTP/2 forbids the headers that
// describe an HTTP/1.1 connection (RFC 9113 section 8.2.2); a request
// carrying one is refused before the gateway sees it. TE is allowed with
// "trailers" only, and then passed on as over HTTP/1.1.
func TestH2ConnectionSpecificHeaders(t *testing.T) {
	onlyH2(t)
	h := newHarness(t, baseConfig, nil)
	for _, f := range []hpack.HeaderField{
		{Name: "connection", Value: "keep-alive"},
		{Name: "connection", Value: "authorization"},
		{Name: "keep-alive", Value: "timeout=5"},
		{Name: "proxy-connection", Value: "keep-alive"},
		{Name: "transfer-encoding", Value: "chunked"},
		{Name: "upgrade", Value: "h2c"},
		{Name: "te", Value: "gzip"},
	} {
		t.Run(f.Name+": "+f.Value, func(t *testing.T) {
			c := gatewaytest.DialH2(t, h.GW)
			if err := c.WriteHeaders(1, true, append(gatewaytest.H2Request("GET", "/my-repos"), f)...); err != nil {
				t.Fatal(err)
			}
			res, err := c.ReadResponse(1)
			if err == nil && res.Status != http.StatusBadRequest {
				t.Errorf("status %d, want the request refused", res.Status)
			}
			if got := h.Up.Take(); len(got) != 0 {
				t.Errorf("upstream received %d requests, want none", len(got))
			}
		})
	}
	t.Run("te: trailers is allowed", func(t *testing.T) {
		c := gatewaytest.DialH2(t, h.GW)
		fields := append(gatewaytest.H2Request("GET", "/my-repos"), hpack.HeaderField{Name: "te", Value: "trailers"})
		if err := c.WriteHeaders(1, true, fields...); err != nil {
			t.Fatal(err)
		}
		res, err := c.ReadResponse(1)
		if err != nil || res.Status != http.StatusOK {
			t.Fatalf("status %d, %v; want 200", res.Status, err)
		}
		only(t, h) // as over HTTP/1.1, "TE: trailers" is passed on (gRPC needs it)
	})
}

// TestH2ServedToGoAndCurl: Go's client and curl negotiate HTTP/2 with the
// gateway and get the route's answer; HSTS is sent over TLS when the
// config asks for it.
func TestH2ServedToGoAndCurl(t *testing.T) {
	onlyH2(t)
	h := newHarness(t, baseConfig, nil)
	res, err := h.GW.Client().Get(h.GW.URL + "/my-repos")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	h.Record(res, body)
	if res.ProtoMajor != 2 || res.StatusCode != http.StatusOK {
		t.Fatalf("Go's client: %s %d, want HTTP/2 200", res.Proto, res.StatusCode)
	}
	only(t, h)

	curl, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl is missing (scripts/deps.sh installs it)")
		}
		t.Skip("curl is not installed")
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, gatewaytest.CA(t).PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(curl, "--silent", "--show-error", "--http2", "--cacert", ca,
		"--output", "/dev/null", "--write-out", "%{http_version} %{http_code}", h.GW.URL+"/my-repos").CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v: %s", err, out)
	}
	if string(out) != "2 200" {
		t.Errorf("curl --http2: %q, want HTTP/2 200", out)
	}
	only(t, h)
}

// TestHSTSOverTLSOnly: tls.hsts sends Strict-Transport-Security on every
// HTTPS response; a plain HTTP response never carries it (RFC 6797
// section 7.2).
func TestHSTSOverTLSOnly(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	st := h.Gateway.Settings()
	st.TLS = &certs.Spec{HSTS: 365 * 24 * time.Hour}
	gw := gatewaytest.Serve(t, gateway.NewHandler(h.Gateway), st, slog.New(slog.DiscardHandler))
	res, err := gw.Client().Get(gw.URL + "/my-repos")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	h.Record(res, body)
	got := res.Header.Get("Strict-Transport-Security")
	switch {
	case gw.Engine.TLSServed() && got != "max-age=31536000":
		t.Errorf("Strict-Transport-Security %q over TLS, want max-age=31536000", got)
	case !gw.Engine.TLSServed() && got != "":
		t.Errorf("Strict-Transport-Security %q over plain HTTP", got)
	}
	only(t, h)
}
