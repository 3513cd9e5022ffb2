package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/caller/apikey"
	akredis "github.com/keyward/keyward/internal/caller/apikey/redis"
	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/redisstore/redistest"
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
		{[]string{"keys"}, exitUsage, "want create, list, revoke or import"},
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

// keysRedisConfig keeps the keys in Redis; partners still names a keys
// file, which is then not read.
const keysRedisConfig = `
store: STORE
callers:
  partners:
    api_keys: { header: X-Api-Key, keys: keys.yaml }
  internal:
    api_keys: {}
routes:
  - name: x
    path: /x
    upstream: "https://api.example.com/x"
    callers: [partners]
`

// redisInstance is one serving instance's verifier of the partners'
// keys, on its own client of the shared Redis, built the way the gateway
// builds it.
func redisInstance(t *testing.T, dir, url string, now func() time.Time) (*apikey.Verifier, *akredis.Store) {
	t.Helper()
	f, err := config.Load(filepath.Join(dir, "keyward.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	store := akredis.New(redistest.Client(t, url), akredis.Options{Timeout: 5 * time.Second})
	t.Cleanup(func() { _ = store.Flush() })
	v, probs := apikey.CompileStore("partners", *f.Config.Callers["partners"].APIKeys, caller.Env{Dir: dir, Now: now}, store)
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	return v, store
}

func verifyKey(v *apikey.Verifier, key string) error {
	r := httptest.NewRequest("GET", "/x", nil)
	r.Header.Set("X-Api-Key", key)
	_, err := v.Verify(context.Background(), r)
	return err
}

// waitFor polls cond until it holds, failing the test if it does not
// within limit.
func waitFor(t *testing.T, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", limit)
		}
		select {
		case <-time.After(time.Millisecond):
		case <-t.Context().Done():
			t.FailNow()
		}
	}
}

