package route

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func mustPattern(t testing.TB, s string) *Pattern {
	t.Helper()
	p, err := ParsePattern(s)
	if err != nil {
		t.Fatalf("ParsePattern(%q): %v", s, err)
	}
	return p
}

// newRouter registers each pattern with itself as the value.
func newRouter(t testing.TB, patterns ...string) *Router[string] {
	t.Helper()
	r := &Router[string]{}
	for _, s := range patterns {
		if _, err := r.Add(mustPattern(t, s), s); err != nil {
			t.Fatalf("Add(%q): %v", s, err)
		}
	}
	return r
}

// params returns a match's values as name=value pairs.
func params(ps *Params) []string {
	var out []string
	for i := range ps.Len() {
		n, v := ps.At(i)
		out = append(out, n+"="+v)
	}
	return out
}

func TestParsePattern(t *testing.T) {
	tests := []struct {
		name      string
		path      string
		wantNames []string
		wantRest  bool
		wantErr   string
	}{
		{name: "root", path: "/"},
		{name: "literal", path: "/my-repos"},
		{name: "params", path: "/repos/{owner}/{repo}/issues", wantNames: []string{"owner", "repo"}},
		{name: "rest", path: "/files/{path...}", wantNames: []string{"path"}, wantRest: true},
		{name: "param and rest", path: "/u/{id}/{rest...}", wantNames: []string{"id", "rest"}, wantRest: true},
		{name: "escaped literal", path: "/a%20b"},
		{name: "no leading slash", path: "repos", wantErr: "must start with /"},
		{name: "empty", path: "", wantErr: "must start with /"},
		{name: "empty segment", path: "/a//b", wantErr: "empty segment"},
		{name: "partial segment param", path: "/a/x{id}", wantErr: "whole segment"},
		{name: "param with suffix", path: "/a/{id}.json", wantErr: "whole segment"},
		{name: "rest not last", path: "/{rest...}/a", wantErr: "must be the last segment"},
		{name: "duplicate param", path: "/{a}/{a}", wantErr: "appears twice"},
		{name: "dotted param name", path: "/{secret.x}", wantErr: "bad parameter name"},
		{name: "empty param name", path: "/{}", wantErr: "bad parameter name"},
		{name: "digit-first param name", path: "/{1a}", wantErr: "bad parameter name"},
		{name: "dot dot literal", path: "/a/../b", wantErr: "dot segment"},
		{name: "encoded dot dot literal", path: "/a/%2e%2e", wantErr: "dot segment"},
		{name: "encoded slash literal", path: "/a%2fb", wantErr: "encoded slash"},
		{name: "backslash literal", path: "/a\\b", wantErr: "backslash"},
		{name: "unclosed brace", path: "/{a", wantErr: "whole segment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePattern(tt.path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParsePattern(%q) error = %v, want one containing %q", tt.path, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePattern(%q): %v", tt.path, err)
			}
			if diff := cmp.Diff(tt.wantNames, p.Names); diff != "" {
				t.Errorf("Names (-want +got):\n%s", diff)
			}
			if p.Rest != tt.wantRest {
				t.Errorf("Rest = %v, want %v", p.Rest, tt.wantRest)
			}
			if p.String() != tt.path {
				t.Errorf("String() = %q, want %q", p.String(), tt.path)
			}
		})
	}
}

