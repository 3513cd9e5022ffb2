package route

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/placeholder"
	"github.com/keyward/keyward/internal/secret"
)

// resolver allows the given path parameters, the secret "k" and the stage
// variables in vars.
func resolver(vars map[string]string, names ...string) placeholder.Resolver {
	return placeholder.Resolver{
		Stage: func(n string) (string, bool) { v, ok := vars[n]; return v, ok },
		Secret: func(n string) (secret.Value, bool) {
			if n == "k" {
				return secret.New("k", "s3cr3t"), true
			}
			return secret.Value{}, false
		},
		Param: func(n string) bool {
			for _, x := range names {
				if x == n {
					return true
				}
			}
			return false
		},
	}
}

func mustUpstream(t testing.TB, tpl string, names ...string) *Upstream {
	t.Helper()
	up, err := CompileUpstream(tpl, resolver(nil, names...))
	if err != nil {
		t.Fatalf("CompileUpstream(%q): %v", tpl, err)
	}
	return up
}

// outboundURL builds the upstream URL exactly as gateway's rewrite does and
// returns its string form.
func outboundURL(up *Upstream, escaped, decoded, query string) string {
	u := &url.URL{Scheme: up.Scheme, Host: up.Host, Path: decoded, RawPath: escaped, RawQuery: query}
	return u.String()
}

// setParams fills ps as a match of names would.
func setParams(ps *Params, names []string, values []string) {
	ps.names = names
	ps.n = copy(ps.values[:], values)
}

func TestCompileUpstream(t *testing.T) {
	vars := map[string]string{
		"api":    "https://api.github.com",
		"host":   "api.github.com",
		"path":   "/v2",
		"braces": "https://{x}.example.com",
	}
	tests := []struct {
		name       string
		tpl        string
		wantScheme string
		wantHost   string
		wantQuery  string
		wantString string // String(), when not the template as written
		wantErr    string
	}{
		{name: "plain", tpl: "https://api.github.com/user/repos", wantScheme: "https", wantHost: "api.github.com"},
		{name: "port", tpl: "http://127.0.0.1:9000/x", wantScheme: "http", wantHost: "127.0.0.1:9000"},
		{name: "no path", tpl: "https://h.example", wantScheme: "https", wantHost: "h.example"},
		{name: "param in path", tpl: "https://h.example/repos/{owner}", wantScheme: "https", wantHost: "h.example"},
		{name: "secret in path", tpl: "https://h.example/k/{secret.k}", wantScheme: "https", wantHost: "h.example"},
		{name: "static query kept", tpl: "https://h.example/x?a=1&b=2", wantScheme: "https", wantHost: "h.example", wantQuery: "a=1&b=2"},
		{name: "stage supplies scheme and host", tpl: "{stage.api}/user", wantScheme: "https", wantHost: "api.github.com",
			wantString: "https://api.github.com/user"},
		{name: "stage supplies host", tpl: "https://{stage.host}/user", wantScheme: "https", wantHost: "api.github.com",
			wantString: "https://api.github.com/user"},
		{name: "stage supplies path", tpl: "https://h.example{stage.path}/{owner}", wantScheme: "https", wantHost: "h.example",
			wantString: "https://h.example/v2/{owner}"},
		{name: "ipv6 host", tpl: "http://[::1]:8080/x", wantScheme: "http", wantHost: "[::1]:8080"},

		{name: "param in host", tpl: "https://{owner}.example.com/x", wantErr: "scheme and host are fixed"},
		{name: "param as host", tpl: "https://{owner}/x", wantErr: "scheme and host are fixed"},
		{name: "param in port", tpl: "https://h.example:{owner}/x", wantErr: "scheme and host are fixed"},
		{name: "param after host", tpl: "https://h.example{owner}/x", wantErr: "scheme and host are fixed"},
		{name: "param as scheme", tpl: "{owner}://h.example/x", wantErr: "scheme and host are fixed"},
		{name: "secret in userinfo", tpl: "https://{secret.k}@h.example/x", wantErr: "scheme and host are fixed"},
		{name: "secret in host", tpl: "https://{secret.k}/x", wantErr: "scheme and host are fixed"},
		{name: "stage var with braces", tpl: "{stage.braces}/x", wantErr: "braces"},
		{name: "param in query", tpl: "https://h.example/x?a={owner}", wantErr: "query.set"},
		{name: "secret in query", tpl: "https://h.example/x?key={secret.k}", wantErr: "query.set"},
		{name: "fragment", tpl: "https://h.example/x#frag", wantErr: "fragment"},
		{name: "credentials", tpl: "https://user:pw@h.example/x", wantErr: "credentials"},
		{name: "ftp scheme", tpl: "ftp://h.example/x", wantErr: "scheme must be http or https"},
		{name: "javascript scheme", tpl: "javascript://h.example/x", wantErr: "scheme must be http or https"},
		{name: "relative", tpl: "/x/y", wantErr: "absolute"},
		{name: "scheme relative", tpl: "//h.example/x", wantErr: "absolute"},
		{name: "no host", tpl: "https:///x", wantErr: "no host"},
		{name: "port only", tpl: "https://:80/x", wantErr: "no host"},
		{name: "dot dot in static path", tpl: "https://h.example/a/../b", wantErr: "dot segment"},
		{name: "dot dot before param", tpl: "https://h.example/a/../{owner}", wantErr: "dot segment"},
		{name: "double slash in prefix", tpl: "https://h.example//a/{owner}", wantErr: "empty path segment"},
		{name: "bad escape in static path", tpl: "https://h.example/%zz", wantErr: "escape"},
		{name: "unknown param", tpl: "https://h.example/{nope}", wantErr: "unknown path parameter"},
		{name: "unknown secret", tpl: "https://h.example/{secret.nope}", wantErr: "unknown secret"},
		{name: "unknown stage var", tpl: "{stage.nope}/x", wantErr: "unknown stage variable"},
		{name: "unclosed brace", tpl: "https://h.example/{owner", wantErr: "unclosed"},
		{name: "stray close brace", tpl: "https://h.example/owner}", wantErr: "unmatched"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, err := CompileUpstream(tt.tpl, resolver(vars, "owner"))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("CompileUpstream(%q) error = %v, want one containing %q", tt.tpl, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("CompileUpstream(%q): %v", tt.tpl, err)
			}
			got := []string{up.Scheme, up.Host, up.RawQuery}
			if diff := cmp.Diff([]string{tt.wantScheme, tt.wantHost, tt.wantQuery}, got); diff != "" {
				t.Errorf("scheme, host, query (-want +got):\n%s", diff)
			}
			wantString := tt.tpl
			if tt.wantString != "" {
				wantString = tt.wantString
			}
			// Stage variables show resolved; secrets and params by name.
			if up.String() != wantString {
				t.Errorf("String() = %q, want %q", up.String(), wantString)
			}
		})
	}
}

