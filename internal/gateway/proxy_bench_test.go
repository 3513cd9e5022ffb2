package gateway_test

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
)

// benchConfig is the benchmark job (bench/README.md, bench/keyward.yaml):
// GET /my-repos forwarded with Authorization and Accept injected, CORS for
// one origin; access logging on, as keyward ships.
const benchConfig = `
listen: "127.0.0.1:0"
secrets:
  bench: { env: KEYWARD_BENCH_SECRET }
cors:
  allow_origins: ["https://app.example"]
routes:
  - name: my-repos
    path: /my-repos
    methods: [GET]
    upstream: "{{UP}}/user/repos"
    headers:
      set:
        Authorization: "Bearer {secret.bench}"
        Accept: "application/vnd.github+json"
`

// benchUpstream answers like bench/upstream: 2065 bytes of JSON
// for the right credential, 401 otherwise.
func benchUpstream(b *testing.B) *httptest.Server {
	body := bytes.Repeat([]byte("x"), 2065)
	clen := strconv.Itoa(len(body))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer bench-secret" || r.Header.Get("Accept") != "application/vnd.github+json" {
			http.Error(w, "bad credentials", http.StatusUnauthorized)
			return
		}
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{clen}
		_, _ = w.Write(body)
	}))
	b.Cleanup(srv.Close)
	return srv
}

func benchGateway(b *testing.B, up string, tr http.RoundTripper) *gateway.Handler {
	f, err := config.Parse(filepath.Join(b.TempDir(), "keyward.yaml"), []byte(strings.ReplaceAll(benchConfig, "{{UP}}", up)))
	if err != nil {
		b.Fatal(err)
	}
	o := gateway.Options{
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
		Getenv: func(string) string { return "bench-secret" },
	}
	if tr != nil {
		o.WrapTransport = func(http.RoundTripper) http.RoundTripper { return tr }
	}
	g, _, err := gateway.Compile(f, o)
	if err != nil {
		b.Fatal(err)
	}
	return gateway.NewHandler(g)
}

// benchTransports are the upstream clients compared: net/http's Transport
// tuned as the gateway used it before, and the gateway's own client
// (internal/upstream under the outbound policy; nil: the gateway's default).
var benchTransports = []struct {
	name string
	new  func() http.RoundTripper
}{
	{"stdlib", func() http.RoundTripper {
		return &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 512, IdleConnTimeout: 90 * time.Second}
	}},
	{"upstream", func() http.RoundTripper { return nil }},
}

// discardWriter is the least a ResponseWriter can be, so the handler
// benchmark counts the gateway's allocations and not a recorder's.
type discardWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(s int)   { w.status = s }
func (w *discardWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.n += len(p)
	return len(p), nil
}

// BenchmarkProxy measures one proxied request of the benchmark job.
//
//   - handler: Handler.ServeHTTP called directly; the upstream is a real
//     loopback server. allocs/op = the gateway's request path plus the
//     upstream client plus the upstream's net/http server.
//   - server/http1, server/nethttp: a keep-alive client on a raw
//     connection to the gateway served as keyward serves it (the guard and
//     internal/http1), or by net/http's server as it was before: the whole
//     request path, both servers and the client's response parsing
//     included.
func BenchmarkProxy(b *testing.B) {
	up := benchUpstream(b)
	for _, tt := range benchTransports {
		b.Run(tt.name, func(b *testing.B) {
			tr := tt.new()
			if c, ok := tr.(interface{ CloseIdleConnections() }); ok {
				defer c.CloseIdleConnections()
			}
			h := benchGateway(b, up.URL, tr)
			b.Run("handler", func(b *testing.B) { benchHandler(b, h) })
			b.Run("server/http1", func(b *testing.B) {
				benchServer(b, gatewaytest.Serve(b, h, h.Current().Settings(), slog.New(slog.DiscardHandler)).Addr)
			})
			b.Run("server/nethttp", func(b *testing.B) {
				gw := httptest.NewServer(h)
				defer gw.Close()
				benchServer(b, gw.Listener.Addr().String())
			})
		})
	}
}

func benchHandler(b *testing.B, h http.Handler) {
	u := &url.URL{Path: "/my-repos"}
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		w.status, w.n = 0, 0
		r := &http.Request{
			Method: http.MethodGet, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header:     http.Header{"Origin": {"https://app.example"}},
			Body:       http.NoBody,
			Host:       "127.0.0.1:9105",
			RequestURI: "/my-repos",
			RemoteAddr: "127.0.0.1:40000",
		}
		h.ServeHTTP(w, r)
		if w.status != http.StatusOK || w.n != 2065 || w.h.Get("Access-Control-Allow-Origin") != "https://app.example" {
			b.Fatalf("status %d, %d bytes, headers %v", w.status, w.n, w.h)
		}
	}
}

func benchServer(b *testing.B, addr string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := []byte("GET /my-repos HTTP/1.1\r\nHost: 127.0.0.1:9105\r\nOrigin: https://app.example\r\n\r\n")
	br := bufio.NewReader(c)
	buf := make([]byte, 32<<10)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, resp.Body, buf)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || n != 2065 {
			b.Fatalf("status %d, %d bytes: %v", resp.StatusCode, n, err)
		}
	}
}
