package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const sample = `listen: ":9000"
secrets:
  github: { env: GITHUB_TOKEN }
cors:
  allow_origins: ["https://app.example.com"]
routes:
  - name: my-repos
    path: /my-repos
    upstream: "https://api.github.com/user/repos"
    headers:
      set:
        Authorization: "Bearer {secret.github}"
  - name: issues
    path: /repos/{owner}/{repo}/issues
    methods: [GET, POST]
    params: { owner: "[a-z]+" }
    upstream: "https://api.github.com/repos/{owner}/{repo}/issues"
    timeout: 5s
    max_body: 64KB
`

func mustParse(t *testing.T, src string) *File {
	t.Helper()
	f, err := Parse("keyward.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return f
}

func TestParseDefaults(t *testing.T) {
	f := mustParse(t, sample)
	c := f.Config
	on, wide := true, 48
	want := Config{
		Listen:   ":9000",
		ClientIP: ClientIP{IPv6WidePrefix: &wide},
		Server: Server{ReadHeaderTimeout: "10s", IdleTimeout: "120s", MaxHeaderBytes: 64 << 10, ShutdownTimeout: "30s",
			ReadBodyTimeout: "60s", WriteTimeout: "30s", MaxBufferedBytes: "64MiB", MaxConnections: 10000, MaxHeaders: 100, Engine: "keyward"},
		Log: Log{Access: &on},
		Secrets: map[string]SecretSource{
			"github": {Env: "GITHUB_TOKEN"},
		},
		CORS: &CORS{AllowOrigins: []string{"https://app.example.com"}},
		Routes: []Route{
			{
				Name: "my-repos", Path: "/my-repos", Methods: []string{"GET"},
				Upstream: "https://api.github.com/user/repos",
				Headers:  Headers{Set: map[string]string{"Authorization": "Bearer {secret.github}"}},
				Timeout:  "30s", IdleTimeout: "2m", MaxBody: "1MiB",
			},
			{
				Name: "issues", Path: "/repos/{owner}/{repo}/issues", Methods: []string{"GET", "POST"},
				Params:   map[string]string{"owner": "[a-z]+"},
				Upstream: "https://api.github.com/repos/{owner}/{repo}/issues",
				Timeout:  "5s", IdleTimeout: "2m", MaxBody: "64KB",
			},
		},
	}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("Config (-want +got):\n%s", diff)
	}
	if f.Name != "keyward.yaml" {
		t.Errorf("Name = %q", f.Name)
	}
	if len(f.Unknown) != 0 {
		t.Errorf("Unknown = %v, want none", f.Unknown)
	}
}

// configErrors flattens a Parse error into its *Error values.
func configErrors(t *testing.T, err error) []*Error {
	t.Helper()
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var ce *Error
		if !errors.As(err, &ce) {
			t.Fatalf("error %v (%T) is not a *config.Error", err, err)
		}
		out = append(out, ce)
	}
	walk(err)
	return out
}