func TestUpstreamStaticPath(t *testing.T) {
	tests := []struct {
		name, tpl, wantURL string
	}{
		{"root", "https://h.example", "https://h.example/"},
		{"path", "https://h.example/user/repos", "https://h.example/user/repos"},
		{"query", "https://h.example/x?a=1", "https://h.example/x?a=1"},
		{"escaped path", "https://h.example/a%20b", "https://h.example/a%20b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := mustUpstream(t, tt.tpl)
			esc, dec, err := up.Path(&Params{})
			if err != nil {
				t.Fatal(err)
			}
			if got := outboundURL(up, esc, dec, up.RawQuery); got != tt.wantURL {
				t.Errorf("URL = %q, want %q", got, tt.wantURL)
			}
		})
	}
}

// TestUpstreamParamValues feeds hostile values straight into Path, as if
// CheckPath and the router had been bypassed: the second wall must hold.
func TestUpstreamParamValues(t *testing.T) {
	const tpl = "https://api.example.com:8443/v1/items/{id}"
	up := mustUpstream(t, tpl, "id")
	tests := []struct {
		name    string
		value   string
		wantURL string // "" means Path must refuse with ErrEscape
	}{
		{name: "plain", value: "42", wantURL: "https://api.example.com:8443/v1/items/42"},
		{name: "empty", value: "", wantURL: "https://api.example.com:8443/v1/items/"},
		{name: "dot dot", value: ".."},
		{name: "dot", value: "."},
		{name: "slash traversal", value: "../../admin"},
		{name: "dot dot after slash", value: "a/.."},
		{name: "leading double slash", value: "//evil.com"},
		{name: "query", value: "?x=1", wantURL: "https://api.example.com:8443/v1/items/%3Fx=1"},
		{name: "fragment", value: "#f", wantURL: "https://api.example.com:8443/v1/items/%23f"},
		{name: "query and fragment", value: "a?b#c", wantURL: "https://api.example.com:8443/v1/items/a%3Fb%23c"},
		{name: "literal encoded slash", value: "%2F"},
		{name: "literal encoded dots", value: "%2e%2e"},
		{name: "at sign host confusion", value: "@evil.com", wantURL: "https://api.example.com:8443/v1/items/@evil.com"},
		{name: "userinfo confusion", value: "x:y@evil.com", wantURL: "https://api.example.com:8443/v1/items/x:y@evil.com"},
		{name: "backslash", value: "\\evil"},
		{name: "backslash host", value: "\\\\evil.com"},
		{name: "crlf header injection", value: "a\r\nHost: evil.com"},
		{name: "newline", value: "a\nb"},
		{name: "nul", value: "a\x00b"},
		{name: "space", value: "a b", wantURL: "https://api.example.com:8443/v1/items/a%20b"},
		{name: "percent", value: "100%", wantURL: "https://api.example.com:8443/v1/items/100%25"},
		{name: "lone percent", value: "%", wantURL: "https://api.example.com:8443/v1/items/%25"},
		{name: "semicolon", value: "a;b", wantURL: "https://api.example.com:8443/v1/items/a%3Bb"},
		{name: "overlong utf-8 dots", value: "\xc0\xae\xc0\xae", wantURL: "https://api.example.com:8443/v1/items/%C0%AE%C0%AE"},
		{name: "unicode", value: "café", wantURL: "https://api.example.com:8443/v1/items/caf%C3%A9"},
		// Upstream.Path does not know whether {id} was a single segment or a
		// rest value, so a "/" in a value adds segments; they stay under
		// the prefix. The router never yields a "/" in a {param}.
		{name: "slash stays under prefix", value: "a/b", wantURL: "https://api.example.com:8443/v1/items/a/b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ps Params
			setParams(&ps, []string{"id"}, []string{tt.value})
			esc, dec, err := up.Path(&ps)
			if tt.wantURL == "" {
				if !errors.Is(err, ErrEscape) {
					t.Fatalf("Path(%q) = %q, %v; want ErrEscape", tt.value, esc, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Path(%q): %v", tt.value, err)
			}
			got := outboundURL(up, esc, dec, "")
			if got != tt.wantURL {
				t.Errorf("URL = %q, want %q", got, tt.wantURL)
			}
			checkOutbound(t, got, "https", "api.example.com:8443", "/v1/items/")
		})
	}
}

// checkOutbound asserts that s keeps scheme, host and port, stays under
// prefix and carries no query or fragment.
func checkOutbound(t testing.TB, s, scheme, host, prefix string) {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatalf("url.Parse(%q): %v", s, err)
	}
	if u.Scheme != scheme || u.Host != host || u.User != nil {
		t.Errorf("%q: scheme %q host %q user %v; want %q %q", s, u.Scheme, u.Host, u.User, scheme, host)
	}
	if !strings.HasPrefix(u.EscapedPath(), prefix) {
		t.Errorf("%q: path %q leaves prefix %q", s, u.EscapedPath(), prefix)
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.ContainsAny(s, "?#") {
		t.Errorf("%q: query %q or fragment %q added", s, u.RawQuery, u.Fragment)
	}
}

// TestUpstreamFromRequest runs real request paths through CheckPath, the
// router and Path, as the gateway does.
func TestUpstreamFromRequest(t *testing.T) {
	tests := []struct {
		name     string
		pattern  string
		tpl      string
		req      string
		wantURL  string // "" means refused somewhere along the way
		wantPass string // the step that refused: "check", "path"
	}{
		{name: "params", pattern: "/repos/{owner}/{repo}/issues", tpl: "https://api.github.com/repos/{owner}/{repo}/issues",
			req: "/repos/keyward/keyward/issues", wantURL: "https://api.github.com/repos/keyward/keyward/issues"},
		{name: "encoded query in param", pattern: "/i/{id}", tpl: "https://h.example/v1/{id}",
			req: "/i/a%3Fx=1", wantURL: "https://h.example/v1/a%3Fx=1"},
		{name: "encoded fragment in param", pattern: "/i/{id}", tpl: "https://h.example/v1/{id}",
			req: "/i/a%23f", wantURL: "https://h.example/v1/a%23f"},
		{name: "encoded at sign", pattern: "/i/{id}", tpl: "https://h.example/v1/{id}",
			req: "/i/%40evil.com", wantURL: "https://h.example/v1/@evil.com"},
		{name: "encoded slash refused", pattern: "/i/{id}", tpl: "https://h.example/v1/{id}", req: "/i/a%2Fb", wantPass: "check"},
		{name: "encoded dots refused", pattern: "/i/{id}", tpl: "https://h.example/v1/{id}", req: "/i/%2e%2e", wantPass: "check"},
		{name: "double-encoded dots refused", pattern: "/i/{id}", tpl: "https://h.example/v1/{id}", req: "/i/%252e%252e", wantPass: "check"},
		{name: "quadruple-encoded dots kept encoded", pattern: "/i/{id}", tpl: "https://h.example/v1/{id}",
			req: "/i/%2525252e", wantURL: "https://h.example/v1/%2525252e"},
		{name: "escaped lone percent", pattern: "/i/{id}", tpl: "https://h.example/v1/{id}",
			req: "/i/%25", wantURL: "https://h.example/v1/%25"},
		{name: "rest stays under prefix", pattern: "/f/{p...}", tpl: "https://h.example/base/{p}",
			req: "/f/a/b/c.txt", wantURL: "https://h.example/base/a/b/c.txt"},
		{name: "rest empty", pattern: "/f/{p...}", tpl: "https://h.example/base/{p}",
			req: "/f/", wantURL: "https://h.example/base/"},
		{name: "rest trailing slash", pattern: "/f/{p...}", tpl: "https://h.example/base/{p}",
			req: "/f/a/", wantURL: "https://h.example/base/a/"},
		{name: "rest encoded segments", pattern: "/f/{p...}", tpl: "https://h.example/base/{p}",
			req: "/f/a%20b/%3F", wantURL: "https://h.example/base/a%20b/%3F"},
		{name: "rest traversal refused", pattern: "/f/{p...}", tpl: "https://h.example/base/{p}", req: "/f/a/../../x", wantPass: "check"},
		{name: "rest encoded traversal refused", pattern: "/f/{p...}", tpl: "https://h.example/base/{p}", req: "/f/%2e%2e/x", wantPass: "check"},
		{name: "rest leading double slash refused", pattern: "/f/{p...}", tpl: "https://h.example/{p}", req: "/f//evil.com", wantPass: "check"},
		{name: "empty param in the middle refused", pattern: "/f/{p...}", tpl: "https://h.example/{p}/x", req: "/f/", wantPass: "path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pat := mustPattern(t, tt.pattern)
			up := mustUpstream(t, tt.tpl, pat.Names...)
			if err := CheckPath(tt.req); err != nil {
				if tt.wantPass != "check" {
					t.Fatalf("CheckPath(%q): %v", tt.req, err)
				}
				return
			}
			if tt.wantPass == "check" {
				t.Fatalf("CheckPath(%q) accepted it", tt.req)
			}
			r := &Router[bool]{}
			if _, err := r.Add(pat, true); err != nil {
				t.Fatal(err)
			}
			var ps Params
			if _, ok := r.Match(tt.req, &ps); !ok {
				t.Fatalf("Match(%q) failed", tt.req)
			}
			esc, dec, err := up.Path(&ps)
			if tt.wantPass == "path" {
				if !errors.Is(err, ErrEscape) {
					t.Fatalf("Path = %q, %v; want ErrEscape", esc, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Path: %v", err)
			}
			got := outboundURL(up, esc, dec, "")
			if got != tt.wantURL {
				t.Errorf("URL = %q, want %q", got, tt.wantURL)
			}
			checkOutbound(t, got, up.Scheme, up.Host, up.prefix)
		})
	}
}

// TestUpstreamKeepsOverlongEscaped: CheckPath accepts overlong UTF-8 dots
// (they are not dot segments to Go or to RFC 3986), so the upstream must
// receive them still percent-encoded, never as raw bytes or "..".
func TestUpstreamKeepsOverlongEscaped(t *testing.T) {
	tests := []struct{ name, req, want string }{
		{"lower hex", "/f/%c0%ae%c0%ae/x", "https://h.example/base/%C0%AE%C0%AE/x"},
		{"upper hex", "/f/%C0%AE%C0%AE", "https://h.example/base/%C0%AE%C0%AE"},
		{"overlong slash", "/f/%c0%af", "https://h.example/base/%C0%AF"},
		{"three-byte overlong dot", "/f/%e0%80%ae%e0%80%ae", "https://h.example/base/%E0%80%AE%E0%80%AE"},
	}
	pat := mustPattern(t, "/f/{p...}")
	up := mustUpstream(t, "https://h.example/base/{p}", "p")
	r := &Router[bool]{}
	if _, err := r.Add(pat, true); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := CheckPath(tt.req); err != nil {
				t.Fatalf("CheckPath(%q): %v", tt.req, err)
			}
			var ps Params
			if _, ok := r.Match(tt.req, &ps); !ok {
				t.Fatal("no match")
			}
			esc, dec, err := up.Path(&ps)
			if err != nil {
				t.Fatal(err)
			}
			got := outboundURL(up, esc, dec, "")
			if got != tt.want {
				t.Errorf("URL = %q, want %q", got, tt.want)
			}
			if strings.Contains(got, "..") || strings.Contains(got, "/./") {
				t.Errorf("URL %q contains a dot segment", got)
			}
		})
	}
}

func TestUpstreamSecretInPath(t *testing.T) {
	up := mustUpstream(t, "https://h.example/k/{secret.k}/{id}", "id")
	var ps Params
	setParams(&ps, []string{"id"}, []string{"7"})
	esc, dec, err := up.Path(&ps)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := outboundURL(up, esc, dec, ""), "https://h.example/k/s3cr3t/7"; got != want {
		t.Errorf("URL = %q, want %q", got, want)
	}
	if strings.Contains(up.String(), "s3cr3t") || strings.Contains(up.Template().String(), "s3cr3t") {
		t.Errorf("the compiled template prints the secret")
	}
}
