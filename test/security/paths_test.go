package security_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/gatewaytest"
)

// TestPathsRefused: every spelling of a path that could climb above the
// route, split a segment, or mean something else to a later hop is
// refused with 400 before routing, and the upstream never hears of it.
func TestPathsRefused(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	tests := []struct {
		name, target, code string
	}{
		{"dot-dot segment climbs out of a param", "/repos/../admin/issues", "bad_path"},
		{"dot segment", "/repos/./x/issues", "bad_path"},
		{"percent-encoded dot-dot", "/repos/%2e%2e/x/issues", "bad_path"},
		{"percent-encoded dot-dot upper case", "/repos/%2E%2E/x/issues", "bad_path"},
		{"mixed literal and encoded dot-dot", "/repos/.%2e/x/issues", "bad_path"},
		{"mixed encoded and literal dot-dot", "/repos/%2e./x/issues", "bad_path"},
		{"mixed-case escapes", "/repos/%2E%2e/x/issues", "bad_path"},
		{"double-encoded dot-dot", "/repos/%252e%252e/x/issues", "bad_path"},
		{"triple-encoded dot-dot", "/repos/%25252e%25252e/x/issues", "bad_path"},
		{"dot-dot mixing encoding depths", "/repos/%2e%252e/x/issues", "bad_path"},
		{"encoded slash splits a param", "/repos/a%2Fb/x/issues", "bad_path"},
		{"encoded slash lower case", "/repos/a%2fb/x/issues", "bad_path"},
		{"double-encoded slash", "/repos/a%252fb/x/issues", "bad_path"},
		{"encoded slash traversal", "/repos/a/..%2F..%2Fadmin/issues", "bad_path"},
		{"literal backslash", `/repos/a\..\admin/x/issues`, "bad_path"},
		{"encoded backslash traversal", "/repos/a/%5c..%5cadmin/issues", "bad_path"},
		{"double-encoded backslash", "/repos/a%255cb/x/issues", "bad_path"},
		{"empty segment (double slash)", "/repos//x/issues", "bad_path"},
		{"leading double slash looks like a host", "//evil.test/my-repos", "bad_path"},
		{"encoded NUL", "/repos/a%00b/x/issues", "bad_path"},
		{"encoded CR LF", "/repos/a%0d%0ab/x/issues", "bad_path"},
		{"double-encoded NUL", "/repos/a%2500/x/issues", "bad_path"},
		{"encoded DEL", "/repos/a%7f/x/issues", "bad_path"},
		{"invalid percent escape (net/http refuses it)", "/repos/a%zz/x/issues", ""},
		{"IIS %u escape (net/http refuses it)", "/repos/%u002e%u002e/x/issues", ""},
		{"truncated escape (net/http refuses it)", "/repos/a%2/x/issues", ""},
		{"rest param climbs with dot-dot", "/files/a/../../admin", "bad_path"},
		{"rest param climbs with encoded dot-dot", "/files/a/%2e%2e/%2e%2e/admin", "bad_path"},
		{"rest param climbs with encoded slashes", "/files/..%2f..%2fadmin", "bad_path"},
		{"rest param carries a second URL", "/files/http://evil.test/x", "bad_path"},
		{"rest param carries an encoded URL", "/files/http:%2F%2Fevil.test", "bad_path"},
		{"trailing dot-dot", "/files/a/..", "bad_path"},
		{"very long path of dot-dot climbs", "/files/" + strings.Repeat("a/", 1000) + strings.Repeat("../", 2000) + "admin", "bad_path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			refused(t, h, h.Get(tt.target, nil), http.StatusBadRequest, tt.code)
		})
	}
}

