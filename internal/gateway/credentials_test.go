package gateway

import (
	"github.com/google/go-cmp/cmp"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/config"
)

func TestLooksSecret(t *testing.T) {
	for _, s := range []string{
		"ghp_abcdefghijklmnop", "abc123def456", "dXNlcjpwYXNzd29yZA", "AIzaSyA-1234567890abcdef",
		"sk-proj-abc", "correcthorsebatterystaple", "0123456789",
	} {
		if !looksSecret(s) {
			t.Errorf("looksSecret(%q) = false", s)
		}
	}
	for _, s := range []string{
		"", "1", "true", "json", "v2", "anonymous", "created_at", "readonly", "public",
		"https://docs.example.com/auth?token=abc123", "application/json", "2024",
	} {
		if looksSecret(s) {
			t.Errorf("looksSecret(%q) = true", s)
		}
	}
}

// compileErrs compiles src (which must parse) with env as the
// environment and returns the errors' texts and the warnings' texts.
func compileErrs(t *testing.T, src string, env map[string]string) (errs, warns []string) {
	t.Helper()
	f, err := config.Parse("k.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	_, ws, err := Compile(f, Options{Getenv: func(k string) string { return env[k] }})
	for _, w := range ws {
		warns = append(warns, w.Error())
	}
	if err != nil {
		for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
			errs = append(errs, e.Error())
		}
	}
	return errs, warns
}

// TestLiteralCredentialsAreRefused: a credential written in the file is
// refused where it would be sent, with the secrets: form to write, in the
// user's own names; the value itself is never repeated.
func TestLiteralCredentialsAreRefused(t *testing.T) {
	const token = "ghp_0123456789abcdefXYZ"
	for name, tc := range map[string]struct{ yaml, want string }{
		"in the upstream URL": {`
routes:
  - name: repos
    path: /repos
    upstream: "https://api.github.com/user/repos?per_page=5&access_token=` + token + `"
`, `k.yaml:5: routes[0].upstream: "access_token" is a credential written in the upstream URL: keyward test and routes would print it, and a response that echoes it would not be scrubbed; remove it from the URL and keep it in a secret: secrets: { github: { env: GITHUB_TOKEN } } and, on the route, query: { set: { access_token: "{secret.github}" } }`},
		"in query.set": {`
routes:
  - name: geo
    path: /geo
    upstream: "https://maps.googleapis.com/maps/api/geocode/json"
    query: { set: { key: "AbCdEfGh12345678" } }
`, `k.yaml:6: routes[0].query.set.key: a credential written in the file: keyward test and routes would print it, and a response that echoes it would not be scrubbed; keep it in a secret: secrets: { googleapis: { env: GOOGLEAPIS_KEY } } and, on the route, query: { set: { key: "{secret.googleapis}" } }`},
		"a bearer token": {`
routes:
  - name: repos
    path: /repos
    upstream: "https://api.github.com/user/repos"
    headers:
      set:
        Authorization: "Bearer ` + token + `"
`, `k.yaml:8: routes[0].headers.set.Authorization: a credential written in the file: keyward test and routes would print it, and a response that echoes it would not be scrubbed; keep it in a secret: secrets: { github: { env: GITHUB_TOKEN } } and, on the route, headers: { set: { Authorization: "Bearer {secret.github}" } }`},
		"an API key header": {`
routes:
  - name: weather
    path: /weather
    upstream: "https://api.weather.example/v1"
    headers: { set: { X-Api-Key: "a1b2c3d4e5f6" } }
`, `routes[0].headers.set.X-Api-Key: a credential written in the file`},
		"a known token format under any name": {`
routes:
  - name: repos
    path: /repos
    upstream: "https://api.github.com/user/repos"
    headers: { set: { X-Whatever: "` + token + `" } }
`, `routes[0].headers.set.X-Whatever: a credential written in the file`},
		"through a stage variable": {`
stages:
  dev: { prefix: /dev, vars: { key: "a1b2c3d4e5f6" } }
routes:
  - name: weather
    path: /weather
    upstream: "https://api.weather.example/v1"
    headers: { set: { X-Api-Key: "{stage.key}" } }
`, `k.yaml:8: routes[0].headers.set.X-Api-Key: {stage.key} puts a value written in the file (stages.dev.vars.key) into a credential, where it is neither masked nor scrubbed; give each stage its own secret instead: secrets: { weather: { env: WEATHER_KEY } }, stages: { dev: { secrets: { weather: { env: WEATHER_KEY_DEV } } } }, and headers: { set: { X-Api-Key: "{secret.weather}" } }`},
		"a stage variable in the URL's query": {`
stages:
  dev: { prefix: /dev, vars: { key: "a1b2c3d4e5f6" } }
routes:
  - name: weather
    path: /weather
    upstream: "https://api.weather.example/v1?appkey={stage.key}"
`, `routes[0].upstream: {stage.key} puts a value written in the file (stages.dev.vars.key) into a credential`},
	} {
		t.Run(name, func(t *testing.T) {
			errs, _ := compileErrs(t, tc.yaml, nil)
			if len(errs) != 1 || !strings.Contains(errs[0], tc.want) {
				t.Fatalf("errors:\n%s\nwant one containing:\n%s", strings.Join(errs, "\n"), tc.want)
			}
			for _, secret := range []string{token, "AbCdEfGh12345678", "a1b2c3d4e5f6"} {
				if strings.Contains(errs[0], secret) {
					t.Errorf("the error repeats the credential: %s", errs[0])
				}
			}
		})
	}
}