func TestUnknownFields(t *testing.T) {
	src := `listen: ":8080"
lisen: ":9090"
secrets:
  gh: { env: X, enviroment: Y }
cors:
  allow_origin: ["https://a.test"]
stages:
  dev: { prefix: /dev, varz: {} }
routes:
  - name: a
    path: /a
    upstream: https://h.test/a
    methdos: [GET]
    headers:
      set: { X-A: "1" }
      sett: { X-B: "2" }
    query:
      alow: [page]
  - name: b
    path: /b
    upstream: https://h.test/b
    cors:
      max_agee: 10m
    zzzzzzzz: 1
`
	// Unknown fields do not stop decoding: they are collected in
	// File.Unknown so that check reports them with every other problem.
	f, err := Parse("keyward.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(f.Unknown) == 0 {
		t.Fatal("no unknown fields reported")
	}
	err = errors.Join(f.Unknown...)
	type problem struct {
		Line int
		Path string
		Msg  string
	}
	var got []problem
	for _, e := range configErrors(t, err) {
		if e.File != "keyward.yaml" {
			t.Errorf("File = %q", e.File)
		}
		msg := e.Msg
		// With no close match, every known field is listed; Route grows,
		// so check only that the list is sorted and names the basics.
		if list, ok := strings.CutPrefix(msg, "unknown field (known: "); ok && strings.HasPrefix(e.Path, "routes[") {
			names := strings.Split(strings.TrimSuffix(list, ")"), ", ")
			if !slices.IsSorted(names) || !slices.Contains(names, "upstream") || !slices.Contains(names, "path") {
				t.Errorf("known fields %q: want a sorted list naming path and upstream", list)
			}
			msg = "unknown field (known: ...)"
		}
		got = append(got, problem{e.Line, e.Path, msg})
	}
	want := []problem{
		{2, "lisen", `unknown field (did you mean "listen"?)`},
		{4, "secrets.gh.enviroment", "unknown field (known: env, file)"},
		{6, "cors.allow_origin", `unknown field (did you mean "allow_origins"?)`},
		{8, "stages.dev.varz", `unknown field (did you mean "vars"?)`},
		{13, "routes[0].methdos", `unknown field (did you mean "methods"?)`},
		{16, "routes[0].headers.sett", `unknown field (did you mean "set"?)`},
		{18, "routes[0].query.alow", `unknown field (did you mean "allow"?)`},
		{23, "routes[1].cors.max_agee", `unknown field (did you mean "max_age"?)`},
		{24, "routes[1].zzzzzzzz", "unknown field (known: ...)"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	// The formatted form is what editors jump to.
	if msg := err.Error(); !strings.Contains(msg, `keyward.yaml:2: lisen: unknown field (did you mean "listen"?)`) {
		t.Errorf("Error() = %q", msg)
	}
}

func TestUnknownFieldCaseSuggestion(t *testing.T) {
	f, err := Parse("k.yaml", []byte("Listen: x\nroutes: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	errs := configErrors(t, errors.Join(f.Unknown...))
	if len(errs) != 1 || errs[0].Path != "Listen" || !strings.Contains(errs[0].Msg, `"listen"`) {
		t.Errorf("errors = %v, want one suggesting listen", errs)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name     string
		src      string
		wantLine int
		wantMsg  string
	}{
		{name: "empty", src: "", wantLine: 1, wantMsg: "empty config"},
		{name: "only comments", src: "# nothing\n", wantLine: 1, wantMsg: "empty config"},
		{name: "two documents", src: "listen: a\n---\nlisten: b\n", wantLine: 3, wantMsg: "more than one YAML document"},
		{name: "syntax error", src: "listen: a\nroutes:\n  - name: [\n", wantMsg: ""},
		// Regression: go-yaml panicked (nil dereference) decoding a tag on
		// an empty value into a slice; found by FuzzParse.
		{name: "tag on empty list", src: "routes: !x\n", wantMsg: "cannot decode"},
		{name: "tag on empty nested list", src: "cors:\n  allow_origins: !00\n", wantMsg: "cannot decode"},
		{name: "tag on empty list in a route", src: "routes:\n  - methods: !x\n", wantMsg: "cannot decode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("k.yaml", []byte(tt.src))
			if err == nil {
				t.Fatal("Parse accepted it")
			}
			errs := configErrors(t, err)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1: %v", len(errs), err)
			}
			e := errs[0]
			if tt.wantLine != 0 && e.Line != tt.wantLine {
				t.Errorf("Line = %d, want %d (%v)", e.Line, tt.wantLine, e)
			}
			if e.Line < 0 {
				t.Errorf("Line = %d", e.Line)
			}
			if !strings.Contains(e.Msg, tt.wantMsg) {
				t.Errorf("Msg = %q, want it to contain %q", e.Msg, tt.wantMsg)
			}
			if !strings.HasPrefix(e.Error(), "k.yaml") {
				t.Errorf("Error() = %q, want it to start with the file name", e.Error())
			}
		})
	}
}

func TestLine(t *testing.T) {
	f := mustParse(t, sample)
	tests := []struct {
		path string
		want int
	}{
		{"", 1},
		{"listen", 1},
		{"secrets", 2},
		{"secrets.github", 3},
		{"secrets.github.env", 3},
		{"cors.allow_origins", 5},
		{"routes", 6},
		{"routes[0]", 7},
		{"routes[0].name", 7},
		{"routes[0].upstream", 9},
		{"routes[0].headers.set.Authorization", 12},
		{"routes[1]", 13},
		{"routes[1].methods", 15},
		{"routes[1].methods[1]", 15},
		{"routes[1].params.owner", 16},
		{"routes[1].max_body", 19},
		// Missing nodes point at the closest parent that exists.
		{"routes[0].methods", 7},
		{"routes[0].headers.set.X-Missing", 11},
		{"routes[5].name", 6},
		{"stages.dev", 1},
		{"routes[x]", 6},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			if got := f.Line(tt.path); got != tt.want {
				t.Errorf("Line(%q) = %d, want %d", tt.path, got, tt.want)
			}
		})
	}
}