// TestPathsMatchedAsWritten: what the policy does not refuse is matched
// exactly as written (case-sensitive, trailing slash significant) and
// never reinterpreted into another route.
func TestPathsMatchedAsWritten(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	for _, tt := range []struct{ name, target string }{
		{"upper case does not reach a lower-case route", "/MY-REPOS"},
		{"mixed case literal segment", "/Repos/a/b/issues"},
		{"trailing slash is another path", "/my-repos/"},
		{"trailing slash after params", "/repos/a/b/issues/"},
		{"semicolon parameter on a literal segment", "/my-repos;x=1"},
		{"a rest route needs its slash", "/files"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			refused(t, h, h.Get(tt.target, nil), http.StatusNotFound, "not_found")
		})
	}
}

// TestPathsParamsStayInOneSegment: a parameter value that survives the
// policy is escaped into exactly one upstream segment under the route's
// prefix. It can never add a query, a fragment, another host or a climb.
func TestPathsParamsStayInOneSegment(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	tests := []struct {
		name, target, wantPath string
	}{
		{"encoded ? in a param does not start a query", "/repos/a%3Fkey=evil/b/issues", "/api/repos/a%3Fkey=evil/b/issues"},
		{"encoded # in a param does not start a fragment", "/repos/a%23frag/b/issues", "/api/repos/a%23frag/b/issues"},
		{"@host in a param does not change the host", "/repos/@evil.test/b/issues", "/api/repos/@evil.test/b/issues"},
		{"userinfo-looking param", "/repos/user:pass@evil.test/b/issues", "/api/repos/user:pass@evil.test/b/issues"},
		{"Tomcat-style ..; stays an opaque segment", "/repos/..;/b/issues", "/api/repos/..%3B/b/issues"},
		{"encoded ..; stays an opaque segment", "/repos/%2e%2e%3b/b/issues", "/api/repos/..%3B/b/issues"},
		{"rest ..; segments stay opaque", "/files/..;/..;/admin", "/api/contents/..%3B/..%3B/admin"},
		{"overlong UTF-8 dots stay percent-encoded", "/repos/%c0%ae%c0%ae/b/issues", "/api/repos/%C0%AE%C0%AE/b/issues"},
		{"fullwidth dots stay percent-encoded", "/repos/%ef%bc%8e%ef%bc%8e/b/issues", "/api/repos/%EF%BC%8E%EF%BC%8E/b/issues"},
		{"quadruple-encoded dots are data, still encoded", "/repos/%2525252e%2525252e/b/issues", "/api/repos/%2525252e%2525252e/b/issues"},
		{"very long segment stays one segment", "/repos/" + strings.Repeat("a", 8000) + "/b/issues", "/api/repos/" + strings.Repeat("a", 8000) + "/b/issues"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ok(t, h, h.Get(tt.target, nil))
			if s.Path != tt.wantPath {
				t.Errorf("upstream path %q, want %q", s.Path, tt.wantPath)
			}
			if s.RawQuery != "" {
				t.Errorf("upstream query %q, want none", s.RawQuery)
			}
			authorizedOnce(t, s)
		})
	}
}

// TestPathsTooLong: a request line beyond the header limit is refused by
// the listener (431) before the gateway sees it. Over HTTP/2 the path is
// a header field: past the header list limit it gets 431 too, or its
// connection closed (see TestH2HeaderListLimit).
func TestPathsTooLong(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	l := serveLive(t, h)
	target := "/files/" + strings.Repeat("a/", 40<<10)
	res := l.send(t, "GET", "GET "+target+" HTTP/1.1\r\nHost: gw.test\r\n\r\n")
	if res.Status != http.StatusRequestHeaderFieldsTooLarge && !h2Reset(h, res.Response) {
		t.Errorf("status %d, want 431", res.Status)
	}
	if !res.Closed && l.gw.Engine != gatewaytest.H2 {
		t.Errorf("connection left open after an oversized request line")
	}
	if got := h.Up.Take(); len(got) != 0 {
		t.Errorf("upstream received %d requests", len(got))
	}
	// A metric must exist for the scan: one ordinary request.
	ok(t, h, h.Get("/my-repos", nil))
}
