// Package gatewaytest runs a real gateway in front of a recording upstream
// for end-to-end, security and browser tests, and keeps every byte the
// gateway emitted (responses, logs, metrics) so a test can search it for
// canary secrets.
package gatewaytest

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/keyward/keyward/internal/accesslog"
	"github.com/keyward/keyward/internal/certs"
	"github.com/keyward/keyward/internal/certs/certtest"
	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/metrics"
	"github.com/keyward/keyward/internal/server"
)

// Canary secrets the harness hands out through Getenv and files. They have
// characters that change under URL and JSON escaping, so every escaped
// form is searched for too.
const (
	GitHub = "ghp_CANARY_e2e_7f3a9c"    // env GITHUB_TOKEN
	Maps   = "AIza CANARY+maps/key=1&x" // env MAPS_KEY, and file maps_key
	Mailer = `mlr-CANARY-"quoted"-2b9e` // env MAILER_KEY
	// Visitor signs visitor tokens (env VISITOR_KEY): at least 32 bytes.
	Visitor = "vk-CANARY-signing-0123456789abcdef0123"
	// Turnstile is the Turnstile secret key (env TURNSTILE_SECRET).
	Turnstile = "0x4AAA-CANARY-turnstile-secret"
)

// Canaries are all the canary values.
var Canaries = []string{GitHub, Maps, Mailer, Visitor, Turnstile}

// Getenv resolves the canary environment variables.
func Getenv(k string) string {
	return map[string]string{"GITHUB_TOKEN": GitHub, "MAPS_KEY": Maps, "MAILER_KEY": Mailer,
		"VISITOR_KEY": Visitor, "TURNSTILE_SECRET": Turnstile}[k]
}

// Seen is what the upstream received in one request.
type Seen struct {
	Method, Path, RawQuery string
	Header                 http.Header
	Body                   string
}

// Upstream records every request, then answers with Handler (or, if nil,
// a small JSON array).
type Upstream struct {
	Server  *httptest.Server
	Handler http.HandlerFunc
	mu      sync.Mutex
	got     []Seen
}

// NewUpstream starts a recording upstream on 127.0.0.1.
func NewUpstream(t testing.TB, h http.HandlerFunc) *Upstream {
	u := &Upstream{Handler: h}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Server.Close)
	return u
}

func (u *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	u.mu.Lock()
	u.got = append(u.got, Seen{Method: r.Method, Path: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery, Header: r.Header.Clone(), Body: string(body)})
	u.mu.Unlock()
	if u.Handler != nil {
		u.Handler(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`[{"name":"keyward"}]`))
}

// Take returns the requests received since the last Take.
func (u *Upstream) Take() []Seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	g := u.got
	u.got = nil
	return g
}

// SyncBuffer is a buffer safe for concurrent writes.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Harness is a gateway in front of a recording upstream.
type Harness struct {
	T       testing.TB
	yaml    string // with {{UP}} and {{DOWN}} replaced
	dir     string
	Up      *Upstream
	GW      *Server
	Gateway *gateway.Gateway
	Logs    *SyncBuffer
	Metrics *metrics.Metrics
	Emitted *SyncBuffer // responses: status lines, headers, bodies
}

// New compiles yaml and serves it on 127.0.0.1. In yaml, {{UP}} becomes
// the upstream's base URL and {{DOWN}} a loopback address nothing listens
// on. The file maps_key beside the config holds Maps. opts may adjust the
// gateway's options (a shared limit store, a clock).
func New(t testing.TB, yaml string, upstream http.HandlerFunc, opts ...func(*gateway.Options)) *Harness {
	t.Helper()
	h := &Harness{T: t, Up: NewUpstream(t, upstream), Logs: &SyncBuffer{}, Metrics: metrics.New(), Emitted: &SyncBuffer{}}
	h.dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(h.dir, "maps_key"), []byte(Maps+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml = strings.ReplaceAll(yaml, "{{UP}}", h.Up.Server.URL)
	h.yaml = strings.ReplaceAll(yaml, "{{DOWN}}", ClosedAddr(t))
	h.Gateway, h.GW = h.Another(opts...)
	t.Logf("served by the %s engine", h.GW.Engine)
	return h
}

// Another compiles the harness's config again, with its own options, in
// front of the same upstream: a second instance, as behind a load
// balancer. Its log and metrics go to the harness's.
func (h *Harness) Another(opts ...func(*gateway.Options)) (*gateway.Gateway, *Server) {
	h.T.Helper()
	f, err := config.Parse(filepath.Join(h.dir, "keyward.yaml"), []byte(h.yaml))
	if err != nil {
		h.T.Fatalf("parse: %v", err)
	}
	// The access log is unbuffered here, so a test reads every line as soon
	// as its response arrived.
	o := gateway.Options{Logger: slog.New(slog.NewJSONHandler(h.Logs, nil)), AccessLog: accesslog.New(h.Logs, false),
		Metrics: h.Metrics, Getenv: Getenv}
	for _, opt := range opts {
		opt(&o)
	}
	g, _, err := gateway.Compile(f, o)
	if err != nil {
		h.T.Fatalf("compile: %v", err)
	}
	return g, Serve(h.T, gateway.NewHandler(g), g.Settings(), o.Logger)
}

// Server is a gateway served on 127.0.0.1 the way keyward serves its
// public listener (server.Front), with the harness's engine (see
// SetEngine).
type Server struct {
	URL    string // http://127.0.0.1:port, or https:// under a TLS engine
	Addr   string // 127.0.0.1:port
	Engine Engine
	// Front is the listener, for tests that change its settings.
	Front  *server.Front
	client *http.Client
	ca     *certtest.CA
}

// Serve serves h with st's limits until the test ends, with the
// harness's engine; the server's own log lines (handler panics) go to
// log.
func Serve(t testing.TB, h http.Handler, st gateway.Settings, log *slog.Logger) *Server {
	t.Helper()
	return ServeWith(t, CurrentEngine(), h, st, log, false)
}

// ServeUnguarded is Serve without the framing guard in front of the
// HTTP/1.1 server, for tests that show which defences depend on the
// guard. Under a TLS engine the guard stays (it cannot be taken out of
// the TLS listener).
func ServeUnguarded(t testing.TB, h http.Handler, st gateway.Settings, log *slog.Logger) *Server {
	t.Helper()
	return ServeWith(t, CurrentEngine(), h, st, log, true)
}

// ServeWith is Serve with engine e.
func ServeWith(t testing.TB, e Engine, h http.Handler, st gateway.Settings, log *slog.Logger, unguarded bool) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ca, leaf := pki(t)
	st.Engine = e.settingsEngine()
	opts := server.FrontOptions{Logger: log, Unguarded: unguarded}
	scheme := "http://"
	if e.TLSServed() {
		cert := leaf.TLS
		opts.TLS = certs.ServerConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil })
		scheme = "https://"
	}
	f := server.NewFront(ln, h, st, opts)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = f.Serve()
	}()
	t.Cleanup(func() {
		f.Close()
		<-done
	})
	return &Server{URL: scheme + ln.Addr().String(), Addr: ln.Addr().String(), Engine: e, Front: f,
		client: newClient(e, ca), ca: ca}
}