// TestKeysRedis: with store: redis://, `keyward keys` keeps the keys in
// Redis, and a key created there is accepted by two instances and, once
// revoked with the CLI, refused by both within a second.
func TestKeysRedis(t *testing.T) {
	srv := redistest.Start(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "keyward.yaml")
	if err := os.WriteFile(cfg, []byte(strings.Replace(keysRedisConfig, "STORE", srv.URL(), 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	day0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	redisName := func(s string) string { return strings.ReplaceAll(s, srv.Addr(), "REDIS") }

	out1, err1, err := keysRun(t, dir, day0, "create", "partners", "--name", "acme", "--expires", "90d", "--rate", "600/m")
	if err != nil {
		t.Fatal(err)
	}
	acme := strings.TrimSpace(out1)
	out2, err2, err := keysRun(t, dir, day0.Add(time.Hour), "create", "internal", "--name", "ops")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := keysRun(t, dir, day0, "create", "partners", "--name", "acme"); !errors.Is(err, apikey.ErrNameTaken) {
		t.Errorf("a name used twice: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("with a Redis store a keys file was written: %v", err)
	}

	used := day0.Add(30 * time.Hour)
	a, aStore := redisInstance(t, dir, srv.URL(), func() time.Time { return used })
	b, _ := redisInstance(t, dir, srv.URL(), func() time.Time { return used })
	for name, v := range map[string]*apikey.Verifier{"a": a, "b": b} {
		if err := verifyKey(v, acme); err != nil {
			t.Fatalf("instance %s: %v", name, err)
		}
	}
	_ = aStore.Flush() // the last use is written
	list1, _, err := keysRun(t, dir, day0.Add(48*time.Hour), "list")
	if err != nil {
		t.Fatal(err)
	}

	_, errRevoke, err := keysRun(t, dir, day0.Add(48*time.Hour), "revoke", "partners", "acme")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, time.Second, func() bool {
		return caller.ReasonOf(verifyKey(a, acme)) == caller.Revoked && caller.ReasonOf(verifyKey(b, acme)) == caller.Revoked
	})
	t.Logf("both instances refuse the revoked key after %v", time.Since(start))

	list2, _, err := keysRun(t, dir, day0.Add(48*time.Hour), "list", "partners")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "keys-redis.golden", redisName(strings.Join([]string{
		"$ keyward keys create partners --name acme --expires 90d --rate 600/m", out1, err1,
		"$ keyward keys create internal --name ops", out2, err2,
		"$ keyward keys list   # after a use", list1,
		"$ keyward keys revoke partners acme", errRevoke,
		"$ keyward keys list partners", list2,
	}, "\n")))
}

// TestKeysCreateConcurrently: `keyward keys create` run several times at
// once never loses a key, in a keys file (H8) or in Redis.
func TestKeysCreateConcurrently(t *testing.T) {
	for _, store := range []string{"memory", "redis"} {
		t.Run(store, func(t *testing.T) {
			dir := t.TempDir()
			url := "memory"
			if store == "redis" {
				url = redistest.Start(t).URL()
			}
			if err := os.WriteFile(filepath.Join(dir, "keyward.yaml"), []byte(strings.Replace(keysRedisConfig, "STORE", url, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			const n = 8
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for i := range n {
				wg.Go(func() {
					env := keysEnv{now: time.Now, random: rand.Reader}
					args := []string{"create", "partners", "--name", fmt.Sprint("p", i), "-c", filepath.Join(dir, "keyward.yaml")}
					errs <- runKeys(context.Background(), env, args, io.Discard, io.Discard)
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			list, _, err := keysRun(t, dir, time.Now(), "list", "partners")
			if err != nil {
				t.Fatal(err)
			}
			if rows := strings.Count(list, "\npartners "); rows != n {
				t.Errorf("%d keys created at once, %d listed:\n%s", n, rows, list)
			}
		})
	}
}

// TestKeysImport: `keyward keys import` moves a keys file's keys, revoked
// ones included, into Redis, where the old keys keep working; running it
// again changes nothing but a revocation made in the file meanwhile.
func TestKeysImport(t *testing.T) {
	srv := redistest.Start(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "keyward.yaml")
	writeConfig := func(store string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(strings.Replace(keysRedisConfig, "STORE", store, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	day0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	writeConfig("memory")
	out, _, err := keysRun(t, dir, day0, "create", "partners", "--name", "acme", "--budget", "1000/day")
	if err != nil {
		t.Fatal(err)
	}
	acme := strings.TrimSpace(out)
	out, _, err = keysRun(t, dir, day0, "create", "partners", "--name", "beta", "--expires", "1000d", "--rate", "10/s")
	if err != nil {
		t.Fatal(err)
	}
	beta := strings.TrimSpace(out)
	if _, _, err := keysRun(t, dir, day0, "create", "partners", "--name", "gone"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := keysRun(t, dir, day0, "revoke", "partners", "gone"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := keysRun(t, dir, day0, "import"); err == nil || !strings.Contains(err.Error(), "store: is not Redis") {
		t.Errorf("import without Redis: %v", err)
	}
	fileList, _, err := keysRun(t, dir, day0, "list")
	if err != nil {
		t.Fatal(err)
	}

	writeConfig(srv.URL())
	_, stderr1, err := keysRun(t, dir, day0, "import")
	if err != nil {
		t.Fatal(err)
	}
	redisList, _, err := keysRun(t, dir, day0, "list")
	if err != nil {
		t.Fatal(err)
	}
	if fileList != redisList {
		t.Errorf("listed from the file:\n%s\nfrom Redis after the import:\n%s", fileList, redisList)
	}
	v, _ := redisInstance(t, dir, srv.URL(), nil)
	if err := verifyKey(v, acme); err != nil {
		t.Errorf("an imported key: %v", err)
	}

	// beta is revoked in the file after the import, then imported again.
	if err := apikey.OpenFile(filepath.Join(dir, "keys.yaml"), apikey.FileOptions{}).Revoke(context.Background(), "partners", "beta", day0); err != nil {
		t.Fatal(err)
	}
	_, stderr2, err := keysRun(t, dir, day0, "import", "partners")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, func() bool { return caller.ReasonOf(verifyKey(v, beta)) == caller.Revoked })
	golden(t, "keys-import.golden", strings.ReplaceAll(strings.Join([]string{
		"$ keyward keys import", stderr1, "$ keyward keys import partners   # again, beta revoked in the file", stderr2,
	}, "\n"), srv.Addr(), "REDIS"))
}
