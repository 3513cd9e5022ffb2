package gateway_test

import (
	"bufio"
	"bytes"
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

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/metrics"
)

// Canary secrets: distinctive values with characters that change under
// URL escaping, so every escaped form is searched for too.
const (
	canaryGitHub = "ghp_CANARY_e2e_7f3a9c"
	canaryMaps   = "AIza CANARY+maps/key=1&x"
	canaryMailer = "mlr-CANARY-\"quoted\"-2b9e"
)

// canaries are every secret value the harness hands out.
var canaries = []string{canaryGitHub, canaryMaps, canaryMailer}

// seen is what the recording upstream received.
type seen struct {
	Method, Path, RawQuery string
	Header                 http.Header
	Body                   string
}

// upstream records every request and answers according to the path.
type upstream struct {
	mu       sync.Mutex
	got      []seen
	srv      *httptest.Server
	release  chan struct{} // unblocks /stream
	streamed chan struct{} // closed when /stream has sent its first event
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{release: make(chan struct{}), streamed: make(chan struct{})}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.got = append(u.got, seen{Method: r.Method, Path: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery, Header: r.Header.Clone(), Body: string(body)})
	u.mu.Unlock()
	switch {
	case strings.HasSuffix(r.URL.Path, "/redirect"):
		// An upstream that echoes the credential in a redirect.
		w.Header().Set("Location", "https://elsewhere.example/cb?access_token="+url.QueryEscape(r.URL.Query().Get("key")))
		w.WriteHeader(http.StatusFound)
	case strings.HasSuffix(r.URL.Path, "/cookies"):
		w.Header().Set("Set-Cookie", "session=upstream")
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Access-Control-Allow-Credentials", "true")
		w.Header().Set("X-Echo-Auth", r.Header.Get("Authorization"))
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	case strings.HasSuffix(r.URL.Path, "/slow"):
		<-r.Context().Done()
	case strings.HasSuffix(r.URL.Path, "/stream"):
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte("data: first\n\n"))
		w.(http.Flusher).Flush()
		close(u.streamed)
		<-u.release
		_, _ = w.Write([]byte("data: second\n\n"))
	default:
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`[{"name":"keyward"}]`))
	}
}

func (u *upstream) take() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	g := u.got
	u.got = nil
	return g
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// harness is a gateway in front of a recording upstream, keeping every
// byte the gateway emitted for the canary scan.
type harness struct {
	t       *testing.T
	up      *upstream
	gw      *httptest.Server
	logs    *syncBuffer
	metrics *metrics.Metrics
	emitted *syncBuffer // responses: status line, headers, bodies
}

const contractConfig = `
listen: "127.0.0.1:0"
secrets:
  github: { env: GITHUB_TOKEN }
  maps:   { file: maps_key }
cors:
  allow_origins: ["https://app.example.com", "https://*.example.com", "http://localhost:5173"]
  max_age: 10m
stages:
  dev:  { prefix: /dev,  vars: { github_api: "{{UP}}" } }
  prod: { prefix: /prod, vars: { github_api: "{{UP}}" } }
routes:
  - name: my-repos
    path: /my-repos
    methods: [GET]
    upstream: "{stage.github_api}/user/repos"
    query:   { allow: [page, per_page, sort] }
    headers:
      set: { Authorization: "Bearer {secret.github}", Accept: "application/vnd.github+json" }
  - name: repo-issues
    path: /repos/{owner}/{repo}/issues
    params: { owner: "[A-Za-z0-9-]{1,39}" }
    methods: [GET, POST]
    max_body: 64
    upstream: "{stage.github_api}/repos/{owner}/{repo}/issues"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
  - name: geocode
    path: /geocode
    methods: [GET]
    upstream: "{stage.github_api}/maps/api/geocode/json"
    query: { allow: [address], set: { key: "{secret.maps}" } }
  - name: files
    path: /files/{rest...}
    upstream: "{stage.github_api}/contents/{rest}"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
  - name: redirect
    path: /redirect
    upstream: "{stage.github_api}/redirect"
    query: { set: { key: "{secret.maps}" } }
  - name: cookies
    path: /cookies
    upstream: "{stage.github_api}/cookies"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
  - name: slow
    path: /slow
    timeout: 50ms
    upstream: "{stage.github_api}/slow"
  - name: stream
    path: /stream
    upstream: "{stage.github_api}/stream"
  - name: down
    path: /down
    upstream: "http://{{DOWN}}/maps?x=1"
    query: { set: { key: "{secret.maps}" } }
`

