package cache

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func mustPolicy(t testing.TB, o PolicyOptions) *Policy {
	t.Helper()
	p, err := NewPolicy(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNewPolicyErrors(t *testing.T) {
	_, err := NewPolicy(PolicyOptions{
		TTL:                  0,
		StaleWhileRevalidate: -time.Second,
		StaleIfError:         -time.Second,
		MaxEntry:             -1,
		UpstreamTimeout:      -time.Second,
		Vary:                 []string{"Accept-Language", "accept-language", "bad name"},
		Statuses:             []int{200, 206, 304, 500, 404},
	})
	if err == nil {
		t.Fatal("no error")
	}
	got := strings.Split(err.Error(), "\n")
	want := []string{
		"ttl 0s must be positive",
		"stale_while_revalidate -1s is negative",
		"stale_if_error -1s is negative",
		"upstream timeout -1s is negative",
		"max_entry -1 is negative",
		"vary[1]: Accept-Language is listed twice",
		`vary[2]: "bad name" is not a header name`,
		"statuses[1]: 206 cannot be cached: want 2xx except 206, 3xx except 304, 404 or 410",
		"statuses[2]: 304 cannot be cached: want 2xx except 206, 3xx except 304, 404 or 410",
		"statuses[3]: 500 cannot be cached: want 2xx except 206, 3xx except 304, 404 or 410",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}

func TestKey(t *testing.T) {
	p := mustPolicy(t, PolicyOptions{TTL: time.Minute, Vary: []string{"accept-language", "X-Tenant"}})
	type req struct {
		stage, route, path string
		query              url.Values
		header             http.Header
	}
	base := req{stage: "prod", route: "r", path: "/a", query: url.Values{"page": {"1"}}}
	with := func(f func(*req)) req {
		r := base
		f(&r)
		return r
	}
	tests := []struct {
		name string
		a, b req
		same bool
	}{
		{"identical", base, base, true},
		{"stage differs", base, with(func(r *req) { r.stage = "dev" }), false},
		{"route differs", base, with(func(r *req) { r.route = "s" }), false},
		{"path differs", base, with(func(r *req) { r.path = "/b" }), false},
		{"escaped path differs", with(func(r *req) { r.path = "/a%2Fb" }), with(func(r *req) { r.path = "/a/b" }), false},
		{"field boundaries", with(func(r *req) { r.stage, r.route = "ab", "c" }), with(func(r *req) { r.stage, r.route = "a", "bc" }), false},
		{"query order of names", with(func(r *req) { r.query = url.Values{"a": {"1"}, "b": {"2"}} }), with(func(r *req) { r.query = url.Values{"b": {"2"}, "a": {"1"}} }), true},
		{"query order of values", with(func(r *req) { r.query = url.Values{"a": {"1", "2"}} }), with(func(r *req) { r.query = url.Values{"a": {"2", "1"}} }), true},
		{"query value differs", base, with(func(r *req) { r.query = url.Values{"page": {"2"}} }), false},
		{"query name and value boundary", with(func(r *req) { r.query = url.Values{"a": {"b=c"}} }), with(func(r *req) { r.query = url.Values{"a=b": {"c"}} }), false},
		{"empty query value vs none", with(func(r *req) { r.query = url.Values{"a": {""}} }), with(func(r *req) { r.query = nil }), false},
		{"vary header value differs", with(func(r *req) { r.header = http.Header{"Accept-Language": {"en"}} }), with(func(r *req) { r.header = http.Header{"Accept-Language": {"de"}} }), false},
		{"vary whitespace canonicalised", with(func(r *req) { r.header = http.Header{"Accept-Language": {"en, de;q=0.5"}} }), with(func(r *req) { r.header = http.Header{"Accept-Language": {"en,de;q=0.5"}} }), true},
		{"vary field lines joined", with(func(r *req) { r.header = http.Header{"Accept-Language": {"en", "de"}} }), with(func(r *req) { r.header = http.Header{"Accept-Language": {"en, de"}} }), true},
		{"vary absent vs empty", with(func(r *req) { r.header = http.Header{"Accept-Language": {""}} }), base, false},
		{"vary headers kept apart", with(func(r *req) { r.header = http.Header{"Accept-Language": {"x"}} }), with(func(r *req) { r.header = http.Header{"X-Tenant": {"x"}} }), false},
		{"unlisted header ignored", with(func(r *req) { r.header = http.Header{"User-Agent": {"a"}} }), with(func(r *req) { r.header = http.Header{"User-Agent": {"b"}} }), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ka := p.Key(tt.a.stage, tt.a.route, tt.a.path, tt.a.query, tt.a.header)
			kb := p.Key(tt.b.stage, tt.b.route, tt.b.path, tt.b.query, tt.b.header)
			if (ka == kb) != tt.same {
				t.Errorf("keys equal = %v, want %v", ka == kb, tt.same)
			}
		})
	}

	t.Run("hex without client text", func(t *testing.T) {
		k := p.Key("prod", "r", "/secret-path", url.Values{"q": {"hello"}}, nil)
		s := k.String()
		if len(s) != 64 || strings.Contains(s, "secret") {
			t.Errorf("String() = %q", s)
		}
	})
	t.Run("caller's values not reordered", func(t *testing.T) {
		q := url.Values{"a": {"2", "1"}}
		p.Key("", "", "/", q, nil)
		if diff := cmp.Diff(url.Values{"a": {"2", "1"}}, q); diff != "" {
			t.Error(diff)
		}
	})
}

func TestJudge(t *testing.T) {
	p := mustPolicy(t, PolicyOptions{TTL: time.Minute, MaxEntry: 100})
	honor := mustPolicy(t, PolicyOptions{TTL: time.Minute, HonorUpstream: true})
	more := mustPolicy(t, PolicyOptions{TTL: time.Minute, Statuses: []int{200, 301, 404}})
	h := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Add(kv[i], kv[i+1])
		}
		return h
	}
	tests := []struct {
		name   string
		p      *Policy
		status int
		header http.Header
		want   verdict
	}{
		{"plain 200", p, 200, h("Content-Type", "application/json"), verdict{store: true, fresh: time.Minute}},
		{"201 not configured", p, 201, h(), verdict{why: "status"}},
		{"404 not configured", p, 404, h(), verdict{why: "status"}},
		{"404 configured", more, 404, h(), verdict{store: true, fresh: time.Minute}},
		{"301 configured", more, 301, h(), verdict{store: true, fresh: time.Minute}},
		{"500 never", more, 500, h(), verdict{why: "status"}},
		{"set-cookie", p, 200, h("Set-Cookie", "a=b"), verdict{why: "set-cookie"}},
		{"no-store", p, 200, h("Cache-Control", "public, no-store"), verdict{why: "no-store"}},
		{"private", p, 200, h("Cache-Control", "private"), verdict{why: "private"}},
		{"private with field names", p, 200, h("Cache-Control", `private="X-User"`), verdict{why: "private"}},
		{"no-cache", p, 200, h("Cache-Control", "No-Cache"), verdict{why: "no-cache"}},
		{"no-cache on second line", p, 200, h("Cache-Control", "public", "Cache-Control", "no-cache"), verdict{why: "no-cache"}},
		{"vary star", p, 200, h("Vary", "Accept, *"), verdict{why: "vary-star"}},
		{"vary star on second line", p, 200, h("Vary", "Accept", "Vary", " *"), verdict{why: "vary-star"}},
		{"vary named ok", p, 200, h("Vary", "Accept-Encoding"), verdict{store: true, fresh: time.Minute}},
		{"event stream", p, 200, h("Content-Type", "Text/Event-Stream; charset=utf-8"), verdict{why: "event-stream"}},
		{"trailer", p, 200, h("Trailer", "X-Checksum"), verdict{why: "trailer"}},
		{"content-length over limit", p, 200, h("Content-Length", "101"), verdict{why: "too-large"}},
		{"content-length at limit", p, 200, h("Content-Length", "100"), verdict{store: true, fresh: time.Minute}},
		{"content-length invalid", p, 200, h("Content-Length", "x"), verdict{why: "content-length"}},
		{"must-revalidate", p, 200, h("Cache-Control", "max-age=10, must-revalidate"), verdict{store: true, fresh: time.Minute, mustRev: true}},
		{"max-age ignored without honor", p, 200, h("Cache-Control", "max-age=10"), verdict{store: true, fresh: time.Minute}},
		{"max-age honoured", honor, 200, h("Cache-Control", "max-age=10"), verdict{store: true, fresh: 10 * time.Second}},
		{"max-age above ttl", honor, 200, h("Cache-Control", "max-age=3600"), verdict{store: true, fresh: time.Minute}},
		{"s-maxage wins over max-age", honor, 200, h("Cache-Control", "max-age=5, s-maxage=20"), verdict{store: true, fresh: 20 * time.Second}},
		{"age subtracted", honor, 200, h("Cache-Control", "max-age=10", "Age", "4"), verdict{store: true, fresh: 6 * time.Second, age: 4 * time.Second}},
		{"stale on arrival", honor, 200, h("Cache-Control", "max-age=10", "Age", "10"), verdict{why: "stale-on-arrival"}},
		{"max-age=0", honor, 200, h("Cache-Control", "max-age=0"), verdict{why: "stale-on-arrival"}},
		{"bad max-age ignored", honor, 200, h("Cache-Control", "max-age=soon"), verdict{store: true, fresh: time.Minute}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.p.judge(tt.status, tt.header)
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(verdict{})); diff != "" {
				t.Errorf("judge (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRequestNoStore(t *testing.T) {
	for _, tt := range []struct {
		cc   []string
		want bool
	}{
		{nil, false},
		{[]string{"no-cache"}, false},
		{[]string{"max-age=0"}, false},
		{[]string{"no-store"}, true},
		{[]string{"max-age=0, NO-STORE"}, true},
	} {
		r, _ := http.NewRequest("GET", "/", nil)
		if tt.cc != nil {
			r.Header["Cache-Control"] = tt.cc
		}
		if got := requestNoStore(r); got != tt.want {
			t.Errorf("requestNoStore(%q) = %v, want %v", tt.cc, got, tt.want)
		}
	}
}

func TestKeyFor(t *testing.T) {
	p := mustPolicy(t, PolicyOptions{TTL: time.Minute, Vary: []string{"X-Tenant"}})
	type req struct {
		stage, route, path, query string
		fwd, header               http.Header
	}
	base := req{stage: "prod", route: "r", path: "/a", query: "page=1", fwd: http.Header{"Accept": {"application/json"}}}
	with := func(f func(*req)) req {
		r := base
		f(&r)
		return r
	}
	fwd := func(h http.Header) req { return with(func(r *req) { r.fwd = h }) }
	many := func(changed string) http.Header {
		h := http.Header{}
		for i := range 20 {
			h["X-H"+strconv.Itoa(i)] = []string{"v"}
		}
		h["X-H7"] = []string{changed}
		return h
	}
	tests := []struct {
		name string
		a, b req
		same bool
	}{
		{"identical", base, base, true},
		{"stage differs", base, with(func(r *req) { r.stage = "dev" }), false},
		{"route differs", base, with(func(r *req) { r.route = "s" }), false},
		{"path differs", base, with(func(r *req) { r.path = "/b" }), false},
		{"path and query boundary", with(func(r *req) { r.path, r.query = "/a?b", "" }), with(func(r *req) { r.path, r.query = "/a", "b" }), false},
		{"query differs", base, with(func(r *req) { r.query = "page=2" }), false},
		{"query absent vs empty value", with(func(r *req) { r.query = "" }), with(func(r *req) { r.query = "page=" }), false},
		// The upstream sees the order: an API may take the first or the
		// last of repeated values, or read the query as one string.
		{"query order of repeated values", with(func(r *req) { r.query = "a=1&a=2" }), with(func(r *req) { r.query = "a=2&a=1" }), false},
		{"query order of names", with(func(r *req) { r.query = "a=1&b=2" }), with(func(r *req) { r.query = "b=2&a=1" }), false},
		{"accept differs", base, fwd(http.Header{"Accept": {"text/evil"}}), false},
		{"headers in either map order", fwd(http.Header{"Accept": {"a"}, "Accept-Language": {"en"}, "X-Api-Version": {"2"}}), fwd(http.Header{"X-Api-Version": {"2"}, "Accept-Language": {"en"}, "Accept": {"a"}}), true},
		{"field line order", fwd(http.Header{"Accept": {"a", "b"}}), fwd(http.Header{"Accept": {"b", "a"}}), false},
		{"field lines vs one line", fwd(http.Header{"Accept": {"a", "b"}}), fwd(http.Header{"Accept": {"a, b"}}), false},
		{"value spelled as sent", fwd(http.Header{"Accept-Language": {"en, de"}}), fwd(http.Header{"Accept-Language": {"en,de"}}), false},
		{"forwarded vs not", fwd(http.Header{"Accept": {"a"}, "X-Api-Version": {"2"}}), fwd(http.Header{"Accept": {"a"}}), false},
		{"forwarded empty vs absent", fwd(http.Header{"Accept": {""}}), fwd(nil), false},
		{"no values is absent", fwd(http.Header{"Accept": {}}), fwd(nil), true},
		{"name and value boundary", fwd(http.Header{"A": {"bc"}}), fwd(http.Header{"Ab": {"c"}}), false},
		{"value boundary", fwd(http.Header{"A": {"b", "c"}}), fwd(http.Header{"A": {"bc"}}), false},
		{"header and query apart", with(func(r *req) { r.query, r.fwd = "A", nil }), with(func(r *req) { r.query, r.fwd = "", http.Header{"A": {""}} }), false},
		{"conditional headers left out", fwd(http.Header{"Accept": {"application/json"}, "If-None-Match": {`"v1"`}, "If-Modified-Since": {"Sat, 01 Jan 2026 00:00:00 GMT"}}), base, true},
		{"range left out", fwd(http.Header{"Accept": {"application/json"}, "Range": {"bytes=0-10"}, "If-Range": {`"v1"`}}), base, true},
		{"many headers, same", fwd(many("v")), fwd(many("v")), true},
		{"many headers, one differs", fwd(many("v")), fwd(many("w")), false},
		{"configured vary read from the request", with(func(r *req) { r.header = http.Header{"X-Tenant": {"a"}} }), with(func(r *req) { r.header = http.Header{"X-Tenant": {"b"}} }), false},
		{"configured vary absent vs empty", with(func(r *req) { r.header = http.Header{"X-Tenant": {""}} }), base, false},
		{"request header neither forwarded nor configured", with(func(r *req) { r.header = http.Header{"Accept": {"text/evil"}} }), base, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ka := p.KeyFor(tt.a.stage, tt.a.route, tt.a.path, tt.a.query, tt.a.fwd, tt.a.header)
			kb := p.KeyFor(tt.b.stage, tt.b.route, tt.b.path, tt.b.query, tt.b.fwd, tt.b.header)
			if (ka == kb) != tt.same {
				t.Errorf("keys equal = %v, want %v", ka == kb, tt.same)
			}
		})
	}

	t.Run("never Key's", func(t *testing.T) {
		if p.KeyFor("", "", "/", "", nil, nil) == p.Key("", "", "/", nil, nil) {
			t.Error("KeyFor and Key agree on an empty request")
		}
	})
	t.Run("no allocation", func(t *testing.T) {
		fwd := http.Header{"Accept": {"application/vnd.github+json"}, "Accept-Language": {"en-GB, en;q=0.9"}, "X-Github-Api-Version": {"2022-11-28"}}
		h := http.Header{"X-Tenant": {"acme"}}
		if n := testing.AllocsPerRun(100, func() {
			p.KeyFor("prod", "issues", "/repos/keyward/keyward/issues", "page=2&per_page=50", fwd, h)
		}); n != 0 {
			t.Errorf("KeyFor allocates %v times", n)
		}
	})
}
