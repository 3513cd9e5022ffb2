package security_test

import (
	"bufio"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
)

// leakWriter is a log sink that remembers whether any line held a
// canary. A fuzz run makes millions of requests, so lines are checked as
// they are written instead of kept.
type leakWriter struct {
	mu     sync.Mutex
	leaked string
}

func (w *leakWriter) Write(p []byte) (int, error) {
	if hasCanary(string(p)) {
		w.mu.Lock()
		if w.leaked == "" {
			w.leaked = redact([]string{string(p)})[0]
		}
		w.mu.Unlock()
	}
	return len(p), nil
}

func (w *leakWriter) take() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.leaked
	w.leaked = ""
	return l
}

func hasCanary(text string) bool {
	if strings.Contains(text, "CANARY") {
		return true
	}
	for _, c := range gatewaytest.Canaries {
		for _, f := range gatewaytest.Forms(c) {
			if strings.Contains(text, f) {
				return true
			}
		}
	}
	return false
}

// fuzzAllowed are the query names baseConfig lets through, or sets.
var fuzzAllowed = map[string]bool{"page": true, "address": true, "key": true}

// FuzzGatewayRequest sends any request line, query and one header to the
// gateway of baseConfig. Whatever the input, if the upstream is reached:
// it received one request, for a path under /api/ with no dot segment or
// empty segment, carrying the configured Authorization exactly once, the
// set query parameter exactly once (and only where a route sets it), only
// allowed parameters, and none of the client's credentials. The response
// and the log never hold a canary.
func FuzzGatewayRequest(f *testing.F) {
	for _, s := range []struct{ method, target, name, value string }{
		{"GET", "/my-repos?page=2", "Accept", "application/json"},
		{"GET", "/geocode?address=x&key=evil&KEY=evil&key%5B%5D=evil", "Authorization", "Bearer attacker"},
		{"GET", "/repos/a/b/issues", "Connection", "Authorization"},
		{"POST", "/repos/a%2Fb/x/issues", "Cookie", "a=b"},
		{"GET", "/files/a/%2e%2e/%2e%2e/etc", "X-Forwarded-Host", "evil.test"},
		{"GET", "/files/..;/..;/admin", "Upgrade", "websocket"},
		{"GET", "/repos/%c0%ae%c0%ae/b/issues", "X-Original-URL", "/admin"},
		{"GET", "/geocode?address=a;key=evil", "Host", "evil.test"},
		{"GET", "/repos/a%3Fkey=1%23/b/issues", "Accept", "a?key=evil#"},
		{"GET", "/files/a/b/c/", "Te", "trailers"},
		{"OPTIONS", "/my-repos", "Origin", "https://app.example.com"},
		{"GET", "http://evil.test/my-repos", "X", "y"},
	} {
		f.Add(s.method, s.target, s.name, s.value)
	}

	up := gatewaytest.NewUpstream(f, nil)
	dir := f.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "maps_key"), []byte(gatewaytest.Maps+"\n"), 0o600); err != nil {
		f.Fatal(err)
	}
	yaml := strings.ReplaceAll(baseConfig, "{{UP}}", up.Server.URL)
	// Every route sets the credential, so the invariant is the same for all.
	yaml = strings.Replace(yaml, `query: { allow: [address, page], set: { key: "{secret.maps}" } }`,
		`query: { allow: [address, page], set: { key: "{secret.maps}" } }
    headers: { set: { Authorization: "Bearer {secret.github}" } }`, 1)
	cfg, err := config.Parse(filepath.Join(dir, "keyward.yaml"), []byte(yaml))
	if err != nil {
		f.Fatal(err)
	}
	logs := &leakWriter{}
	g, _, err := gateway.Compile(cfg, gateway.Options{Logger: slog.New(slog.NewJSONHandler(logs, nil)), Getenv: gatewaytest.Getenv})
	if err != nil {
		f.Fatal(err)
	}
	handler := gateway.NewHandler(g)

	f.Fuzz(func(t *testing.T, method, target, name, value string) {
		raw := method + " " + target + " HTTP/1.1\r\nHost: gw.test\r\n" + name + ": " + value + "\r\n\r\n"
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return // net/http refuses it before any handler
		}
		req = req.WithContext(context.Background())
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)

		var dump strings.Builder
		_ = rec.Result().Header.Write(&dump)
		dump.WriteString(rec.Body.String())
		if hasCanary(dump.String()) {
			t.Fatalf("%q: the response holds a canary", raw)
		}
		if l := logs.take(); l != "" {
			t.Fatalf("%q: a log line holds a canary: %s", raw, l)
		}
		got := up.Take()
		if len(got) == 0 {
			return
		}
		if len(got) != 1 {
			t.Fatalf("%q: upstream received %d requests", raw, len(got))
		}
		s := got[0]
		checkUpstreamPath(t, raw, s.Path)
		if a := s.Header["Authorization"]; len(a) != 1 || a[0] != bearer {
			t.Fatalf("%q: upstream Authorization %q", raw, redact(a))
		}
		for _, h := range []string{"Cookie", "Proxy-Authorization", "X-Forwarded-For", "X-Forwarded-Host", "Forwarded", "Upgrade", "X-Original-Url"} {
			if _, bad := s.Header[h]; bad {
				t.Fatalf("%q: %s reached the upstream", raw, h)
			}
		}
		q, err := url.ParseQuery(s.RawQuery)
		if err != nil {
			t.Fatalf("%q: upstream query %q does not parse: %v", raw, s.RawQuery, err)
		}
		for n := range q {
			if !fuzzAllowed[n] {
				t.Fatalf("%q: upstream got parameter %q", raw, n)
			}
		}
		wantKey := s.Path == "/api/geocode"
		if k := q["key"]; wantKey && (len(k) != 1 || k[0] != gatewaytest.Maps) || !wantKey && len(k) != 0 {
			t.Fatalf("%q: upstream key %q", raw, redact(k))
		}
	})
}

// checkUpstreamPath: under the routes' /api/ prefix, no empty segment
// but a trailing one, and no segment that is, or decodes to, a dot
// segment or holds a slash or backslash.
func checkUpstreamPath(t *testing.T, raw, p string) {
	t.Helper()
	if !strings.HasPrefix(p, "/api/") {
		t.Fatalf("%q: upstream path %q leaves the prefix", raw, p)
	}
	segs := strings.Split(p[1:], "/")
	for i, seg := range segs {
		if seg == "" && i != len(segs)-1 {
			t.Fatalf("%q: upstream path %q has an empty segment", raw, p)
		}
		d := seg
		for range 3 {
			if d == "." || d == ".." || strings.ContainsAny(d, `/\`) {
				t.Fatalf("%q: upstream path %q has segment %q", raw, p, seg)
			}
			u, err := url.PathUnescape(d)
			if err != nil || u == d {
				break
			}
			d = u
		}
	}
}
