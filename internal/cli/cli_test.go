package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files")

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// golden compares got with testdata/NAME, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", name, diff)
	}
}

func TestCheckReportsEveryProblemWithItsLine(t *testing.T) {
	t.Setenv("KEYWARD_TEST_GITHUB_TOKEN", "")
	code, stdout, stderr := run(t, "check", "-c", "testdata/five-errors.yaml")
	if code != exitError {
		t.Errorf("exit code %d, want %d", code, exitError)
	}
	if stdout != "" {
		t.Errorf("stdout: %q", stdout)
	}
	golden(t, "five-errors.golden", stderr)
}

func TestCheckOK(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "keyward.yaml")
	if err := os.WriteFile(cfg, []byte(`
secrets:
  k: { env: KEYWARD_TEST_KEY }
stages:
  dev: { prefix: /dev, vars: { api: "https://api.example.com" } }
routes:
  - name: a
    path: /a
    upstream: "{stage.api}/a"
    headers: { set: { X-Key: "{secret.k}" } }
`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYWARD_TEST_KEY", "s3cr3t-value")
	code, stdout, stderr := run(t, "check", "-c", cfg)
	if code != exitOK || stdout != "ok: 1 route in 1 stage (1 mounted)\n" {
		t.Errorf("code %d stdout %q stderr %q", code, stdout, stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown verb", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown flag", []string{"check", "-nope"}, "flag provided but not defined: -nope"},
		{"stray argument", []string{"check", "extra"}, `unexpected argument "extra"`},
		{"test needs method and path", []string{"test", "GET"}, "want METHOD PATH"},
		{"no verb", nil, "Usage:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := run(t, tc.args...)
			if code != exitUsage {
				t.Errorf("exit code %d, want %d", code, exitUsage)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q does not contain %q", stderr, tc.want)
			}
		})
	}
}

func TestVersionAndHelp(t *testing.T) {
	if code, out, _ := run(t, "version"); code != 0 || !strings.HasPrefix(out, "keyward ") {
		t.Errorf("version: %d %q", code, out)
	}
	if code, out, _ := run(t, "help"); code != 0 || !strings.Contains(out, "keyward serve") {
		t.Errorf("help: %d %q", code, out)
	}
}

func TestTestShowsTheUpstreamRequestWithSecretsMasked(t *testing.T) {
	const canary = "kw-canary-7d1e9b"
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"auth":%q,"q":%q}`, r.Header.Get("X-Key"), r.URL.RawQuery)
	}))
	defer up.Close()
	cfg := filepath.Join(t.TempDir(), "keyward.yaml")
	if err := os.WriteFile(cfg, []byte(`
secrets:
  k: { env: KEYWARD_TEST_KEY }
stages:
  dev: { prefix: /dev, vars: { api: "`+up.URL+`" } }
routes:
  - name: items
    path: /items/{id}
    upstream: "{stage.api}/v1/items/{id}"
    query: { allow: [page], set: { token: "{secret.k}" } }
    headers: { set: { X-Key: "{secret.k}" } }
`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYWARD_TEST_KEY", canary)

	code, stdout, stderr := run(t, "test", "-c", cfg, "GET", "/items/42?page=2&token=mine", "--stage", "dev", "-H", "Cookie: a=b")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"route:    items (stage dev)",
		`param:    id = "42"`,
		"upstream: GET " + up.URL + "/v1/items/42?page=2&token=[secret:k]",
		"  X-Key: [secret:k]",
		"  header Cookie: not allowed (add it to headers.allow)",
		"  query token: set by the gateway (query.set)",
		"(not sent; add --send to send it)",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}

	code, stdout, stderr = run(t, "test", "-c", cfg, "--send", "--stage", "dev", "GET", "/items/42")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	// The response is what the client would get: the upstream echoed the
	// secret and the gateway masked it, keeping the body's length.
	if !strings.Contains(stdout, "response: 200 OK") || !strings.Contains(stdout, `{"auth":"[REDACTED]******","q":"token=[REDACTED]******"}`) {
		t.Errorf("--send output:\n%s", stdout)
	}
	if strings.Contains(stdout+stderr, canary) {
		t.Errorf("the secret's value was printed:\n%s%s", stdout, stderr)
	}
}

// TestCheckNoSecretsSkipsTLSFiles: in CI, where the TLS key (a secret)
// is not there, check --no-secrets checks everything else; without the
// flag a missing file is an error on its field.
func TestCheckNoSecretsSkipsTLSFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyward.yaml")
	cfg := "listen: \":8443\"\ntls: { cert: missing.pem, key: missing-key.pem }\nroutes:\n  - { name: a, path: /a, upstream: \"https://api.example.com/a\" }\n"
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := run(t, "check", "-c", path); code != exitError || !strings.Contains(stderr, "tls.cert") {
		t.Errorf("check: exit %d, stderr %q; want an error on tls.cert", code, stderr)
	}
	if code, stdout, stderr := run(t, "check", "-c", path, "--no-secrets"); code != 0 || !strings.Contains(stdout, "ok: 1 route") {
		t.Errorf("check --no-secrets: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
