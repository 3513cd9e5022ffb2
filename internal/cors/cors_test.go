package cors

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func mustNew(t *testing.T, o Options) *Policy {
	t.Helper()
	p, err := New(o)
	if err != nil {
		t.Fatalf("New(%+v): %v", o, err)
	}
	return p
}

func TestNewRefuses(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr []string
	}{
		{name: "null origin", opts: Options{AllowOrigins: []string{"null"}}, wantErr: []string{"allow_origins[0]", `"null"`}},
		{name: "origin with path", opts: Options{AllowOrigins: []string{"https://app.example.com/app"}}, wantErr: []string{"no path"}},
		{name: "origin with trailing slash", opts: Options{AllowOrigins: []string{"https://app.example.com/"}}, wantErr: []string{"no path"}},
		{name: "origin with query", opts: Options{AllowOrigins: []string{"https://app.example.com?x=1"}}, wantErr: []string{"no path"}},
		{name: "origin with fragment", opts: Options{AllowOrigins: []string{"https://app.example.com#x"}}, wantErr: []string{"no path"}},
		{name: "origin with userinfo", opts: Options{AllowOrigins: []string{"https://u@app.example.com"}}, wantErr: []string{"no path"}},
		{name: "wildcard with path", opts: Options{AllowOrigins: []string{"https://*.example.com/x"}}, wantErr: []string{"no path"}},
		{name: "no scheme", opts: Options{AllowOrigins: []string{"app.example.com"}}, wantErr: []string{"not an origin"}},
		{name: "bare wildcard host", opts: Options{AllowOrigins: []string{"*.example.com"}}, wantErr: []string{"not an origin"}},
		{name: "partial label wildcard", opts: Options{AllowOrigins: []string{"https://a*.example.com"}}, wantErr: []string{"wildcard"}},
		{name: "inner wildcard", opts: Options{AllowOrigins: []string{"https://*.*.example.com"}}, wantErr: []string{"wildcard"}},
		{name: "suffix wildcard", opts: Options{AllowOrigins: []string{"https://example.*"}}, wantErr: []string{"wildcard"}},
		{name: "bad header name", opts: Options{AllowHeaders: []string{"X Bad"}}, wantErr: []string{"allow_headers[0]"}},
		{name: "every problem reported", opts: Options{
			AllowOrigins: []string{"https://ok.example.com", "null", "https://x.example.com/p"},
			AllowHeaders: []string{"ok", "bad header"},
		}, wantErr: []string{"allow_origins[1]", "allow_origins[2]", "allow_headers[1]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.opts)
			if err == nil {
				t.Fatalf("New = %v, want an error", p)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestAllowed(t *testing.T) {
	p := mustNew(t, Options{AllowOrigins: []string{
		"https://app.example.com",
		"http://localhost:5173",
		"https://*.example.com",
		"https://*.ports.test:8443",
		"HTTPS://Upper.Example.ORG",
	}})
	tests := []struct {
		name   string
		origin string
		want   bool
	}{
		{"exact", "https://app.example.com", true},
		{"exact with port", "http://localhost:5173", true},
		{"exact, other port", "http://localhost:5174", false},
		{"exact, no port", "http://localhost", false},
		{"exact, other scheme", "https://localhost:5173", false},
		{"exact upper-case request", "HTTPS://APP.EXAMPLE.COM", true},
		{"exact listed in upper case", "https://upper.example.org", true},
		{"exact with trailing slash", "https://upper.example.org/", false},
		{"empty", "", false},
		{"null", "null", false},

		{"wildcard one label", "https://a.example.com", true},
		{"wildcard two labels", "https://a.b.example.com", true},
		{"wildcard digits and hyphen", "https://pr-12.example.com", true},
		{"wildcard mixed case", "https://A.Example.com", true},
		{"wildcard apex", "https://example.com", false},
		{"wildcard no dot", "https://evilexample.com", false},
		{"wildcard as infix", "https://a.example.com.evil.com", false},
		{"wildcard other scheme", "http://a.example.com", false},
		{"wildcard unlisted port", "https://a.example.com:8443", false},
		{"wildcard empty label", "https://.example.com", false},
		{"wildcard double dot", "https://a..example.com", false},
		{"wildcard leading dot", "https://.a.example.com", false},
		{"wildcard underscore", "https://a_b.example.com", false},
		{"wildcard userinfo", "https://u@a.example.com", false},
		{"wildcard path trick", "https://evil.com/.example.com", false},
		{"wildcard query trick", "https://evil.com?.example.com", false},
		{"wildcard port trick", "https://evil.com:1.example.com", false},
		{"wildcard trailing slash", "https://a.example.com/", false},
		{"wildcard with space", "https://a b.example.com", false},
		{"wildcard with port listed", "https://a.ports.test:8443", true},
		{"wildcard with port, no port", "https://a.ports.test", false},
		{"wildcard with port, other port", "https://a.ports.test:443", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Allowed(tt.origin); got != tt.want {
				t.Errorf("Allowed(%q) = %v, want %v", tt.origin, got, tt.want)
			}
		})
	}
}

func TestActualHeaders(t *testing.T) {
	base := Options{
		AllowOrigins:  []string{"https://app.example.com", "https://*.example.com"},
		ExposeHeaders: []string{"X-Total", "Link"},
	}
	withCreds := base
	withCreds.AllowCredentials = true
	rejecting := base
	rejecting.RejectOtherOrigins = true
	star := Options{AllowOrigins: []string{"*"}}
	starCreds := Options{AllowOrigins: []string{"*", "https://app.example.com"}, AllowCredentials: true}

	tests := []struct {
		name        string
		opts        Options
		origin      string
		want        http.Header
		wantRefusal string
	}{
		{name: "exact", opts: base, origin: "https://app.example.com", want: http.Header{
			"Vary":                          {"Origin"},
			"Access-Control-Allow-Origin":   {"https://app.example.com"},
			"Access-Control-Expose-Headers": {"X-Total, Link"},
		}},
		{name: "exact in other case answers the configured origin", opts: base, origin: "https://APP.example.com", want: http.Header{
			"Vary":                          {"Origin"},
			"Access-Control-Allow-Origin":   {"https://app.example.com"},
			"Access-Control-Expose-Headers": {"X-Total, Link"},
		}},
		{name: "wildcard echoes only the matched origin", opts: base, origin: "https://a.b.example.com", want: http.Header{
			"Vary":                          {"Origin"},
			"Access-Control-Allow-Origin":   {"https://a.b.example.com"},
			"Access-Control-Expose-Headers": {"X-Total, Link"},
		}},
		{name: "disallowed gets only Vary", opts: base, origin: "https://evil.com", want: http.Header{"Vary": {"Origin"}}},
		{name: "no origin gets only Vary", opts: base, origin: "", want: http.Header{"Vary": {"Origin"}}},
		{name: "credentials", opts: withCreds, origin: "https://app.example.com", want: http.Header{
			"Vary":                             {"Origin"},
			"Access-Control-Allow-Origin":      {"https://app.example.com"},
			"Access-Control-Expose-Headers":    {"X-Total, Link"},
			"Access-Control-Allow-Credentials": {"true"},
		}},
		{name: "credentials, disallowed origin", opts: withCreds, origin: "https://evil.com", want: http.Header{"Vary": {"Origin"}}},
		{name: "reject other origins", opts: rejecting, origin: "https://evil.com", want: http.Header{"Vary": {"Origin"}},
			wantRefusal: "cors_origin_not_allowed"},
		{name: "reject other origins lets requests without Origin pass", opts: rejecting, origin: "", want: http.Header{"Vary": {"Origin"}}},
		{name: "star", opts: star, origin: "https://anything.test", want: http.Header{
			"Vary":                        {"Origin"},
			"Access-Control-Allow-Origin": {"*"},
		}},
		{name: "star is ignored with credentials", opts: starCreds, origin: "https://anything.test", want: http.Header{"Vary": {"Origin"}}},
		{name: "star with credentials still allows listed origins", opts: starCreds, origin: "https://app.example.com", want: http.Header{
			"Vary":                             {"Origin"},
			"Access-Control-Allow-Origin":      {"https://app.example.com"},
			"Access-Control-Allow-Credentials": {"true"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustNew(t, tt.opts)
			h := http.Header{}
			ref := p.Actual(h, tt.origin)
			if diff := cmp.Diff(tt.want, h); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
			switch {
			case tt.wantRefusal == "" && ref != nil:
				t.Errorf("refusal %+v, want none", ref)
			case tt.wantRefusal != "" && (ref == nil || ref.Code != tt.wantRefusal):
				t.Errorf("refusal %+v, want code %q", ref, tt.wantRefusal)
			}
		})
	}
}

func preflight(origin, method string, headers ...string) *http.Request {
	r := httptest.NewRequest(http.MethodOptions, "/x", nil)
	if origin != "" {
		r.Header.Set("Origin", origin)
	}
	if method != "" {
		r.Header.Set("Access-Control-Request-Method", method)
	}
	for _, h := range headers {
		r.Header.Add("Access-Control-Request-Headers", h)
	}
	return r
}

func TestPreflight(t *testing.T) {
	const vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
	base := Options{
		AllowOrigins: []string{"https://app.example.com"},
		AllowHeaders: []string{"X-Custom", "Authorization"},
		MaxAge:       10 * time.Minute,
	}
	listed := base
	listed.AllowMethods = []string{"get", " POST "}
	creds := base
	creds.AllowCredentials = true
	anyHeader := Options{AllowOrigins: []string{"https://app.example.com"}, AllowHeaders: []string{"*"}}
	anyHeaderCreds := anyHeader
	anyHeaderCreds.AllowCredentials = true
	star := Options{AllowOrigins: []string{"*"}}
	routeMethods := []string{"GET", "HEAD", "POST"}

	tests := []struct {
		name        string
		opts        Options
		req         *http.Request
		allowed     []string
		want        http.Header
		wantRefusal string
	}{
		{name: "simple preflight", opts: base, req: preflight("https://app.example.com", "POST"), allowed: routeMethods, want: http.Header{
			"Vary":                         {vary},
			"Access-Control-Allow-Origin":  {"https://app.example.com"},
			"Access-Control-Allow-Methods": {"GET, HEAD, POST"},
			"Access-Control-Max-Age":       {"600"},
		}},
		{name: "requested headers allowed", opts: base, req: preflight("https://app.example.com", "GET", "x-custom, Content-Type", "authorization"),
			allowed: routeMethods, want: http.Header{
				"Vary":                         {vary},
				"Access-Control-Allow-Origin":  {"https://app.example.com"},
				"Access-Control-Allow-Methods": {"GET, HEAD, POST"},
				"Access-Control-Allow-Headers": {"x-custom, Content-Type, authorization"},
				"Access-Control-Max-Age":       {"600"},
			}},
		{name: "policy methods are normalised", opts: listed, req: preflight("https://app.example.com", "POST"), allowed: routeMethods, want: http.Header{
			"Vary":                         {vary},
			"Access-Control-Allow-Origin":  {"https://app.example.com"},
			"Access-Control-Allow-Methods": {"GET, POST"},
			"Access-Control-Max-Age":       {"600"},
		}},
		{name: "credentials", opts: creds, req: preflight("https://app.example.com", "GET"), allowed: routeMethods, want: http.Header{
			"Vary":                             {vary},
			"Access-Control-Allow-Origin":      {"https://app.example.com"},
			"Access-Control-Allow-Methods":     {"GET, HEAD, POST"},
			"Access-Control-Max-Age":           {"600"},
			"Access-Control-Allow-Credentials": {"true"},
		}},
		{name: "star without credentials", opts: star, req: preflight("https://any.test", "GET"), allowed: routeMethods, want: http.Header{
			"Vary":                         {vary},
			"Access-Control-Allow-Origin":  {"*"},
			"Access-Control-Allow-Methods": {"GET, HEAD, POST"},
		}},
		{name: "any header", opts: anyHeader, req: preflight("https://app.example.com", "GET", "X-Whatever"), allowed: routeMethods, want: http.Header{
			"Vary":                         {vary},
			"Access-Control-Allow-Origin":  {"https://app.example.com"},
			"Access-Control-Allow-Methods": {"GET, HEAD, POST"},
			"Access-Control-Allow-Headers": {"X-Whatever"},
		}},

		{name: "disallowed origin", opts: base, req: preflight("https://evil.com", "GET"), allowed: routeMethods,
			want: http.Header{"Vary": {vary}}, wantRefusal: "cors_origin_not_allowed"},
		{name: "null origin", opts: base, req: preflight("null", "GET"), allowed: routeMethods,
			want: http.Header{"Vary": {vary}}, wantRefusal: "cors_origin_not_allowed"},
		{name: "method not on route", opts: base, req: preflight("https://app.example.com", "DELETE"), allowed: routeMethods,
			want: http.Header{"Vary": {vary}}, wantRefusal: "cors_method_not_allowed"},
		{name: "method in policy but not on route", opts: Options{AllowOrigins: []string{"https://app.example.com"}, AllowMethods: []string{"GET", "PUT"}},
			req: preflight("https://app.example.com", "PUT"), allowed: routeMethods,
			want: http.Header{"Vary": {vary}}, wantRefusal: "cors_method_not_allowed"},
		{name: "method on route but not in policy", opts: listed, req: preflight("https://app.example.com", "HEAD"), allowed: routeMethods,
			want: http.Header{"Vary": {vary}}, wantRefusal: "cors_method_not_allowed"},
		{name: "method is case-sensitive", opts: base, req: preflight("https://app.example.com", "post"), allowed: routeMethods,
			want: http.Header{"Vary": {vary}}, wantRefusal: "cors_method_not_allowed"},
		{name: "header not allowed", opts: base, req: preflight("https://app.example.com", "GET", "X-Custom, X-Other"), allowed: routeMethods,
			want: http.Header{"Vary": {vary}}, wantRefusal: "cors_header_not_allowed"},
		{name: "header not allowed on a second line", opts: base, req: preflight("https://app.example.com", "GET", "x-custom", "cookie"), allowed: routeMethods,
			want: http.Header{"Vary": {vary}}, wantRefusal: "cors_header_not_allowed"},
		{name: "any header is not any with credentials", opts: anyHeaderCreds, req: preflight("https://app.example.com", "GET", "X-Whatever"),
			allowed: routeMethods, want: http.Header{"Vary": {vary}}, wantRefusal: "cors_header_not_allowed"},
		{name: "star never with credentials", opts: Options{AllowOrigins: []string{"*"}, AllowCredentials: true},
			req: preflight("https://any.test", "GET"), allowed: routeMethods,
			want: http.Header{"Vary": {vary}}, wantRefusal: "cors_origin_not_allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !IsPreflight(tt.req) {
				t.Fatal("test request is not a preflight")
			}
			p := mustNew(t, tt.opts)
			h := http.Header{}
			ref := p.Preflight(h, tt.req, tt.allowed)
			if diff := cmp.Diff(tt.want, h); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
			switch {
			case tt.wantRefusal == "" && ref != nil:
				t.Errorf("refusal %+v, want none", ref)
			case tt.wantRefusal != "" && (ref == nil || ref.Code != tt.wantRefusal):
				t.Errorf("refusal %+v, want code %q", ref, tt.wantRefusal)
			}
			if got := h.Get("Access-Control-Allow-Origin"); got == "*" && h.Get("Access-Control-Allow-Credentials") != "" {
				t.Errorf("'*' combined with credentials")
			}
		})
	}
}

func TestIsPreflight(t *testing.T) {
	tests := []struct {
		name string
		req  *http.Request
		want bool
	}{
		{"preflight", preflight("https://a.test", "GET"), true},
		{"no origin", preflight("", "GET"), false},
		{"no requested method", preflight("https://a.test", ""), false},
		{"not options", func() *http.Request {
			r := preflight("https://a.test", "GET")
			r.Method = http.MethodGet
			return r
		}(), false},
	}
	for _, tt := range tests {
		if got := IsPreflight(tt.req); got != tt.want {
			t.Errorf("%s: IsPreflight = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestStarNeverWithCredentials checks every origin kind under a policy with
// credentials: "*" must never be sent, whatever matched.
func TestStarNeverWithCredentials(t *testing.T) {
	p := mustNew(t, Options{AllowOrigins: []string{"*", "https://a.test", "https://*.b.test"}, AllowCredentials: true})
	if !p.AllowsAnyOrigin() {
		t.Errorf("AllowsAnyOrigin = false, want true so that check can warn")
	}
	for _, origin := range []string{"https://a.test", "https://x.b.test", "https://evil.test", "null", ""} {
		h := http.Header{}
		p.Actual(h, origin)
		if got := h.Get("Access-Control-Allow-Origin"); got == "*" {
			t.Errorf("Actual(%q): Access-Control-Allow-Origin = *", origin)
		}
		h = http.Header{}
		p.Preflight(h, preflight(origin, "GET"), []string{"GET"})
		if got := h.Get("Access-Control-Allow-Origin"); got == "*" {
			t.Errorf("Preflight(%q): Access-Control-Allow-Origin = *", origin)
		}
	}
}

func TestNilPolicy(t *testing.T) {
	var p *Policy
	if p.Allowed("https://a.test") {
		t.Error("nil policy allows an origin")
	}
	if p.AllowsAnyOrigin() {
		t.Error("nil policy allows any origin")
	}
	h := http.Header{}
	if ref := p.Actual(h, "https://a.test"); ref != nil {
		t.Errorf("Actual on nil policy refused: %+v", ref)
	}
	if len(h) != 0 {
		t.Errorf("Actual on nil policy set headers: %v", h)
	}
	h = http.Header{}
	ref := p.Preflight(h, preflight("https://a.test", "GET"), []string{"GET"})
	if ref == nil || ref.Code != "cors_origin_not_allowed" {
		t.Errorf("Preflight on nil policy = %+v, want a refusal", ref)
	}
	if h.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("Preflight on nil policy allowed the origin: %v", h)
	}
}

// TestPrebuiltValuesNotShared: a later Header.Add on one response must not
// write into the slices shared by every response.
func TestPrebuiltValuesNotShared(t *testing.T) {
	p := mustNew(t, Options{AllowOrigins: []string{"https://a.test"}, AllowCredentials: true})
	h1 := http.Header{}
	p.Actual(h1, "https://a.test")
	h1.Add("Vary", "Accept-Encoding")
	h1.Add("Access-Control-Allow-Origin", "https://evil.test")
	h2 := http.Header{}
	p.Actual(h2, "https://a.test")
	want := http.Header{
		"Vary":                             {"Origin"},
		"Access-Control-Allow-Origin":      {"https://a.test"},
		"Access-Control-Allow-Credentials": {"true"},
	}
	if diff := cmp.Diff(want, h2); diff != "" {
		t.Errorf("second response headers (-want +got):\n%s", diff)
	}
}