// ClosedAddr returns a loopback address nothing listens on.
func ClosedAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Response is a recorded response.
type Response struct {
	Status int
	Header http.Header
	Body   string
}

// Raw sends a request exactly as written (no client-side path cleaning)
// on a new connection and records the whole response: HTTP/1.1 bytes, or
// HTTP/2 frames under H2 (see Server.Exchange). Under H2 a request the
// server refuses at the protocol level (a stream reset) gets Status 0.
func (h *Harness) Raw(method, target string, header http.Header, body string) Response {
	h.T.Helper()
	return h.exchange(RawRequest{Method: method, Target: target, Header: header, Body: body})
}

func (h *Harness) exchange(r RawRequest) Response {
	h.T.Helper()
	res, err := h.GW.Exchange(r)
	if err != nil {
		if h.GW.Engine != H2 || res.Status != 0 || strings.HasPrefix(err.Error(), "reading frames") {
			h.T.Fatalf("%s %q: %v", r.Method, r.Target, err)
		}
		h.T.Logf("%s %q: refused by HTTP/2: %v", r.Method, r.Target, err)
	}
	h.record(res)
	return res
}

// RawBytes writes HTTP/1.1 request bytes as they are and records the
// response. Under H2 the request is sent as the HTTP/2 request it means
// (ParseRawRequest); framing cases have no HTTP/2 meaning and skip there.
func (h *Harness) RawBytes(method, request string) Response {
	h.T.Helper()
	if h.GW.Engine == H2 {
		r, err := ParseRawRequest(request)
		if err != nil {
			h.T.Fatalf("%q: %v", request, err)
		}
		return h.exchange(r)
	}
	res, err := h.GW.exchangeBytes(method, request)
	if err != nil {
		h.T.Fatal(err)
	}
	h.record(res)
	return res
}

// record adds a response to what the scan searches.
func (h *Harness) record(res Response) {
	var dump bytes.Buffer
	fmt.Fprintf(&dump, "%d\n", res.Status)
	_ = res.Header.Write(&dump)
	dump.WriteString(res.Body)
	_, _ = h.Emitted.Write(dump.Bytes())
}

// Record adds a response the test read itself to what the scan searches.
func (h *Harness) Record(res *http.Response, body []byte) {
	var dump bytes.Buffer
	fmt.Fprintf(&dump, "%s\n", res.Status)
	_ = res.Header.Write(&dump)
	dump.Write(body)
	_, _ = h.Emitted.Write(dump.Bytes())
}

// Get is Raw for a GET without a body.
func (h *Harness) Get(target string, header http.Header) Response {
	return h.Raw("GET", target, header, "")
}

// Forms are the spellings of a secret a scan looks for.
func Forms(s string) []string {
	return []string{s, url.QueryEscape(s), url.PathEscape(s), strconv.Quote(s), strings.ReplaceAll(s, `"`, `\"`)}
}

// Scan fails the test if any canary secret, in any form, appears in what
// the gateway emitted: responses, logs or metrics. The marker "CANARY" is
// searched for too, which catches a partial leak.
func (h *Harness) Scan() {
	h.T.Helper()
	rec := httptest.NewRecorder()
	h.Metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	sources := map[string]string{"responses": h.Emitted.String(), "logs": h.Logs.String(), "metrics": rec.Body.String()}
	for name, text := range sources {
		for _, s := range Canaries {
			for _, form := range append(Forms(s), "CANARY") {
				if strings.Contains(text, form) {
					h.T.Errorf("canary %q found in %s", form, name)
				}
			}
		}
	}
	if sources["metrics"] == "" {
		h.T.Error("metrics were empty: the scan would prove nothing")
	}
}