func TestErrorf(t *testing.T) {
	f := mustParse(t, sample)
	e := f.Errorf("routes[1].methods", "unsupported method %q", "BREW")
	want := &Error{File: "keyward.yaml", Line: 15, Path: "routes[1].methods", Msg: `unsupported method "BREW"`}
	if diff := cmp.Diff(want, e); diff != "" {
		t.Errorf("Errorf (-want +got):\n%s", diff)
	}
	if got := e.Error(); got != `keyward.yaml:15: routes[1].methods: unsupported method "BREW"` {
		t.Errorf("Error() = %q", got)
	}
}

func TestErrorFormat(t *testing.T) {
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "k.yaml", Line: 3, Path: "listen", Msg: "bad"}, "k.yaml:3: listen: bad"},
		{Error{File: "k.yaml", Path: "listen", Msg: "bad"}, "k.yaml: listen: bad"},
		{Error{File: "k.yaml", Line: 1, Msg: "bad"}, "k.yaml:1: bad"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{in: "0", want: 0},
		{in: "512", want: 512},
		{in: "512B", want: 512},
		{in: "64KB", want: 64 << 10},
		{in: "64KiB", want: 64 << 10},
		{in: "1MiB", want: 1 << 20},
		{in: "10MB", want: 10 << 20},
		{in: "2GiB", want: 2 << 30},
		{in: "1GB", want: 1 << 30},
		{in: " 1 MiB ", want: 1 << 20},
		{in: "", wantErr: true},
		{in: "MiB", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "-1KB", wantErr: true},
		{in: "1.5MB", wantErr: true},
		{in: "1mb", wantErr: true},
		{in: "1 TB", wantErr: true},
		{in: "ten", wantErr: true},
		{in: "0x10", wantErr: true},
		{in: "99999999999999999999", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseSize(%q) = %d, want an error", tt.in, got)
				}
				if !strings.Contains(err.Error(), "bad size") {
					t.Errorf("error %q", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{in: "30s", want: 30 * time.Second},
		{in: "10m", want: 10 * time.Minute},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "250ms", want: 250 * time.Millisecond},
		{in: " 5s ", want: 5 * time.Second},
		{in: "", wantErr: true},
		{in: "0", wantErr: true},
		{in: "0s", wantErr: true},
		{in: "-1s", wantErr: true},
		{in: "30", wantErr: true},
		{in: "1d", wantErr: true},
		{in: "soon", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseDuration(%q) = %v, want an error", tt.in, got)
				}
				if !strings.Contains(err.Error(), "bad duration") {
					t.Errorf("error %q", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestHas(t *testing.T) {
	f := mustParse(t, sample)
	for path, want := range map[string]bool{
		"listen": true, "routes[1].methods": true, "routes[0].methods": false, "admin.listen": false, "store": false, "": true,
	} {
		if got := f.Has(path); got != want {
			t.Errorf("Has(%q) = %v, want %v", path, got, want)
		}
	}
}
