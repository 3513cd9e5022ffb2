package cli

import (
	"bytes"
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/caller/apikey"
	"github.com/keyward/keyward/internal/config"
)

const keysConfig = `
callers:
  partners:
    api_keys: { header: X-Api-Key, keys: keys.yaml }
  internal:
    api_keys: { keys: keys.yaml }
  users:
    jwt: { preset: firebase, project: my-app }
routes:
  - name: x
    path: /x
    upstream: "https://api.example.com/x"
    callers: [partners]
`

// keysRun runs `keyward keys ARGS` with a fixed clock and fixed random
// bytes (a counter, so each key differs), and returns what it printed,
// with the temporary directory written as DIR.
func keysRun(t *testing.T, dir string, now time.Time, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	seed := byte(len(args))
	random := bytes.NewReader(bytes.Repeat([]byte{seed}, 32))
	err = runKeys(context.Background(), keysEnv{now: func() time.Time { return now }, random: random},
		append(args, "-c", filepath.Join(dir, "keyward.yaml")), &out, &errb)
	return strings.ReplaceAll(out.String(), dir, "DIR"), strings.ReplaceAll(errb.String(), dir, "DIR"), err
}

func TestKeys(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "keyward.yaml")
	if err := os.WriteFile(cfg, []byte(keysConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	day0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

	out1, err1, err := keysRun(t, dir, day0, "create", "partners", "--name", "acme", "--expires", "90d", "--rate", "600/m", "--budget", "100000/month")
	if err != nil {
		t.Fatal(err)
	}
	acme := strings.TrimSuffix(out1, "\n")
	if strings.Contains(acme, "\n") || apikey.Check(acme) != nil {
		t.Fatalf("stdout %q: want the key alone on its line", out1)
	}
	out2, err2, err := keysRun(t, dir, day0.Add(time.Hour), "create", "internal", "--name", "ops")
	if err != nil {
		t.Fatal(err)
	}
	ops := strings.TrimSpace(out2)
	keyFile := filepath.Join(dir, "beta.key")
	out3, err3, err := keysRun(t, dir, day0.Add(2*time.Hour), "create", "partners", "--name", "beta", "-o", keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if out3 != "" {
		t.Errorf("with -o, stdout = %q", out3)
	}
	data, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	beta := strings.TrimSpace(string(data))
	if info, _ := os.Stat(keyFile); apikey.Check(beta) != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("key file %q, mode %v", data, info.Mode())
	}
	_, _, err = keysRun(t, dir, day0, "create", "partners", "--name", "acme")
	if !errors.Is(err, apikey.ErrNameTaken) {
		t.Errorf("a name used twice: %v", err)
	}
	_, _, err = keysRun(t, dir, day0, "create", "users", "--name", "x")
	if err == nil || !strings.Contains(err.Error(), `caller kind "users" has no api_keys (kinds with api_keys: internal, partners)`) {
		t.Errorf("a JWT kind: %v", err)
	}

	list1, _, err := keysRun(t, dir, day0.Add(24*time.Hour), "list")
	if err != nil {
		t.Fatal(err)
	}
	outRevoke, errRevoke, err := keysRun(t, dir, day0.Add(48*time.Hour), "revoke", "partners", "acme")
	if err != nil || outRevoke != "" {
		t.Fatal(err, outRevoke)
	}
	if _, _, err := keysRun(t, dir, day0, "revoke", "partners", "acme"); !errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("revoking twice: %v", err)
	}
	list2, _, err := keysRun(t, dir, day0.Add(100*24*time.Hour), "list", "partners")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "keys.golden", strings.Join([]string{
		"$ keyward keys create partners --name acme --expires 90d --rate 600/m --budget 100000/month", out1, err1,
		"$ keyward keys create internal --name ops", out2, err2,
		"$ keyward keys create partners --name beta -o DIR/beta.key", out3, err3,
		"$ keyward keys list   # a day later", list1,
		"$ keyward keys revoke partners acme", errRevoke,
		"$ keyward keys list partners   # 100 days later", list2,
	}, "\n"))

	// Only hashes are stored.
	stored, err := os.ReadFile(filepath.Join(dir, "keys.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{acme, ops, beta} {
		if strings.Contains(string(stored), k) || !strings.Contains(string(stored), apikey.HashOf(k).String()) {
			t.Errorf("keys file:\n%s\nmust hold the hash of %s and never the key", stored, k[:6])
		}
	}

	// A serving instance built from the same config agrees.
	f, err := config.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	v, file, probs := apikey.Compile("partners", *f.Config.Callers["partners"].APIKeys, caller.Env{Dir: dir}, nil)
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	defer func() {
		if err := file.Flush(); err != nil {
			t.Error(err)
		}
	}()
	for key, want := range map[string]caller.Reason{beta: "", acme: caller.Revoked, ops: caller.UnknownKey} {
		r := httptest.NewRequest("GET", "/x", nil)
		r.Header.Set("X-Api-Key", key)
		if _, err := v.Verify(context.Background(), r); caller.ReasonOf(err) != want {
			t.Errorf("key %s: %v, want %q", key[:6], err, want)
		}
	}
}

func TestKeysUsage(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "keyward.yaml")
	if err := os.WriteFile(cfg, []byte(keysConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"keys"}, exitUsage, "want create, list or revoke"},
		{[]string{"keys", "rotate"}, exitUsage, `unknown keys command "rotate"`},
		{[]string{"keys", "create", "partners", "-c", cfg}, exitUsage, "--name is required"},
		{[]string{"keys", "create", "-c", cfg, "--name", "a"}, exitUsage, "want: keys create KIND --name NAME"},
		{[]string{"keys", "create", "partners", "--name", "a", "--expires", "soon", "-c", cfg}, exitUsage, `--expires "soon"`},
		{[]string{"keys", "create", "partners", "--name", "a", "--rate", "lots", "-c", cfg}, exitUsage, "limits: rate"},
		{[]string{"keys", "create", "partners", "--name", "has space", "-c", cfg}, exitError, `name "has space"`},
		{[]string{"keys", "revoke", "partners", "-c", cfg}, exitUsage, "want: keys revoke KIND NAME"},
		{[]string{"keys", "revoke", "partners", "nobody", "-c", cfg}, exitError, "no active key of that kind has that name"},
		{[]string{"keys", "list", "users", "-c", cfg}, exitError, `caller kind "users" has no api_keys`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr := run(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.msg) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, tc.code, tc.msg)
			}
			if strings.Contains(stdout, "kw_") {
				t.Errorf("a failed command printed a key: %q", stdout)
			}
		})
	}
}
