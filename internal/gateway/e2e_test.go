package gateway_test

import (
	"bufio"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/gatewaytest"
)

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

// streamControl lets the streaming case prove an event arrived before the
// upstream finished the response.
type streamControl struct{ release chan struct{} }

// contractUpstream answers by path: redirects and headers that echo the
// credential, a hanging endpoint, an event stream; JSON otherwise.
func contractUpstream(sc *streamControl) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/redirect"):
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
			<-sc.release
			_, _ = w.Write([]byte("data: second\n\n"))
		default:
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`[{"name":"keyward"}]`))
		}
	}
}

func TestEndToEnd(t *testing.T) {
	sc := &streamControl{release: make(chan struct{})}
	h := gatewaytest.New(t, contractConfig, contractUpstream(sc))
	t.Cleanup(h.Scan)
	origin := http.Header{"Origin": {"https://app.example.com"}}

	t.Run("injected header arrives exactly once; client query filtered", func(t *testing.T) {
		res := h.Get("/dev/my-repos?page=2&per_page=5&sort=updated&access_token=evil&x=1", origin)
		if res.Status != 200 {
			t.Fatalf("status %d: %s", res.Status, res.Body)
		}
		got := h.Up.Take()
		if len(got) != 1 {
			t.Fatalf("upstream got %d requests", len(got))
		}
		g := got[0]
		if diff := cmp.Diff(gatewaytest.Seen{Method: "GET", Path: "/user/repos", RawQuery: "page=2&per_page=5&sort=updated"},
			gatewaytest.Seen{Method: g.Method, Path: g.Path, RawQuery: g.RawQuery}); diff != "" {
			t.Errorf("upstream request (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"Bearer " + gatewaytest.GitHub}, g.Header["Authorization"]); diff != "" {
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
			res := h.Get("/prod/my-repos", hdr)
			if res.Status != 200 {
				t.Fatalf("case %d: status %d", i, res.Status)
			}
			g := h.Up.Take()
			if len(g) != 1 {
				t.Fatalf("case %d: upstream got %d requests", i, len(g))
			}
			if diff := cmp.Diff([]string{"Bearer " + gatewaytest.GitHub}, g[0].Header["Authorization"]); diff != "" {
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
		res := h.Get("/dev/geocode?address=Main+St&key=evil&KEY=evil&Key=evil&key%5B%5D=evil&%6Bey=evil&key+=evil&key=evil2", nil)
		if res.Status != 200 {
			t.Fatalf("status %d: %s", res.Status, res.Body)
		}
		g := h.Up.Take()
		if len(g) != 1 {
			t.Fatalf("upstream got %d requests", len(g))
		}
		q, err := url.ParseQuery(g[0].RawQuery)
		if err != nil {
			t.Fatal(err)
		}
		want := url.Values{"address": {"Main St"}, "key": {gatewaytest.Maps}}
		if diff := cmp.Diff(want, q); diff != "" {
			t.Errorf("upstream query (-want +got):\n%s", diff)
		}
	})

	t.Run("method not allowed reaches nothing", func(t *testing.T) {
		for _, m := range []string{"POST", "PUT", "DELETE", "PATCH"} {
			res := h.Raw(m, "/dev/my-repos", origin, "{}")
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
		if g := h.Up.Take(); len(g) != 0 {
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
			res := h.Get(target, nil)
			if res.Status != 400 && res.Status != 404 {
				t.Errorf("%s: status %d (%s)", target, res.Status, res.Body)
			}
		}
		got := h.Up.Take()
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
		res := h.Get("/dev/repos/golang/go%3Fa=b%23c/issues", nil)
		if res.Status != 200 {
			t.Fatalf("status %d: %s", res.Status, res.Body)
		}
		g := h.Up.Take()
		if len(g) != 1 || g[0].Path != "/repos/golang/go%3Fa=b%23c/issues" || g[0].RawQuery != "" {
			t.Errorf("upstream got %+v", g)
		}
		res = h.Get("/dev/files/docs/a%20b/c.md", nil)
		if res.Status != 200 {
			t.Fatalf("status %d", res.Status)
		}
		if g := h.Up.Take(); len(g) != 1 || g[0].Path != "/contents/docs/a%20b/c.md" {
			t.Errorf("upstream got %+v", g)
		}
	})

	t.Run("request body limit", func(t *testing.T) {
		res := h.Raw("POST", "/dev/repos/golang/go/issues", http.Header{"Content-Type": {"application/json"}}, strings.Repeat("x", 65))
		if res.Status != 413 || !strings.Contains(res.Body, "body_too_large") {
			t.Errorf("status %d body %s", res.Status, res.Body)
		}
		res = h.Raw("POST", "/dev/repos/golang/go/issues", http.Header{"Content-Type": {"application/json"}}, `{"title":"ok"}`)
		if res.Status != 200 {
			t.Errorf("status %d body %s", res.Status, res.Body)
		}
		g := h.Up.Take()
		if len(g) != 1 || g[0].Body != `{"title":"ok"}` {
			t.Errorf("upstream got %+v", g)
		}
	})

	t.Run("response filters: cookies, upstream CORS, echoed secrets", func(t *testing.T) {
		res := h.Get("/dev/cookies", origin)
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
		res = h.Get("/dev/redirect", nil)
		if res.Status != 302 || !strings.Contains(res.Header.Get("Location"), "access_token=[REDACTED]") {
			t.Errorf("redirect: %d %q", res.Status, res.Header.Get("Location"))
		}
		h.Up.Take()
	})

	t.Run("upstream faults", func(t *testing.T) {
		res := h.Get("/dev/slow", origin)
		if res.Status != 504 || !strings.Contains(res.Body, "upstream_timeout") {
			t.Errorf("slow: %d %s", res.Status, res.Body)
		}
		if res.Header.Get("Access-Control-Allow-Origin") == "" {
			t.Errorf("504 without CORS headers")
		}
		res = h.Get("/dev/down", nil)
		if res.Status != 502 || !strings.Contains(res.Body, "upstream_unavailable") {
			t.Errorf("down: %d %s", res.Status, res.Body)
		}
		if logs := h.Logs.String(); !strings.Contains(logs, `"msg":"upstream error","id":"`) || !strings.Contains(logs, `"route":"down","upstream":"http://`) {
			t.Errorf("the upstream error was not logged")
		}
		h.Up.Take()
	})

	t.Run("unknown path and preflight", func(t *testing.T) {
		res := h.Get("/dev/nope", origin)
		if res.Status != 404 || !strings.Contains(res.Body, `"code":"not_found"`) || res.Header.Get("Access-Control-Allow-Origin") == "" {
			t.Errorf("404: %d %v %s", res.Status, res.Header, res.Body)
		}
		pre := http.Header{"Origin": {"https://a.b.example.com"}, "Access-Control-Request-Method": {"GET"}}
		res = h.Raw("OPTIONS", "/dev/my-repos", pre, "")
		if res.Status != 204 || res.Header.Get("Access-Control-Allow-Origin") != "https://a.b.example.com" {
			t.Errorf("preflight: %d %v", res.Status, res.Header)
		}
		pre.Set("Origin", "https://example.com.evil.test")
		if res = h.Raw("OPTIONS", "/dev/my-repos", pre, ""); res.Status != 403 || res.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("evil preflight: %d %v", res.Status, res.Header)
		}
		if res = h.Get("/dev/my-repos", http.Header{"Origin": {"https://evil.test"}}); res.Status != 403 {
			t.Errorf("evil origin GET: %d", res.Status)
		}
		if g := h.Up.Take(); len(g) != 0 {
			t.Errorf("upstream got %d requests", len(g))
		}
	})

	t.Run("streaming responses are flushed as they arrive", func(t *testing.T) {
		res, err := http.Get(h.GW.URL + "/dev/stream")
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
		close(sc.release)
		rest, _ := io.ReadAll(r)
		if !strings.Contains(string(rest), "data: second") {
			t.Errorf("rest of stream: %q", rest)
		}
		h.Up.Take()
	})

	t.Run("access log has one line per request, without query values", func(t *testing.T) {
		logs := h.Logs.String()
		if !strings.Contains(logs, `"route":"my-repos"`) || !strings.Contains(logs, `"stage":"dev"`) {
			t.Errorf("log lacks route/stage")
		}
		if strings.Contains(logs, "Main+St") || strings.Contains(logs, "access_token=evil") {
			t.Errorf("query values logged")
		}
	})
}