func TestRouterMatch(t *testing.T) {
	r := newRouter(t,
		"/",
		"/a",
		"/a/",
		"/a/b",
		"/a/{x}",
		"/a/{x}/c",
		"/a/b/d",
		"/a/{x}/{rest...}",
		"/files/{path...}",
		"/repos/{owner}/{repo}/issues",
		"/repos/keyward/{repo}/pulls",
		"/deep/{a}/x",
		"/deep/{b...}",
		"/enc/a%20b",
	)
	tests := []struct {
		name       string
		path       string
		want       string // "" means no match
		wantParams []string
	}{
		{name: "root", path: "/", want: "/"},
		{name: "literal", path: "/a", want: "/a"},
		{name: "trailing slash is its own route", path: "/a/", want: "/a/"},
		{name: "literal beats param", path: "/a/b", want: "/a/b"},
		{name: "param when no literal", path: "/a/z", want: "/a/{x}", wantParams: []string{"x=z"}},
		{name: "param then literal", path: "/a/z/c", want: "/a/{x}/c", wantParams: []string{"x=z"}},
		{name: "backtrack from literal to param", path: "/a/b/c", want: "/a/{x}/c", wantParams: []string{"x=b"}},
		{name: "literal path all the way", path: "/a/b/d", want: "/a/b/d"},
		{name: "backtrack to rest", path: "/a/b/e/f", want: "/a/{x}/{rest...}", wantParams: []string{"x=b", "rest=e/f"}},
		{name: "param beats rest", path: "/a/z/c", want: "/a/{x}/c", wantParams: []string{"x=z"}},
		{name: "rest after param", path: "/a/z/q", want: "/a/{x}/{rest...}", wantParams: []string{"x=z", "rest=q"}},
		{name: "rest with empty remainder", path: "/files/", want: "/files/{path...}", wantParams: []string{"path="}},
		{name: "rest needs the slash", path: "/files", want: ""},
		{name: "rest multi segment", path: "/files/a/b/c.txt", want: "/files/{path...}", wantParams: []string{"path=a/b/c.txt"}},
		{name: "rest keeps trailing slash", path: "/files/a/", want: "/files/{path...}", wantParams: []string{"path=a/"}},
		{name: "rest decodes each segment", path: "/files/a%20b/c%3Fd", want: "/files/{path...}", wantParams: []string{"path=a b/c?d"}},
		{name: "params decoded", path: "/repos/o%20o/r%23x/issues", want: "/repos/{owner}/{repo}/issues",
			wantParams: []string{"owner=o o", "repo=r#x"}},
		{name: "literal first param later", path: "/repos/keyward/k/pulls", want: "/repos/keyward/{repo}/pulls", wantParams: []string{"repo=k"}},
		{name: "backtrack from literal owner", path: "/repos/keyward/k/issues", want: "/repos/{owner}/{repo}/issues",
			wantParams: []string{"owner=keyward", "repo=k"}},
		{name: "backtrack drops params of the failed branch", path: "/deep/q/y", want: "/deep/{b...}", wantParams: []string{"b=q/y"}},
		{name: "param route exact", path: "/deep/q/x", want: "/deep/{a}/x", wantParams: []string{"a=q"}},
		{name: "no trailing slash variant", path: "/a/b/", want: "/a/{x}/{rest...}", wantParams: []string{"x=b", "rest="}},
		{name: "escaped literal matches escaped request", path: "/enc/a%20b", want: "/enc/a%20b"},
		{name: "escaped literal matches unreserved escapes", path: "/enc/%61%20%62", want: "/enc/a%20b"},
		{name: "case sensitive", path: "/A", want: ""},
		{name: "unknown", path: "/nope", want: ""},
		{name: "too long", path: "/repos/o/r/issues/1", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := CheckPath(tt.path); err != nil {
				t.Fatalf("test path %q fails CheckPath: %v", tt.path, err)
			}
			var ps Params
			got, ok := r.Match(tt.path, &ps)
			if tt.want == "" {
				if ok {
					t.Fatalf("Match(%q) = %q, want no match", tt.path, got)
				}
				return
			}
			if !ok || got != tt.want {
				t.Fatalf("Match(%q) = %q, %v; want %q", tt.path, got, ok, tt.want)
			}
			if diff := cmp.Diff(tt.wantParams, params(&ps)); diff != "" {
				t.Errorf("params (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRouterTrailingSlash(t *testing.T) {
	tests := []struct {
		name     string
		patterns []string
		path     string
		want     string
	}{
		{name: "no slash route, slash request", patterns: []string{"/a"}, path: "/a/", want: ""},
		{name: "slash route, no slash request", patterns: []string{"/a/"}, path: "/a", want: ""},
		{name: "param route does not match trailing slash", patterns: []string{"/a/{x}"}, path: "/a/b/", want: ""},
		{name: "param route with trailing slash", patterns: []string{"/a/{x}/"}, path: "/a/b/", want: "/a/{x}/"},
		{name: "param is not empty", patterns: []string{"/a/{x}"}, path: "/a/", want: ""},
		{name: "rest covers the bare slash", patterns: []string{"/a/{r...}"}, path: "/a/", want: "/a/{r...}"},
		{name: "slash route beats rest", patterns: []string{"/a/", "/a/{r...}"}, path: "/a/", want: "/a/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRouter(t, tt.patterns...)
			var ps Params
			got, ok := r.Match(tt.path, &ps)
			if tt.want == "" && ok {
				t.Fatalf("Match(%q) = %q, want no match", tt.path, got)
			}
			if tt.want != "" && got != tt.want {
				t.Fatalf("Match(%q) = %q, %v; want %q", tt.path, got, ok, tt.want)
			}
		})
	}
}

func TestRouterAddConflicts(t *testing.T) {
	tests := []struct {
		name     string
		first    string
		second   string
		conflict bool
	}{
		{name: "same literal", first: "/a", second: "/a", conflict: true},
		{name: "param names differ", first: "/a/{x}", second: "/a/{y}", conflict: true},
		{name: "rest names differ", first: "/f/{p...}", second: "/f/{q...}", conflict: true},
		{name: "escaped literal equals plain", first: "/a b", second: "/a%20b", conflict: true},
		{name: "unreserved escape equals plain", first: "/a", second: "/%61", conflict: true},
		{name: "literal and param", first: "/a/b", second: "/a/{x}"},
		{name: "param and rest", first: "/a/{x}", second: "/a/{x...}"},
		{name: "trailing slash differs", first: "/a", second: "/a/"},
		{name: "slash and rest", first: "/a/", second: "/a/{r...}"},
		{name: "case differs", first: "/a", second: "/A"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Router[string]{}
			first := mustPattern(t, tt.first)
			if c, err := r.Add(first, "first"); err != nil || c != nil {
				t.Fatalf("Add(%q) = %v, %v", tt.first, c, err)
			}
			c, err := r.Add(mustPattern(t, tt.second), "second")
			if !tt.conflict {
				if err != nil || c != nil {
					t.Fatalf("Add(%q) after %q = %v, %v; want no conflict", tt.second, tt.first, c, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Add(%q) after %q: want a conflict error", tt.second, tt.first)
			}
			if c != first {
				t.Errorf("conflict = %v, want the first pattern %q", c, tt.first)
			}
			if !strings.Contains(err.Error(), tt.first) || !strings.Contains(err.Error(), tt.second) {
				t.Errorf("error %q should name both patterns", err)
			}
		})
	}
}

func TestRouterMaxParams(t *testing.T) {
	build := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "/{p%d}", i)
		}
		return b.String()
	}
	r := &Router[int]{}
	max := mustPattern(t, build(MaxParams))
	if _, err := r.Add(max, 1); err != nil {
		t.Fatalf("Add with %d params: %v", MaxParams, err)
	}
	tooMany := mustPattern(t, "/x"+build(MaxParams+1))
	if _, err := r.Add(tooMany, 2); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("Add with %d params: err = %v, want a limit error", MaxParams+1, err)
	}
	var req strings.Builder
	for i := range MaxParams {
		fmt.Fprintf(&req, "/v%d", i)
	}
	var ps Params
	if _, ok := r.Match(req.String(), &ps); !ok {
		t.Fatalf("Match(%q) failed", req.String())
	}
	if ps.Len() != MaxParams {
		t.Fatalf("Len() = %d, want %d", ps.Len(), MaxParams)
	}
	if got := ps.Get(fmt.Sprintf("p%d", MaxParams-1)); got != fmt.Sprintf("v%d", MaxParams-1) {
		t.Errorf("last param = %q", got)
	}
	// One segment longer than any pattern must not index past the array.
	if _, ok := r.Match(req.String()+"/extra", &ps); ok {
		t.Errorf("a longer path matched")
	}
}