func newHarness(t *testing.T, yaml string) *harness {
	t.Helper()
	h := &harness{t: t, up: newUpstream(t), logs: &syncBuffer{}, metrics: metrics.New(), emitted: &syncBuffer{}}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "maps_key"), []byte(canaryMaps+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml = strings.ReplaceAll(yaml, "{{UP}}", h.up.srv.URL)
	yaml = strings.ReplaceAll(yaml, "{{DOWN}}", closedAddr(t))
	name := filepath.Join(dir, "keyward.yaml")
	f, err := config.Parse(name, []byte(yaml))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	g, _, err := gateway.Compile(f, gateway.Options{
		Logger:  slog.New(slog.NewJSONHandler(h.logs, nil)),
		Metrics: h.metrics,
		Getenv: func(k string) string {
			return map[string]string{"GITHUB_TOKEN": canaryGitHub, "MAILER_KEY": canaryMailer}[k]
		},
	})
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	h.gw = httptest.NewServer(gateway.NewHandler(g))
	t.Cleanup(h.gw.Close)
	return h
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

type response struct {
	Status int
	Header http.Header
	Body   string
}

// raw sends a request exactly as written (no client-side path cleaning)
// and records the whole response.
func (h *harness) raw(method, target string, header http.Header, body string) response {
	h.t.Helper()
	conn, err := net.Dial("tcp", h.gw.Listener.Addr().String())
	if err != nil {
		h.t.Fatal(err)
	}
	defer conn.Close()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n", method, target)
	for k, vs := range header {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	if body != "" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n" + body)
	if _, err := io.WriteString(conn, b.String()); err != nil {
		h.t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, target, err)
	}
	defer res.Body.Close()
	rb, _ := io.ReadAll(res.Body)
	var dump bytes.Buffer
	fmt.Fprintf(&dump, "%s\n", res.Status)
	_ = res.Header.Write(&dump)
	dump.Write(rb)
	_, _ = h.emitted.Write(dump.Bytes())
	return response{Status: res.StatusCode, Header: res.Header, Body: string(rb)}
}

func (h *harness) get(target string, header http.Header) response {
	return h.raw("GET", target, header, "")
}

// scan searches everything the gateway emitted for the canary secrets, in
// every form they could take.
func (h *harness) scan() {
	h.t.Helper()
	var m strings.Builder
	rec := httptest.NewRecorder()
	h.metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	m.WriteString(rec.Body.String())
	sources := map[string]string{"responses": h.emitted.String(), "logs": h.logs.String(), "metrics": m.String()}
	for name, text := range sources {
		if text == "" && name != "metrics" {
			continue
		}
		for _, s := range canaries {
			for _, form := range []string{s, url.QueryEscape(s), url.PathEscape(s), strconv.Quote(s), "CANARY"} {
				if strings.Contains(text, form) {
					h.t.Errorf("canary %q found in %s", form, name)
				}
			}
		}
	}
}

func TestEndToEnd(t *testing.T) {
	h := newHarness(t, contractConfig)
	t.Cleanup(h.scan)
	origin := http.Header{"Origin": {"https://app.example.com"}}

	t.Run("injected header arrives exactly once; client query filtered", func(t *testing.T) {
		res := h.get("/dev/my-repos?page=2&per_page=5&sort=updated&access_token=evil&x=1", origin)
		if res.Status != 200 {
			t.Fatalf("status %d: %s", res.Status, res.Body)
		}
		got := h.up.take()
		if len(got) != 1 {
			t.Fatalf("upstream got %d requests", len(got))
		}
		g := got[0]
		if diff := cmp.Diff(seen{Method: "GET", Path: "/user/repos", RawQuery: "page=2&per_page=5&sort=updated"},
			seen{Method: g.Method, Path: g.Path, RawQuery: g.RawQuery}); diff != "" {
			t.Errorf("upstream request (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"Bearer " + canaryGitHub}, g.Header["Authorization"]); diff != "" {
			t.Errorf("Authorization:\n%s", diff)
		}
		if diff := cmp.Diff([]string{"application/vnd.github+json"}, g.Header["Accept"]); diff != "" {
			t.Errorf("Accept:\n%s", diff)
		}
		if res.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" || res.Header.Get("Vary") != "Origin" {
			t.Errorf("CORS headers: %v", res.Header)
		}
	})

	t.Run("client cannot override or strip the injected credential", func(t *testing.T) {
		cases := []http.Header{
			{"Authorization": {"Bearer attacker"}},
			{"Authorization": {"Bearer attacker"}, "Connection": {"Authorization"}},
			{"Connection": {"Authorization, Accept"}},
			{"Accept": {"text/evil"}, "authorization": {"Basic YTpi"}},
			{"Cookie": {"a=b"}, "Proxy-Authorization": {"x"}, "X-Forwarded-For": {"1.2.3.4"}, "Forwarded": {"for=1.2.3.4"}, "X-Forwarded-Host": {"evil"}},
		}
		for i, hdr := range cases {
			res := h.get("/prod/my-repos", hdr)
			if res.Status != 200 {
				t.Fatalf("case %d: status %d", i, res.Status)
			}
			g := h.up.take()
			if len(g) != 1 {
				t.Fatalf("case %d: upstream got %d requests", i, len(g))
			}
			if diff := cmp.Diff([]string{"Bearer " + canaryGitHub}, g[0].Header["Authorization"]); diff != "" {
				t.Errorf("case %d Authorization:\n%s", i, diff)
			}
			if diff := cmp.Diff([]string{"application/vnd.github+json"}, g[0].Header["Accept"]); diff != "" {
				t.Errorf("case %d Accept:\n%s", i, diff)
			}
			for _, name := range []string{"Cookie", "Proxy-Authorization", "X-Forwarded-For", "Forwarded", "X-Forwarded-Host"} {
				if v, ok := g[0].Header[name]; ok {
					t.Errorf("case %d: %s reached the upstream: %q", i, name, v)
				}
			}
		}
	})

	t.Run("query secret arrives exactly once whatever the client sends", func(t *testing.T) {
		res := h.get("/dev/geocode?address=Main+St&key=evil&KEY=evil&Key=evil&key%5B%5D=evil&%6Bey=evil&key+=evil&key=evil2", nil)
		if res.Status != 200 {
			t.Fatalf("status %d: %s", res.Status, res.Body)
		}
		g := h.up.take()
		if len(g) != 1 {
			t.Fatalf("upstream got %d requests", len(g))
		}
		q, err := url.ParseQuery(g[0].RawQuery)
		if err != nil {
			t.Fatal(err)
		}
		want := url.Values{"address": {"Main St"}, "key": {canaryMaps}}
		if diff := cmp.Diff(want, q); diff != "" {
			t.Errorf("upstream query (-want +got):\n%s", diff)
		}
	})

	t.Run("method not allowed reaches nothing", func(t *testing.T) {
		for _, m := range []string{"POST", "PUT", "DELETE", "PATCH"} {
			res := h.raw(m, "/dev/my-repos", origin, "{}")
			if res.Status != 405 || res.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("%s: status %d Allow %q", m, res.Status, res.Header.Get("Allow"))
			}
			if !strings.Contains(res.Body, `"code":"method_not_allowed"`) {
				t.Errorf("%s: body %s", m, res.Body)
			}
			if res.Header.Get("Access-Control-Allow-Origin") == "" {
				t.Errorf("%s: 405 without CORS headers: a page could not read it", m)
			}
		}
		if g := h.up.take(); len(g) != 0 {
			t.Errorf("upstream got %d requests", len(g))
		}
	})

	t.Run("path tricks never reach another upstream path", func(t *testing.T) {
		for _, target := range []string{
			"/dev/repos/../admin/issues",
			"/dev/repos/%2e%2e/x/issues",
			"/dev/repos/%2E%2e/x/issues",
			"/dev/repos/.%2e/x/issues",
			"/dev/repos/a%2Fb/x/issues",
			"/dev/repos/a%2fb/x/issues",
			"/dev/repos/a/..%2F..%2Fadmin/issues",
			"/dev/repos/a/%252e%252e/issues",
			"/dev/repos/a\\..\\/issues",
			"/dev/repos/a/%5c..%5cadmin/issues",
			"/dev/repos//x/issues",
			"/dev/files/a/../../secret",
			"/dev/files/%2e%2e/secret",
			"/dev/files/a/%2F/b",
			"/dev/repos/bad_owner!/x/issues",
		} {
			res := h.get(target, nil)
			if res.Status != 400 && res.Status != 404 {
				t.Errorf("%s: status %d (%s)", target, res.Status, res.Body)
			}
		}
		got := h.up.take()
		for _, g := range got {
			if !strings.HasPrefix(g.Path, "/repos/a/") && !strings.HasPrefix(g.Path, "/contents/") || strings.Contains(g.Path, "..") {
				t.Errorf("upstream reached at %q", g.Path)
			}
			if g.RawQuery != "" {
				t.Errorf("query injected: %q", g.RawQuery)
			}
		}
	})

	t.Run("params are escaped into one upstream segment", func(t *testing.T) {
		res := h.get("/dev/repos/golang/go%3Fa=b%23c/issues", nil)
		if res.Status != 200 {
			t.Fatalf("status %d: %s", res.Status, res.Body)
		}
		g := h.up.take()
		if len(g) != 1 || g[0].Path != "/repos/golang/go%3Fa=b%23c/issues" || g[0].RawQuery != "" {
			t.Errorf("upstream got %+v", g)
		}
		res = h.get("/dev/files/docs/a%20b/c.md", nil)
		if res.Status != 200 {
			t.Fatalf("status %d", res.Status)
		}
		if g := h.up.take(); len(g) != 1 || g[0].Path != "/contents/docs/a%20b/c.md" {
			t.Errorf("upstream got %+v", g)
		}
	})

	t.Run("request body limit", func(t *testing.T) {
		res := h.raw("POST", "/dev/repos/golang/go/issues", http.Header{"Content-Type": {"application/json"}}, strings.Repeat("x", 65))
		if res.Status != 413 || !strings.Contains(res.Body, "body_too_large") {
			t.Errorf("status %d body %s", res.Status, res.Body)
		}
		res = h.raw("POST", "/dev/repos/golang/go/issues", http.Header{"Content-Type": {"application/json"}}, `{"title":"ok"}`)
		if res.Status != 200 {
			t.Errorf("status %d body %s", res.Status, res.Body)
		}
		g := h.up.take()
		if len(g) != 1 || g[0].Body != `{"title":"ok"}` {
			t.Errorf("upstream got %+v", g)
		}
	})

	t.Run("response filters: cookies, upstream CORS, echoed secrets", func(t *testing.T) {
		res := h.get("/dev/cookies", origin)
		if res.Header.Get("Set-Cookie") != "" {
			t.Errorf("Set-Cookie passed on")
		}
		if got := res.Header.Values("Access-Control-Allow-Origin"); !cmp.Equal(got, []string{"https://app.example.com"}) {
			t.Errorf("ACAO %q", got)
		}
		if res.Header.Get("Access-Control-Allow-Credentials") != "" {
			t.Errorf("upstream's Allow-Credentials passed on")
		}
		if got := res.Header.Get("X-Echo-Auth"); got != "Bearer [REDACTED]" {
			t.Errorf("echoed credential: %q", got)
		}
		res = h.get("/dev/redirect", nil)
		if res.Status != 302 || !strings.Contains(res.Header.Get("Location"), "access_token=[REDACTED]") {
			t.Errorf("redirect: %d %q", res.Status, res.Header.Get("Location"))
		}
		h.up.take()
	})

	t.Run("upstream faults", func(t *testing.T) {
		res := h.get("/dev/slow", origin)
		if res.Status != 504 || !strings.Contains(res.Body, "upstream_timeout") {
			t.Errorf("slow: %d %s", res.Status, res.Body)
		}
		if res.Header.Get("Access-Control-Allow-Origin") == "" {
			t.Errorf("504 without CORS headers")
		}
		res = h.get("/dev/down", nil)
		if res.Status != 502 || !strings.Contains(res.Body, "upstream_unavailable") {
			t.Errorf("down: %d %s", res.Status, res.Body)
		}
		if !strings.Contains(h.logs.String(), `"msg":"upstream error","route":"down","upstream":"http://`) {
			t.Errorf("the upstream error was not logged")
		}
		h.up.take()
	})

	t.Run("unknown path and preflight", func(t *testing.T) {
		res := h.get("/dev/nope", origin)
		if res.Status != 404 || !strings.Contains(res.Body, `"code":"not_found"`) || res.Header.Get("Access-Control-Allow-Origin") == "" {
			t.Errorf("404: %d %v %s", res.Status, res.Header, res.Body)
		}
		pre := http.Header{"Origin": {"https://a.b.example.com"}, "Access-Control-Request-Method": {"GET"}}
		res = h.raw("OPTIONS", "/dev/my-repos", pre, "")
		if res.Status != 204 || res.Header.Get("Access-Control-Allow-Origin") != "https://a.b.example.com" {
			t.Errorf("preflight: %d %v", res.Status, res.Header)
		}
		pre.Set("Origin", "https://example.com.evil.test")
		if res = h.raw("OPTIONS", "/dev/my-repos", pre, ""); res.Status != 403 || res.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("evil preflight: %d %v", res.Status, res.Header)
		}
		if res = h.get("/dev/my-repos", http.Header{"Origin": {"https://evil.test"}}); res.Status != 403 {
			t.Errorf("evil origin GET: %d", res.Status)
		}
		if g := h.up.take(); len(g) != 0 {
			t.Errorf("upstream got %d requests", len(g))
		}
	})

	t.Run("streaming responses are flushed as they arrive", func(t *testing.T) {
		res, err := http.Get(h.gw.URL + "/dev/stream")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		r := bufio.NewReader(res.Body)
		line, err := r.ReadString('\n')
		if err != nil || line != "data: first\n" {
			t.Fatalf("first event: %q %v", line, err)
		}
		// The upstream is still holding the stream open: the first event
		// arrived before the response ended.
		close(h.up.release)
		rest, _ := io.ReadAll(r)
		if !strings.Contains(string(rest), "data: second") {
			t.Errorf("rest of stream: %q", rest)
		}
		h.up.take()
	})

	t.Run("access log has one line per request, without query values", func(t *testing.T) {
		logs := h.logs.String()
		if !strings.Contains(logs, `"route":"my-repos"`) || !strings.Contains(logs, `"stage":"dev"`) {
			t.Errorf("log lacks route/stage")
		}
		if strings.Contains(logs, "Main+St") || strings.Contains(logs, "access_token=evil") {
			t.Errorf("query values logged")
		}
	})
}
