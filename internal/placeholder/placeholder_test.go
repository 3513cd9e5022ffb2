package placeholder

import (
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/secret"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []Part
		wantErr string
	}{
		{name: "empty", in: "", want: nil},
		{name: "literal", in: "Bearer x", want: []Part{{Literal, "Bearer x"}}},
		{name: "param", in: "{owner}", want: []Part{{Param, "owner"}}},
		{name: "secret", in: "Bearer {secret.github}", want: []Part{{Literal, "Bearer "}, {Secret, "github"}}},
		{name: "stage", in: "{stage.api}/x", want: []Part{{Stage, "api"}, {Literal, "/x"}}},
		{name: "mixed", in: "/repos/{owner}/{repo}?k={secret.k}", want: []Part{
			{Literal, "/repos/"}, {Param, "owner"}, {Literal, "/"}, {Param, "repo"}, {Literal, "?k="}, {Secret, "k"},
		}},
		{name: "adjacent", in: "{a}{b}", want: []Part{{Param, "a"}, {Param, "b"}}},
		{name: "names with digits, dash, underscore", in: "{_a-1}{secret.KEY_2}", want: []Part{{Param, "_a-1"}, {Secret, "KEY_2"}}},

		{name: "unclosed", in: "Bearer {secret.x", wantErr: "unclosed"},
		{name: "unmatched close", in: "a}b", wantErr: "unmatched"},
		{name: "empty braces", in: "{}", wantErr: "bad placeholder"},
		{name: "nested", in: "{a{b}}", wantErr: "bad placeholder"},
		{name: "unknown namespace", in: "{env.HOME}", wantErr: "bad placeholder"},
		{name: "empty secret name", in: "{secret.}", wantErr: "bad placeholder"},
		{name: "secret with dot", in: "{secret.a.b}", wantErr: "bad placeholder"},
		{name: "space in name", in: "{a b}", wantErr: "bad placeholder"},
		{name: "digit first", in: "{1a}", wantErr: "bad placeholder"},
		{name: "rest syntax", in: "{path...}", wantErr: "bad placeholder"},
		{name: "json literal", in: `{"a":1}`, wantErr: "bad placeholder"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Parse(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"a", true}, {"_", true}, {"A9", true}, {"a-b_c", true},
		{"", false}, {"9a", false}, {"-a", false}, {"a.b", false}, {"a b", false}, {"é", false}, {"a/b", false},
	}
	for _, tt := range tests {
		if got := ValidName(tt.in); got != tt.want {
			t.Errorf("ValidName(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func testResolver() Resolver {
	return Resolver{
		Stage: func(n string) (string, bool) {
			v, ok := map[string]string{"api": "https://api.example.com", "ver": "v2"}[n]
			return v, ok
		},
		Secret: func(n string) (secret.Value, bool) {
			if n == "tok" {
				return secret.New("tok", "s3cr3t/val?ue"), true
			}
			return secret.Value{}, false
		},
		Param: func(n string) bool { return n == "owner" || n == "repo" },
	}
}

func TestCompileAndExpand(t *testing.T) {
	params := map[string]string{"owner": "a b", "repo": "x/y"}
	get := func(n string) string { return params[n] }
	tests := []struct {
		name        string
		in          string
		r           Resolver
		escape      func(string) string
		want        string
		wantStatic  bool
		wantSecrets []string
		wantErr     string
	}{
		{name: "literal", in: "application/json", r: testResolver(), want: "application/json", wantStatic: true},
		{name: "stage resolved at compile", in: "{stage.api}/{stage.ver}", r: testResolver(), want: "https://api.example.com/v2", wantStatic: true},
		{name: "secret", in: "Bearer {secret.tok}", r: testResolver(), want: "Bearer s3cr3t/val?ue", wantStatic: true, wantSecrets: []string{"tok"}},
		{name: "secret escaped", in: "k={secret.tok}", r: testResolver(), escape: url.QueryEscape, want: "k=s3cr3t%2Fval%3Fue",
			wantStatic: true, wantSecrets: []string{"tok"}},
		{name: "params", in: "/{owner}/{repo}", r: testResolver(), want: "/a b/x/y"},
		{name: "params escaped, literals not", in: "/r/{owner}/{repo}", r: testResolver(), escape: url.PathEscape, want: "/r/a%20b/x%2Fy"},
		{name: "all kinds", in: "{stage.ver}:{owner}:{secret.tok}", r: testResolver(), want: "v2:a b:s3cr3t/val?ue", wantSecrets: []string{"tok"}},
		{name: "secret used twice", in: "{secret.tok}{secret.tok}", r: testResolver(), want: "s3cr3t/val?ues3cr3t/val?ue",
			wantStatic: true, wantSecrets: []string{"tok", "tok"}},

		{name: "unknown stage var", in: "{stage.nope}", r: testResolver(), wantErr: "unknown stage variable {stage.nope}"},
		{name: "unknown secret", in: "{secret.nope}", r: testResolver(), wantErr: "unknown secret {secret.nope}"},
		{name: "unknown param", in: "{nope}", r: testResolver(), wantErr: "unknown path parameter {nope}"},
		{name: "stage not allowed", in: "{stage.api}", r: Resolver{}, wantErr: "not allowed here"},
		{name: "secret not allowed", in: "{secret.tok}", r: Resolver{}, wantErr: "not allowed here"},
		{name: "param not allowed", in: "{owner}", r: Resolver{}, wantErr: "not allowed here"},
		{name: "syntax error", in: "{owner", r: testResolver(), wantErr: "unclosed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tpl, err := Compile(tt.in, tt.r)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Compile(%q) error = %v, want %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Compile(%q): %v", tt.in, err)
			}
			if got := string(tpl.Expand(nil, get, tt.escape)); got != tt.want {
				t.Errorf("Expand = %q, want %q", got, tt.want)
			}
			if got := tpl.Static(); got != tt.wantStatic {
				t.Errorf("Static() = %v, want %v", got, tt.wantStatic)
			}
			if got := tpl.HasSecret(); got != (len(tt.wantSecrets) > 0) {
				t.Errorf("HasSecret() = %v", got)
			}
			if diff := cmp.Diff(tt.wantSecrets, tpl.Secrets()); diff != "" {
				t.Errorf("Secrets() (-want +got):\n%s", diff)
			}
			if tpl.String() != tt.in {
				t.Errorf("String() = %q, want the source %q", tpl.String(), tt.in)
			}
		})
	}
}

