package gateway_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
)

const fuzzCanary = "x-canary-secret"

// FuzzCompile: loading and compiling any file never panics, and no error
// or warning ever quotes a secret's value. Every env var and secret file
// holds the canary.
func FuzzCompile(f *testing.F) {
	for _, s := range []string{
		`secrets:
  gh: { env: GH }
  maps: { file: key.txt }
cors:
  allow_origins: ["https://app.example.com", "https://*.example.com", "*"]
  allow_credentials: true
stages:
  dev: { prefix: /dev, vars: { api: "http://api.example.com" } }
routes:
  - name: r
    path: /repos/{owner}/{rest...}
    params: { owner: "[a-z]+" }
    methods: [GET, POST]
    upstream: "{stage.api}/repos/{owner}/{rest}"
    query: { allow: [page], set: { key: "{secret.maps}" } }
    headers: { set: { Authorization: "Bearer {secret.gh}" } }
`,
		`secrets: { gh: { env: GH } }
routes:
  - name: bad
    path: /x/{secret.gh}
    upstream: "https://{secret.gh}/{nope}"
    headers: { set: { "Bad Header": "{secret.gh}", X: "{secret.nope}" } }
    timeout: "{secret.gh}"
    max_body: "{secret.gh}"
    methods: ["{secret.gh}"]
`,
		`routes:
  - name: a
    path: /a
    upstream: "https://h/{secret.gh}"
  - name: a
    path: /a
    upstream: https://h/
`,
		"routes: []\n",
		"secrets: { gh: { env: GH, file: x } }\nroutes: [{name: a, path: /a, upstream: 'https://h/'}]\n",
	} {
		f.Add([]byte(s))
	}
	keyFile := filepath.Join(f.TempDir(), "key.txt")
	if err := os.WriteFile(keyFile, []byte(fuzzCanary+"\n"), 0o600); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := config.Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		// Secret files are read from disk: point every one at the canary
		// file, so fuzzing never reads other files (or /dev/zero).
		for name, src := range file.Config.Secrets {
			if src.File != "" {
				src.File = keyFile
				file.Config.Secrets[name] = src
			}
		}
		_, warnings, err := gateway.Compile(file, gateway.Options{Getenv: func(string) string { return fuzzCanary }})
		if err != nil && strings.Contains(err.Error(), fuzzCanary) {
			t.Fatalf("compile error leaks the secret: %v", err)
		}
		for _, w := range warnings {
			if w == nil {
				t.Fatal("nil warning")
			}
			if strings.Contains(w.Error(), fuzzCanary) {
				t.Fatalf("warning leaks the secret: %v", w)
			}
		}
	})
}
