package security_test

import (
	"net/http"
	"strings"
	"testing"
)

const corsConfig = baseConfig + `
  - name: creds
    path: /creds
    upstream: "{{UP}}/api/creds"
    cors:
      allow_origins: ["*", "https://app.example.com"]
      allow_credentials: true
`

// TestCORSOriginsRefused: an origin that is not allowed, however close to
// an allowed one, gets 403 without an Access-Control-Allow-Origin and the
// upstream is never called (the call, and its cost, would happen even
// though a browser hid the answer).
func TestCORSOriginsRefused(t *testing.T) {
	h := newHarness(t, corsConfig, nil)
	for _, tt := range []struct{ name, path, origin string }{
		{"null origin (sandboxed frame, file://)", "/my-repos", "null"},
		{"suffix confusion: allowed host as a prefix of another", "/my-repos", "https://example.com.evil.test"},
		{"prefix confusion: no dot before the wildcard's domain", "/my-repos", "https://evilexample.com"},
		{"wildcard does not match the apex", "/my-repos", "https://example.com"},
		{"scheme mismatch", "/my-repos", "http://app.example.com"},
		{"scheme mismatch on a wildcard", "/my-repos", "http://a.example.com"},
		{"port mismatch", "/my-repos", "https://app.example.com:8443"},
		{"userinfo trick", "/my-repos", "https://a.example.com@evil.test"},
		{"path smuggled after the wildcard's label", "/my-repos", "https://evil.test/.example.com"},
		{"trailing dot", "/my-repos", "https://app.example.com."},
		{"encoded dot in the host", "/my-repos", "https://evil%2eexample.com"},
		{"credentials with * do not allow any origin", "/creds", "https://evil.test"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := h.Get(tt.path, http.Header{"Origin": {tt.origin}})
			refused(t, h, res, http.StatusForbidden, "cors_origin_not_allowed")
			if v := res.Header.Get("Access-Control-Allow-Origin"); v != "" {
				t.Errorf("Access-Control-Allow-Origin %q on a refusal", v)
			}
			if res.Header.Get("Access-Control-Allow-Credentials") != "" {
				t.Errorf("Access-Control-Allow-Credentials on a refusal")
			}
		})
	}
}

// TestCORSOriginsAllowed: allowed origins get exactly their own origin
// back (never "*" with credentials), and reach the upstream once.
func TestCORSOriginsAllowed(t *testing.T) {
	h := newHarness(t, corsConfig, nil)
	for _, tt := range []struct{ name, path, origin, acao string }{
		{"exact origin", "/my-repos", "https://app.example.com", "https://app.example.com"},
		{"one-label subdomain of the wildcard", "/my-repos", "https://a.example.com", "https://a.example.com"},
		{"upper-case origin matches, answered lower-case", "/my-repos", "HTTPS://APP.EXAMPLE.COM", "https://app.example.com"},
		{"credentials: the exact origin, never *", "/creds", "https://app.example.com", "https://app.example.com"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := h.Get(tt.path, http.Header{"Origin": {tt.origin}})
			ok(t, h, res)
			if got := res.Header.Values("Access-Control-Allow-Origin"); len(got) != 1 || got[0] != tt.acao {
				t.Errorf("Access-Control-Allow-Origin %q, want %q", got, tt.acao)
			}
			if !strings.Contains(res.Header.Get("Vary"), "Origin") {
				t.Errorf("Vary %q lacks Origin: a cache could serve one origin's answer to another", res.Header.Get("Vary"))
			}
		})
	}
}

// TestCORSPreflight: preflights are answered by the gateway and never
// reach the upstream; a disallowed method or header is refused.
func TestCORSPreflight(t *testing.T) {
	h := newHarness(t, corsConfig, nil)
	pre := func(origin, method, headers string) http.Header {
		hd := http.Header{"Origin": {origin}, "Access-Control-Request-Method": {method}}
		if headers != "" {
			hd["Access-Control-Request-Headers"] = []string{headers}
		}
		return hd
	}
	for _, tt := range []struct {
		name, path string
		header     http.Header
		code       string
	}{
		{"preflight for a method the route does not allow", "/my-repos", pre("https://app.example.com", "DELETE", ""), "cors_method_not_allowed"},
		{"preflight for a write method on a read route", "/my-repos", pre("https://app.example.com", "POST", ""), "cors_method_not_allowed"},
		{"preflight asking to send Authorization", "/my-repos", pre("https://app.example.com", "GET", "authorization"), "cors_header_not_allowed"},
		{"preflight asking for an unlisted header", "/my-repos", pre("https://app.example.com", "GET", "content-type, x-evil"), "cors_header_not_allowed"},
		{"preflight from a disallowed origin", "/my-repos", pre("https://evil.test", "GET", ""), "cors_origin_not_allowed"},
		{"preflight from null", "/my-repos", pre("null", "GET", ""), "cors_origin_not_allowed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := h.Raw("OPTIONS", tt.path, tt.header, "")
			refused(t, h, res, http.StatusForbidden, tt.code)
			if res.Header.Get("Access-Control-Allow-Origin") != "" || res.Header.Get("Access-Control-Allow-Methods") != "" {
				t.Errorf("a refused preflight carried allow headers: %v", res.Header)
			}
		})
	}
	t.Run("an allowed preflight is answered without the upstream", func(t *testing.T) {
		res := h.Raw("OPTIONS", "/repos/a/b/issues", pre("https://a.example.com", "POST", "content-type"), "")
		if res.Status != http.StatusNoContent || res.Header.Get("Access-Control-Allow-Origin") != "https://a.example.com" {
			t.Errorf("status %d headers %v", res.Status, res.Header)
		}
		if got := h.Up.Take(); len(got) != 0 {
			t.Errorf("upstream received %s", targets(got))
		}
	})
}