func TestExpandAppends(t *testing.T) {
	tpl, err := Compile("-{owner}", testResolver())
	if err != nil {
		t.Fatal(err)
	}
	got := tpl.Expand([]byte("pre"), func(string) string { return "x" }, nil)
	if string(got) != "pre-x" {
		t.Errorf("Expand = %q, want %q", got, "pre-x")
	}
}

// TestTemplateNeverPrintsSecret: a compiled template may be logged or
// shown by `keyward test`; every way of printing it shows the source.
func TestTemplateNeverPrintsSecret(t *testing.T) {
	tpl, err := Compile("Bearer {secret.tok}", testResolver())
	if err != nil {
		t.Fatal(err)
	}
	verbs := []string{"%v", "%+v", "%s", "%q", "%x", "%#v"}
	for _, verb := range verbs {
		for _, v := range []any{tpl, &tpl} {
			if got := fmt.Sprintf(verb, v); strings.Contains(got, "s3cr3t") || strings.Contains(got, fmt.Sprintf("%x", "s3cr3t")) {
				t.Errorf("Sprintf(%q, %T) = %q leaks the secret", verb, v, got)
			}
		}
	}
}

func TestCallerPlaceholders(t *testing.T) {
	allowed := Resolver{Caller: func(string) error { return nil }}
	tpl, err := Compile("user-{caller.kind}:{caller.id}/{caller.claim.org_id}", allowed)
	if err != nil {
		t.Fatal(err)
	}
	if tpl.Static() || !tpl.UsesCaller() {
		t.Errorf("a caller template is static or does not use the caller")
	}
	if got := tpl.CallerClaims(); len(got) != 1 || got[0] != "org_id" {
		t.Errorf("CallerClaims = %q", got)
	}
	got := string(tpl.Expand(nil, func(name string) string { return "<" + name + ">" }, nil))
	if want := "user-<caller.kind>:<caller.id>/<caller.claim.org_id>"; got != want {
		t.Errorf("Expand = %q, want %q", got, want)
	}
	for _, bad := range []string{"{caller}", "{caller.name}", "{caller.claim.}", "{caller.claim.a.b}"} {
		if _, err := Compile(bad, allowed); err == nil {
			t.Errorf("%s compiled", bad)
		}
	}
	if _, err := Compile("{caller.id}", Resolver{}); err == nil || !strings.Contains(err.Error(), "not allowed here") {
		t.Errorf("caller outside headers/query: %v", err)
	}
}
