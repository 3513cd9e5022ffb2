package cli

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
)

// transcript runs the command line and writes what a user sees, for a
// golden file. Request ids are random, so they are elided.
func transcript(t *testing.T, args ...string) string {
	t.Helper()
	code, stdout, stderr := run(t, args...)
	var b strings.Builder
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = a
		if strings.ContainsFunc(a, func(r rune) bool {
			return !strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:", r)
		}) {
			quoted[i] = "'" + a + "'"
		}
	}
	fmt.Fprintf(&b, "$ keyward %s\nexit %d\n", strings.Join(quoted, " "), code)
	if stdout != "" {
		fmt.Fprintf(&b, "--- stdout\n%s", stdout)
	}
	if stderr != "" {
		fmt.Fprintf(&b, "--- stderr\n%s", stderr)
	}
	return regexp.MustCompile(`X-Request-Id: [0-9a-f]+`).ReplaceAllString(b.String(), "X-Request-Id: ...")
}

// TestMessages: one golden transcript per class of message a new user
// meets (issue 14): each says what to write instead, on the line to fix,
// every problem at once, with no knock-on errors and each warning once.
func TestMessages(t *testing.T) {
	t.Setenv("KEYWARD_TEST_GITHUB_TOKEN", "gh-test-token-value")
	t.Setenv("KEYWARD_TEST_MAPS_KEY", "maps-test-key-value")
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		// 1, 2: credentials written in the file.
		{"credentials.golden", []string{"check", "-c", "testdata/credentials.yaml"}},
		// 5: values of the wrong shape.
		{"shapes.golden", []string{"check", "-c", "testdata/shapes.yaml"}},
		// 5, 6: unknown fields, without knock-on errors.
		{"unknown.golden", []string{"check", "-c", "testdata/unknown.yaml"}},
		// 6: every problem of a route at once, path missing included.
		{"every-problem.golden", []string{"check", "-c", "testdata/every-problem.yaml"}},
		// 9: cloud-console habits.
		{"habits.golden", []string{"check", "-c", "testdata/habits.yaml"}},
		// 8: syntax, on the line to fix.
		{"syntax-tab.golden", []string{"check", "-c", "testdata/syntax-tab.yaml"}},
		{"syntax-indent.golden", []string{"check", "-c", "testdata/syntax-indent.yaml"}},
		{"syntax-quote.golden", []string{"check", "-c", "testdata/syntax-quote.yaml"}},
		{"syntax-placeholder.golden", []string{"check", "-c", "testdata/syntax-placeholder.yaml"}},
		{"bom.golden", []string{"check", "-c", "testdata/bom.yaml"}},
		// 4, 8, 15: secret files and warnings.
		{"secret-files.golden", []string{"check", "-c", "testdata/secret-files.yaml"}},
		// 10, 13: without the secrets (CI); counts that agree with serve.
		{"no-secrets.golden", []string{"check", "-c", "testdata/stages.yaml", "--no-secrets"}},
		{"routes.golden", []string{"routes", "-c", "testdata/stages.yaml", "--no-secrets"}},
		// 12: keyward test on a staged config.
		{"test-no-stage.golden", []string{"test", "-c", "testdata/stages.yaml", "--no-secrets", "GET", "/repos/octocat"}},
		{"test-unknown-stage.golden", []string{"test", "-c", "testdata/stages.yaml", "--no-secrets", "--stage", "qa", "GET", "/repos/octocat"}},
		{"test-url.golden", []string{"test", "-c", "testdata/stages.yaml", "--no-secrets", "GET", "https://api.example.com/repos/octocat?page=2&key=mine", "-H", "Origin: https://app.example.com"}},
		{"test-host.golden", []string{"test", "-c", "testdata/stages.yaml", "--no-secrets", "GET", "/repos/octocat", "-H", "Host: api.example.com"}},
		{"test-origin.golden", []string{"test", "-c", "testdata/stages.yaml", "--no-secrets", "--stage", "dev", "GET", "/repos/octocat", "-H", "Origin: https://evil.example"}},
		// 13: the help says what the commands do.
		{"help.golden", []string{"help"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			out := transcript(t, tc.args...)
			golden(t, tc.golden, out)
			for _, secret := range []string{"gh-test-token-value", "maps-test-key-value", "ghp_0123456789abcdefXYZ", "a1b2c3d4e5f6"} {
				if strings.Contains(out, secret) {
					t.Errorf("the output shows the secret %q", secret)
				}
			}
		})
	}
}