// TestValuesThatAreNotCredentials: what is obviously not a secret passes.
func TestValuesThatAreNotCredentials(t *testing.T) {
	errs, warns := compileErrs(t, `
secrets:
  gh: { env: GITHUB_TOKEN }
  maps: { env: MAPS_KEY }
stages:
  dev: { prefix: /dev, vars: { api: "https://api.example.com", env: development2 } }
cors: { allow_origins: ["https://app.example.com"] }
routes:
  - name: a
    path: /a
    upstream: "{stage.api}/a?api-version=2024-01-01&format=json&key={secret.maps}"
    query: { set: { token: "true", sort_key: created_at, page_token: "1", format: json } }
    headers:
      set:
        Authorization: "Bearer {secret.gh}"
        Accept: application/json
        X-Doc: "https://docs.example.com/auth?token=abc123"
        X-Env: "{stage.env}"
        X-Auth-Token: ""
`, map[string]string{"GITHUB_TOKEN": "gh-token-value", "MAPS_KEY": "maps-key-value"})
	if len(errs) != 0 || len(warns) != 0 {
		t.Errorf("errors %v\nwarnings %v", errs, warns)
	}
}

// TestUpstreamQueryPlaceholder: ?key={secret.maps} in the upstream URL
// is query.set: the secret is added, and a client's own key (in any
// spelling) never reaches the upstream.
func TestUpstreamQueryPlaceholder(t *testing.T) {
	g := mustCompile(t, `
secrets:
  maps: { env: MAPS_KEY }
routes:
  - name: geo
    path: /geo/{rest...}
    upstream: "https://maps.example.com/api/{rest...}?format=json&key={secret.maps}"
    query: { allow: [address] }
`, map[string]string{"MAPS_KEY": "maps-secret-value"})
	r := g.Routes()[0]
	if r.Upstream != "https://maps.example.com/api/{rest}?format=json" {
		t.Errorf("upstream shown as %q", r.Upstream)
	}
	ep := r.ep
	q, _, err := ep.outboundQuery("address=x&KEY=mine&key=mine", nil)
	if err != nil {
		t.Fatal(err)
	}
	if q != "format=json&address=x&key=maps-secret-value" {
		t.Errorf("upstream query %q", q)
	}

	errs, _ := compileErrs(t, `
secrets:
  maps: { env: MAPS_KEY }
routes:
  - name: geo
    path: /geo
    upstream: "https://maps.example.com/api?key={secret.maps}&sig={secret.nope}"
    query: { set: { KEY: "{secret.maps}" } }
`, map[string]string{"MAPS_KEY": "maps-secret-value"})
	want := []string{
		"k.yaml:7: routes[0].upstream: query parameter key is set both in the upstream URL and in query.set; keep one",
		"k.yaml:7: routes[0].upstream: query parameter sig: unknown secret {secret.nope}",
	}
	if strings.Join(errs, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(errs, "\n"), strings.Join(want, "\n"))
	}
}

