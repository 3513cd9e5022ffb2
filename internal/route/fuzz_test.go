package route

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

// fuzzRoutes pairs public patterns with upstream templates, covering
// literals, params, rests, trailing slashes and backtracking.
var fuzzRoutes = []struct{ pattern, upstream string }{
	{"/", "https://h.example/"},
	{"/a", "https://h.example/a"},
	{"/a/", "https://h.example/a/"},
	{"/a/{x}", "https://h.example/v1/a/{x}"},
	{"/a/{x}/c", "https://h.example/v1/{x}/c"},
	{"/a/b/c", "https://h.example/v1/b/c"},
	{"/a/{x}/{rest...}", "https://h.example:8443/v1/{x}/r/{rest}"},
	{"/files/{path...}", "http://127.0.0.1:9000/base/{path}"},
	{"/repos/{owner}/{repo}/issues", "https://api.github.com/repos/{owner}/{repo}/issues"},
	{"/repos/keyward/{repo}", "https://api.github.com/repos/keyward/{repo}"},
	{"/x/{y}", "https://h.example/pre-{y}-post"},
	{"/{top}", "https://h.example/{top}"},
}

func FuzzCheckPathAndMatch(f *testing.F) {
	for _, s := range []string{
		"/", "/a", "/a/", "/a/b", "/a/b/c", "/a/b/d/e", "/files/", "/files/a/b/",
		"/repos/keyward/keyward/issues", "/repos/keyward/k",
		"/a/%2e%2e", "/a/%252e%252e", "/a/%25252e", "/a/.%2e/x", "/a/%2F", "/a%5cb",
		"/files/a/../b", "/files//etc", "/a/%00", "/a/%c0%ae%c0%ae", "/x/%2525252e",
		"/files/%zz", "/a\\b", "/a/?x=1", "/a/#f", "/a/%3F%23",
	} {
		f.Add(s)
	}
	r := &Router[int]{}
	ups := make([]*Upstream, len(fuzzRoutes))
	for i, rt := range fuzzRoutes {
		p := mustPattern(f, rt.pattern)
		if _, err := r.Add(p, i); err != nil {
			f.Fatal(err)
		}
		ups[i] = mustUpstream(f, rt.upstream, p.Names...)
	}
	f.Fuzz(func(t *testing.T, path string) {
		if CheckPath(path) != nil {
			return
		}
		var ps Params
		i, ok := r.Match(path, &ps)
		if !ok {
			return
		}
		pat := mustPattern(t, fuzzRoutes[i].pattern)
		if ps.Len() != len(pat.Names) {
			t.Fatalf("Match(%q): %d values for %d names", path, ps.Len(), len(pat.Names))
		}
		for j := range ps.Len() {
			name, v := ps.At(j)
			rest := pat.Rest && j == ps.Len()-1
			if !rest && (v == "" || strings.Contains(v, "/")) {
				t.Fatalf("Match(%q): {%s} = %q: a param must be one non-empty segment", path, name, v)
			}
			for k, seg := range strings.Split(v, "/") {
				if seg == "." || seg == ".." {
					t.Fatalf("Match(%q): {%s} = %q has a dot segment", path, name, v)
				}
				if seg == "" && rest && k != strings.Count(v, "/") {
					t.Fatalf("Match(%q): {%s} = %q has an empty inner segment", path, name, v)
				}
			}
		}
		// A path the gateway accepted always builds an upstream URL that
		// stays where the config points.
		up := ups[i]
		esc, dec, err := up.Path(&ps)
		if err != nil {
			t.Fatalf("Match(%q) -> %s: Path: %v", path, pat, err)
		}
		checkFuzzURL(t, up, esc, dec)
	})
}