// TestSendShowsWhyTheUpstreamFailed: `keyward test --send` prints the
// cause of an upstream failure, as a console's test pane does.
func TestSendShowsWhyTheUpstreamFailed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	tlsUp := httptest.NewUnstartedServer(http.NotFoundHandler())
	tlsUp.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake
	tlsUp.StartTLS()
	defer tlsUp.Close()
	cfg := writeConfig(t, `
secrets:
  k: { env: KEYWARD_TEST_KEY }
routes:
  - name: down
    path: /down
    upstream: "http://`+closed+`/x?key={secret.k}"
  - name: tls
    path: /tls
    upstream: "`+tlsUp.URL+`/x?key={secret.k}"
`)
	t.Setenv("KEYWARD_TEST_KEY", "kw-canary-4f1e2d")
	for path, want := range map[string]string{
		"/down": "failed:   upstream: connecting to " + closed + ": dial tcp " + closed + ": connect: connection refused\nresponse: 502 Bad Gateway",
		"/tls":  "failed:   upstream: ",
	} {
		code, stdout, stderr := run(t, "test", "-c", cfg, "--send", "GET", path)
		if code != exitOK || !strings.Contains(stdout, want) {
			t.Errorf("%s: exit %d, stdout:\n%s\nwant it to contain %q\nstderr: %s", path, code, stdout, want, stderr)
		}
		if path == "/tls" && !strings.Contains(stdout, "certificate") {
			t.Errorf("%s: the TLS failure does not say why:\n%s", path, stdout)
		}
		if strings.Contains(stdout+stderr, "kw-canary-4f1e2d") {
			t.Errorf("%s: the secret was printed", path)
		}
	}
}

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "keyward.yaml")
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestServeOnAPortInUse: the error points at listen: and suggests a port.
func TestServeOnAPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	cfg := writeConfig(t, `cors: { allow_origins: ["https://app.example.com"] }
listen: "`+addr+`"
routes:
  - { name: a, path: /a, upstream: "https://api.example.com/a" }
`)
	host, port, _ := net.SplitHostPort(addr)
	var next int
	fmt.Sscan(port, &next)
	want := fmt.Sprintf(`%s:2: listen: %q is in use by another process (another keyward?): stop it, or choose a free port: listen: "%s:%d"`, cfg, addr, host, next+1)
	code, _, stderr := run(t, "serve", "-c", cfg)
	if code != exitError || !strings.Contains(stderr, want) {
		t.Errorf("exit %d, stderr:\n%s\nwant:\n%s", code, stderr, want)
	}

	// Without listen: in the file, the default is named and the line to add.
	f, err := config.Parse("k.yaml", []byte("routes: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, lerr := net.Listen("tcp", addr)
	got := inUse(f, gateway.Settings{Listen: addr}, fmt.Errorf("listening on %s: %w", addr, lerr)).Error()
	if want := fmt.Sprintf(`k.yaml: listen: the default %q is in use by another process (another keyward?): stop it, or choose a free port: add listen: "%s:%d" to the file`, addr, host, next+1); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// TestSecretFilesAreWatched: a changed file: secret reloads the config,
// without SIGHUP, and so does one a reload newly names.
func TestSecretFilesAreWatched(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{"a.txt": "first-value\n", "b.txt": "other-value\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "keyward.yaml")
	write := func(secretFile string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte("secrets:\n  k: { file: "+secretFile+" }\nroutes: []\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("a.txt")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reloads := make(chan struct{}, 10)
	reloaded := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		watchSecretFiles(ctx, cfg, func() { reloads <- struct{}{} }, reloaded, nil)
		close(done)
	}()
	// The watcher starts asynchronously, so a change may come before it
	// watches: change the file again each second (well past the debounce,
	// so each change reloads once) until a reload comes.
	waitReload := func(file string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-reloads:
				return
			case <-tick.C:
				if err := os.WriteFile(filepath.Join(dir, file), []byte(fmt.Sprintf("value-%d\n", i)), 0o600); err != nil {
					t.Fatal(err)
				}
			case <-deadline:
				t.Fatalf("no reload after %s changed", file)
			}
		}
	}
	waitReload("a.txt")

	// A reload that names another file watches that one instead (a.txt
	// no longer changes, so the reload can only come from b.txt).
	write("b.txt")
	reloaded <- struct{}{}
	waitReload("b.txt")
	cancel()
	<-done
}

func TestTextLog(t *testing.T) {
	var b strings.Builder
	tl := &textLog{w: &b}
	line := `{"time":"2026-01-02T03:04:05.123456789Z","level":"INFO","msg":"request","id":"ab12","stage":"","path":"/a b","status":200,"ms":1.5,"ok":true}` + "\n"
	// Written in two pieces, as a buffer boundary may cut it.
	if _, err := tl.Write([]byte(line[:40])); err != nil {
		t.Fatal(err)
	}
	if b.Len() != 0 {
		t.Fatalf("half a line was written: %q", b.String())
	}
	if _, err := tl.Write([]byte(line[40:] + "not json\n")); err != nil {
		t.Fatal(err)
	}
	want := `time=2026-01-02T03:04:05.123Z level=INFO msg=request id=ab12 stage="" path="/a b" status=200 ms=1.5 ok=true` + "\nnot json\n"
	if b.String() != want {
		t.Errorf("got  %q\nwant %q", b.String(), want)
	}
}
