package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type problem struct {
	Line int
	Path string
	Msg  string
}

// problems parses src, which must decode, and returns its problems.
func problems(t *testing.T, src string) (*File, []problem) {
	t.Helper()
	f, err := Parse("k.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	var out []problem
	if len(f.Unknown) == 0 {
		return f, nil
	}
	for _, e := range configErrors(t, errors.Join(f.Unknown...)) {
		out = append(out, problem{e.Line, e.Path, e.Msg})
	}
	return f, out
}

// TestWrongShapes: a value of the wrong shape is reported on its own line
// with the form to write, every one of them at once, and the rest of the
// file still decodes.
func TestWrongShapes(t *testing.T) {
	f, got := problems(t, `secrets:
  github: ghp_0123456789abcdefghij
routes:
  - name: repos
    path: /repos
    methods: GET
    upstream: https://api.github.com/user/repos
    headers:
      set:
        X-Api-Key: {secret.github}
        Authorization: [Bearer]
    cors:
      allow_origins: "*"
    timeout: {a: 1}
    query:
      set: [a]
server:
  max_headers: lots
log:
  access: yes
`)
	want := []problem{
		{2, "secrets.github", "a secret's value is never written in the file (anyone who reads the file, its history or a backup has it): write github: { env: GITHUB_TOKEN } and export GITHUB_TOKEN=..., or github: { file: PATH }"},
		{6, "routes[0].methods", "want a list: methods: [GET]"},
		{10, "routes[0].headers.set.X-Api-Key", `a value that starts with { is read as a YAML mapping: quote it: X-Api-Key: "{secret.github}"`},
		{11, "routes[0].headers.set.Authorization", "want a single value, not a list"},
		{13, "routes[0].cors.allow_origins", `want a list: allow_origins: ["*"]`},
		{14, "routes[0].timeout", `a value that starts with { is read as a YAML mapping: quote the value ("...")`},
		{16, "routes[0].query.set", "want a mapping (name: value lines under it), not a list"},
		{18, "server.max_headers", "want a number"},
		{20, "log.access", "want true or false"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	for _, p := range got {
		if strings.Contains(p.Msg, "ghp_") {
			t.Errorf("a problem repeats the inline secret: %q", p.Msg)
		}
	}
	// The rest decoded: the route, its upstream, the secret's name.
	r := f.Config.Routes[0]
	if r.Name != "repos" || r.Upstream != "https://api.github.com/user/repos" || f.Config.Server.MaxHeaders != 100 {
		t.Errorf("the rest of the file did not decode: %+v", r)
	}
	if _, ok := f.Config.Secrets["github"]; !ok {
		t.Error("the inline secret's name is gone: routes using it would report it unknown")
	}
	for _, path := range []string{"secrets.github", "routes[0].methods", "routes[0].cors.allow_origins", "routes[0].cors.allow_origins[0]"} {
		if !f.Shadowed(path) {
			t.Errorf("Shadowed(%q) = false", path)
		}
	}
	for _, path := range []string{"routes[0].method", "routes[0]", "routes[0].name", "secrets.githubx"} {
		if f.Shadowed(path) {
			t.Errorf("Shadowed(%q) = true", path)
		}
	}
}

func TestSuggestions(t *testing.T) {
	f, got := problems(t, `secrets:
  gh:
    value: x
  gl: { environment: GL_TOKEN }
timeout: 5s
rate: 10/s
routes:
  - name: a
    path: /a
    upstrem: https://x.test/a
    url: https://x.test/b
    allowOrigins: ["https://a.test"]
    Max-Body: 1KB
    store: memory
`)
	want := []problem{
		{3, "secrets.gh.value", "a secret's value is never written in the file: use env: VARIABLE (or file: PATH) and put the value there"},
		{4, "secrets.gl.environment", `unknown field (did you mean "env"?)`},
		{5, "timeout", "unknown field: timeout is a field of each route (indent it under a route in routes:)"},
		{6, "rate", "unknown field: rate is a field of limits: write limits: { rate: ... }"},
		{10, "routes[0].upstrem", `unknown field (did you mean "upstream"?)`},
		{11, "routes[0].url", `unknown field (did you mean "upstream"?)`},
		{12, "routes[0].allowOrigins", "unknown field: allow_origins is a field of cors: write cors: { allow_origins: ... }"},
		{13, "routes[0].Max-Body", `unknown field (did you mean "max_body"?)`},
		{14, "routes[0].store", "unknown field: store belongs at the top level of the file, not in a route"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	// The misspelt field is unset because of the typo: saying so again
	// would be a knock-on error.
	for _, path := range []string{"routes[0].upstream", "secrets.gl.env", "secrets.gl", "secrets.gh", "routes[0].cors"} {
		if !f.Shadowed(path) {
			t.Errorf("Shadowed(%q) = false", path)
		}
	}
}

func TestSyntaxErrorsPointAtTheLineToFix(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []problem
	}{
		{"tabs, every line", "routes:\n\t- name: a\n  \tpath: /a\n", []problem{
			{2, "", "a tab in the indentation: YAML indents with spaces only; replace the tab with spaces"},
			{3, "", "a tab in the indentation: YAML indents with spaces only; replace the tab with spaces"},
		}},
		{"indented less", "routes:\n  - name: a\n    path: /a\n   upstream: x\n", []problem{
			{4, "", `this line's indentation (3 spaces) does not line up with "path:" on line 3 (4 spaces): keys of one mapping start in the same column`},
		}},
		{"indented more", "routes:\n  - name: a\n    path: /a\n      upstream: x\n", []problem{
			{4, "", `this line is indented more than "path:" on line 3: keys of one mapping start in the same column (4 spaces)`},
		}},
		{"unclosed quote", "routes:\n  - name: a\n    path: \"/a\n    upstream: \"x\"\n", []problem{
			{3, "", `the quote opened here is not closed: end the value with "`},
		}},
		{"unclosed brace", "routes:\n  - name: a\n    headers: {set: {A: b}\n    upstream: x\n", []problem{
			{3, "", "the { opened here is not closed on this line: close it with }, or quote the value if it is text"},
		}},
		{"placeholder with a suffix", "routes:\n  - name: a\n    upstream: {stage.api}/x\n", []problem{
			{3, "", `a value that starts with { is read as a YAML mapping: quote it: upstream: "{stage.api}/x"`},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("k.yaml", []byte(tt.src))
			if err == nil {
				t.Fatal("Parse accepted it")
			}
			var got []problem
			for _, e := range configErrors(t, err) {
				got = append(got, problem{e.Line, e.Path, e.Msg})
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
		})
	}
}

func TestByteOrderMarkIsIgnored(t *testing.T) {
	f, got := problems(t, "\xef\xbb\xbfroutes:\n  - name: a\n")
	if len(got) != 0 || len(f.Config.Routes) != 1 {
		t.Errorf("problems %v, routes %v", got, f.Config.Routes)
	}
}

func TestCloudConsoleHabits(t *testing.T) {
	f, got := problems(t, `secrets:
  gh: { env: GITHUB_TOKEN }
stages:
  dev: { prefix: /dev, vars: { key: "${DEV_KEY}" } }
cors:
  allow_origins: ["'*'", "*.example.com", "localhost:5173", "https://ok.example.com"]
routes:
  - name: a
    path: /a/{proxy+}
    upstream: "https://${API_HOST}/x/{proxy...}"
    headers:
      set:
        Authorization: "Bearer ${GITHUB_TOKEN}"
        X-Key: "{env.MAPS_KEY}"
        X-Dev: "{stage.key}"
  - name: b
    path: /b/*
    upstream: https://api.example.com/b
log:
  format: pretty
`)
	want := []problem{
		{4, "stages.dev.vars.key", "keyward does not expand ${DEV_KEY}: write the value itself (stage variables are plain text in the file), or, for a credential, stages: { dev: { secrets: { dev_key: { env: DEV_KEY } } } } and {secret.dev_key} where it is used"},
		{6, "cors.allow_origins[0]", `'*': the quotes are part of the value here; did you mean "*"?`},
		{6, "cors.allow_origins[1]", `"*.example.com" is not an origin: an origin has a scheme; did you mean "https://*.example.com"?`},
		{6, "cors.allow_origins[2]", `"localhost:5173" is not an origin: an origin has a scheme; did you mean "http://localhost:5173"?`},
		{9, "routes[0].path", `"/a/{proxy+}": keyward writes a greedy parameter as {name...} at the end of the path (the cloud console's {proxy+}): path: "/a/{proxy...}"`},
		{10, "routes[0].upstream", `keyward does not expand ${API_HOST}: the scheme and host come from a stage variable: stages: { prod: { prefix: /prod, vars: { api_host: "https://..." } } } and write {stage.api_host}`},
		{13, "routes[0].headers.set.Authorization", "keyward does not expand ${GITHUB_TOKEN}: write {secret.gh} (secrets.gh reads GITHUB_TOKEN)"},
		{14, "routes[0].headers.set.X-Key", "keyward does not expand {env.MAPS_KEY}: declare it as a secret, secrets: { maps_key: { env: MAPS_KEY } }, and write {secret.maps_key}"},
		{17, "routes[1].path", `"/b/*": keyward writes a greedy parameter as {name...} at the end of the path (the cloud console's {proxy+}): path: "/b/{rest...}"`},
		{20, "log.format", `"pretty": want text or json`},
	}
	// Unknown is in the order found, not by line; compile sorts.
	sortProblems(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	// The route that uses the broken stage variable would fail on it too.
	if !f.Shadowed("routes[0].headers") {
		t.Error("routes[0].headers (uses {stage.key}) is not shadowed")
	}
	if v := f.Config.Routes[0].Headers.Set["Authorization"]; v != "Bearer " {
		t.Errorf("the reference is still in the value: %q", v)
	}
}

func sortProblems(ps []problem) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && (ps[j].Line < ps[j-1].Line || ps[j].Line == ps[j-1].Line && ps[j].Path < ps[j-1].Path); j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// TestOriginsThatAreFine: nothing is said about origins browsers send.
func TestOriginsThatAreFine(t *testing.T) {
	_, got := problems(t, `cors:
  allow_origins: ["*", "https://*.example.com", "http://localhost:5173"]
routes: []
`)
	if len(got) != 0 {
		t.Errorf("problems: %v", got)
	}
}