func TestParamsGet(t *testing.T) {
	r := newRouter(t, "/{a}/{b}")
	var ps Params
	if _, ok := r.Match("/x/y", &ps); !ok {
		t.Fatal("no match")
	}
	tests := []struct{ name, want string }{{"a", "x"}, {"b", "y"}, {"c", ""}}
	for _, tt := range tests {
		if got := ps.Get(tt.name); got != tt.want {
			t.Errorf("Get(%q) = %q, want %q", tt.name, got, tt.want)
		}
	}
	// A failed match leaves no values behind.
	if _, ok := r.Match("/x", &ps); ok {
		t.Fatal("unexpected match")
	}
	if ps.Len() != 0 || ps.Get("a") != "" {
		t.Errorf("after a failed match: Len() = %d, Get(a) = %q", ps.Len(), ps.Get("a"))
	}
}

func TestPatternPrefixed(t *testing.T) {
	tests := []struct {
		name    string
		prefix  string
		path    string
		req     string
		want    string
		wantErr bool
	}{
		{name: "no prefix", prefix: "", path: "/a/{x}", req: "/a/1", want: "/a/{x}"},
		{name: "root prefix", prefix: "/", path: "/a", req: "/a", want: "/a"},
		{name: "stage prefix", prefix: "/dev", path: "/a/{x}", req: "/dev/a/1", want: "/dev/a/{x}"},
		{name: "prefix trailing slash", prefix: "/dev/", path: "/a", req: "/dev/a", want: "/dev/a"},
		{name: "param in prefix", prefix: "/{s}", path: "/a", wantErr: true},
		{name: "dot dot prefix", prefix: "/../x", path: "/a", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := mustPattern(t, tt.path).Prefixed(tt.prefix)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("Prefixed(%q) = %v, want error", tt.prefix, p)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.String() != tt.want {
				t.Errorf("String() = %q, want %q", p.String(), tt.want)
			}
			r := &Router[bool]{}
			if _, err := r.Add(p, true); err != nil {
				t.Fatal(err)
			}
			var ps Params
			if _, ok := r.Match(tt.req, &ps); !ok {
				t.Errorf("Match(%q) failed", tt.req)
			}
		})
	}
}