func FuzzUpstreamPath(f *testing.F) {
	templates := []string{
		"https://api.example.com:8443/v1/items/{a}",
		"http://127.0.0.1:9000/{a}/x/{b}",
		"https://h.example/base/{a}/{b}",
		"https://h.example/{a}",
		"https://h.example/v1/pre-{a}-post/{b}",
		"http://[::1]:8080/p;q/{a}?static=1",
		"https://h.example/k/{secret.k}/{a}",
	}
	ups := make([]*Upstream, len(templates))
	for i, s := range templates {
		ups[i] = mustUpstream(f, s, "a", "b")
	}
	for _, v := range []string{
		"", "a", "..", ".", "a/b", "a/../b", "?x=1", "#f", "%2F", "%2e%2e", "@evil.com",
		"\\evil", "a\r\nHost: x", "//evil.com", "\xc0\xae\xc0\xae", "café", "a b", "x:y@z",
		"%25252e", "/", "a/", "http://evil.com/",
	} {
		f.Add(uint8(0), v, "b")
		f.Add(uint8(2), "a", v)
	}
	f.Fuzz(func(t *testing.T, which uint8, a, b string) {
		up := ups[int(which)%len(ups)]
		var ps Params
		setParams(&ps, []string{"a", "b"}, []string{a, b})
		esc, dec, err := up.Path(&ps)
		if err != nil {
			if !errors.Is(err, ErrEscape) {
				t.Fatalf("Path(%q, %q): error %v does not wrap ErrEscape", a, b, err)
			}
			// Values a router could have produced for {a} and a rest {b}
			// must never be refused.
			if routerValue(a, false) && routerValue(b, true) && !strings.Contains(up.String(), "pre-") {
				t.Fatalf("%s: Path(%q, %q) refused router-valid values: %v", up, a, b, err)
			}
			return
		}
		checkFuzzURL(t, up, esc, dec)
	})
}

// routerValue reports whether v is what Match could yield for a param (or
// a rest param) of a path that passed CheckPath, and that stays valid when
// it sits between two fixed segments of a template.
func routerValue(v string, rest bool) bool {
	if v == "" {
		return false
	}
	if !rest && strings.Contains(v, "/") {
		return false
	}
	for _, seg := range strings.Split(v, "/") {
		if seg == "" || CheckPath("/"+url.PathEscape(seg)) != nil {
			return false
		}
	}
	return true
}

// checkFuzzURL checks the invariants of an outbound URL built from a
// successful Path: configured scheme, host and port; the static prefix;
// no query or fragment beyond the template's own; and a string form that
// parses back to the same host and path.
func checkFuzzURL(t *testing.T, up *Upstream, esc, dec string) {
	t.Helper()
	if !strings.HasPrefix(esc, up.prefix) {
		t.Fatalf("%s: escaped path %q leaves prefix %q", up, esc, up.prefix)
	}
	if err := CheckPath(esc); err != nil {
		t.Fatalf("%s: escaped path %q fails CheckPath: %v", up, esc, err)
	}
	if d, err := url.PathUnescape(esc); err != nil || d != dec {
		t.Fatalf("%s: decoded path %q does not match escaped %q (%v)", up, dec, esc, err)
	}
	s := outboundURL(up, esc, dec, up.RawQuery)
	pathPart := strings.TrimPrefix(s, up.Scheme+"://"+up.Host)
	if len(pathPart) == len(s) {
		t.Fatalf("%s: URL %q does not start with the configured origin", up, s)
	}
	if up.RawQuery != "" {
		var ok bool
		if pathPart, ok = strings.CutSuffix(pathPart, "?"+up.RawQuery); !ok {
			t.Fatalf("%s: URL %q lost the template query", up, s)
		}
	}
	if strings.ContainsAny(pathPart, "?#") {
		t.Fatalf("%s: URL %q has '?' or '#' in its path", up, s)
	}
	if !strings.HasPrefix(pathPart, up.prefix) {
		t.Fatalf("%s: URL %q path leaves prefix %q", up, s, up.prefix)
	}
	u, err := url.Parse(s)
	if err != nil {
		t.Fatalf("%s: url.Parse(%q): %v", up, s, err)
	}
	if u.Scheme != up.Scheme || u.Host != up.Host || u.User != nil || u.Opaque != "" {
		t.Fatalf("%s: %q parses to scheme %q host %q user %v opaque %q", up, s, u.Scheme, u.Host, u.User, u.Opaque)
	}
	if u.Path != dec || u.EscapedPath() != pathPart {
		t.Fatalf("%s: %q parses to path %q (escaped %q), want %q (%q)", up, s, u.Path, u.EscapedPath(), dec, pathPart)
	}
	if u.RawQuery != up.RawQuery || u.Fragment != "" {
		t.Fatalf("%s: %q parses to query %q fragment %q", up, s, u.RawQuery, u.Fragment)
	}
}