func mustCompile(t *testing.T, src string, env map[string]string) *Gateway {
	t.Helper()
	f, err := config.Parse("k.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	g, _, err := Compile(f, Options{Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestStageSecrets: a stage's own secret replaces the top-level one on
// that stage's routes, every stage's value is scrubbed, and a stage whose
// secret failed to load does not fall back to the other's.
func TestStageSecrets(t *testing.T) {
	const cfg = `
secrets:
  gh: { env: GITHUB_TOKEN }
stages:
  dev: { prefix: /dev, secrets: { gh: { env: GITHUB_TOKEN_DEV } } }
  prod: { prefix: /prod }
routes:
  - name: repos
    path: /repos
    upstream: "https://api.github.com/user/repos"
    headers: { set: { Authorization: "Bearer {secret.gh}" } }
`
	env := map[string]string{"GITHUB_TOKEN": "prod-token-value", "GITHUB_TOKEN_DEV": "dev-token-value"}
	g := mustCompile(t, cfg, env)
	sent := map[string]string{}
	for _, r := range g.Routes() {
		for _, h := range r.ep.headerSet {
			if h.name == "Authorization" {
				sent[r.Stage] = string(h.value.Expand(nil, nil, nil))
			}
		}
	}
	if sent["dev"] != "Bearer dev-token-value" || sent["prod"] != "Bearer prod-token-value" {
		t.Errorf("sent %v", sent)
	}
	if got := g.Mask("dev-token-value prod-token-value"); got != "[secret:gh] [secret:gh]" {
		t.Errorf("Mask = %q: every stage's value must be scrubbed", got)
	}

	delete(env, "GITHUB_TOKEN_DEV")
	errs, _ := compileErrs(t, cfg, env)
	if len(errs) != 1 || !strings.Contains(errs[0], "stages.dev.secrets.gh: environment variable GITHUB_TOKEN_DEV is unset or empty") {
		t.Errorf("errors %v", errs)
	}
}

func TestWarnings(t *testing.T) {
	_, warns := compileErrs(t, `
secrets:
  pin: { env: PIN }
cors: { allow_origins: ["https://app.example.com"] }
routes:
  - name: a
    path: /a
    methods: [POST]
    upstream: "https://api.example.com/a"
    headers: { set: { X-Pin: "{secret.pin}" } }
    cache: { ttl: 60s }
    limits: { rate: 10/m }
`, map[string]string{"PIN": "123"})
	want := []string{
		"k.yaml:3: secrets.pin: the value is shorter than 4 bytes: keyward test does not mask it and responses are not scrubbed of it (it would match ordinary text); is it the whole credential?",
		"k.yaml:11: routes[0].cache: only GET is cached, and the route allows POST: the cache block does nothing here; remove it, or add GET to methods",
	}
	if strings.Join(warns, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(warns, "\n"), strings.Join(want, "\n"))
	}
}

// TestEveryProblemOnceWithoutKnockOns: a route's other problems are still
// reported after a path error, and a problem decoding reported is not
// reported again in other words.
func TestEveryProblemOnceWithoutKnockOns(t *testing.T) {
	errs, _ := compileErrs(t, `
routes:
  - name: no-path
    upstream: "https://api.example.com/{id}"
    timeout: 5 seconds
  - name: typo
    path: /typo
    upstrem: "https://api.example.com/typo"
  - name: console
    path: /c/{proxy+}
    upstream: "https://api.example.com/{proxy}"
    params: { proxy: "[a-z" }
`, nil)
	want := []string{
		"k.yaml:3: routes[0].path: path is required: the public path clients call, e.g. path: /no-path",
		"k.yaml:5: routes[0].timeout: bad duration \"5 seconds\": want a positive duration like 30s or 10m",
		"k.yaml:8: routes[1].upstrem: unknown field (did you mean \"upstream\"?)",
		"k.yaml:10: routes[2].path: \"/c/{proxy+}\": keyward writes a greedy parameter as {name...} at the end of the path (the cloud console's {proxy+}): path: \"/c/{proxy...}\"",
		"k.yaml:12: routes[2].params.proxy: bad pattern \"[a-z\": error parsing regexp: missing closing ]: `[a-z`",
	}
	if strings.Join(errs, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(errs, "\n"), strings.Join(want, "\n"))
	}
}

// TestStagesWithoutPrefixOneErrorEach: stages that cannot be told apart
// are reported once per stage, without knock-on errors (another stage
// "with the same prefix", a route conflicting with itself).
func TestStagesWithoutPrefixOneErrorEach(t *testing.T) {
	errs, _ := compileErrs(t, `
stages:
  dev: { vars: {} }
  prod: { vars: {} }
routes:
  - { name: a, path: /a, upstream: "https://api.example.com/a" }
`, nil)
	want := []string{
		"k.yaml:3: stages.dev: set prefix or host (or both): stages need a way to be told apart",
		"k.yaml:4: stages.prod: set prefix or host (or both): stages need a way to be told apart",
	}
	if diff := cmp.Diff(want, errs); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}
