package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/redisstore/redistest"
)

// TestStoreWarnsAndRestoresWhileIdle: on a Redis that keeps nothing
// across a restart, keyward serve says so at start; and when Redis loses
// its data, an instance that serves no request puts back what it spent,
// so another instance cannot spend the same budget again.
func TestStoreWarnsAndRestoresWhileIdle(t *testing.T) {
	rs := redistest.Start(t) // no persistence, as redistest runs it
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	path := filepath.Join(t.TempDir(), "keyward.yaml")
	cfg := "listen: \"127.0.0.1:0\"\nstore: " + rs.URL() + "\nroutes:\n  - { name: x, path: /x, upstream: \"" + up.URL + "/x\", limits: { budget: 5/day, on_store_error: fail_closed } }\noutbound: { allow: [\"127.0.0.0/8\"] }\n"
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logsA, logsB := &logBuffer{}, &logBuffer{}
	_, a, _, _ := start(t, path, logsA)
	_, b, _, _ := start(t, path, logsB)
	if !strings.Contains(logsA.String(), "does not persist its data") {
		t.Errorf("no persistence warning at start:\n%s", logsA.String())
	}
	get := func(base string) int {
		res, err := http.Get(base + "/x")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	for i := 0; i < 3; i++ {
		if code := get(a); code != 200 {
			t.Fatalf("request %d on A: %d\n%s", i, code, logsA.String())
		}
	}
	// Redis loses everything; A serves nothing from here on.
	redis := redistest.Client(t, rs.URL())
	if err := redis.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := redis.DBSize(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the idle instance did not restore its spend within 5s")
		}
		<-time.After(20 * time.Millisecond) // polling Redis for A's background restore
	}
	// While A restores, every instance refuses budget calls (503, no
	// upstream call); then B may spend only what A left.
	served, refused := 0, false
	deadline = time.Now().Add(10 * time.Second)
	for !refused && time.Now().Before(deadline) {
		switch code := get(b); code {
		case 200:
			served++
		case 429:
			refused = true
		case 503:
			<-time.After(50 * time.Millisecond) // the restore's hold
		default:
			t.Fatalf("B answered %d", code)
		}
	}
	if served != 2 || !refused {
		t.Errorf("B served %d (then refused: %v) of a 5/day budget A had spent 3 of, want 2", served, refused)
	}
	for _, logs := range []string{logsA.String(), logsB.String()} {
		if strings.Contains(logs, rs.URL()) && strings.Contains(rs.URL(), "@") {
			t.Errorf("the store URL's credentials are in the log")
		}
	}
}

// TestStorePasswordFromSecret: the Redis password comes from a declared
// secret ({secret.NAME} in store:), not from keyward.yaml, and reaches
// Redis: a budget on a Redis that requires it counts.
func TestStorePasswordFromSecret(t *testing.T) {
	rs := redistest.Start(t)
	const password = "canary-redis-p@ss:word"
	admin := redistest.Client(t, rs.URL())
	if err := admin.ConfigSet(context.Background(), "requirepass", password).Err(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KW_TEST_REDIS_PASSWORD", password)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	path := filepath.Join(t.TempDir(), "keyward.yaml")
	cfg := "listen: \"127.0.0.1:0\"\nsecrets:\n  redis: { env: KW_TEST_REDIS_PASSWORD }\nstore: \"redis://:{secret.redis}@" + rs.Addr() + "\"\nroutes:\n  - { name: x, path: /x, upstream: \"" + up.URL + "/x\", limits: { budget: 2/day, on_store_error: fail_closed } }\noutbound: { allow: [\"127.0.0.0/8\"] }\n"
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	_, base, _, _ := start(t, path, logs)
	var codes []int
	for range 3 {
		res, err := http.Get(base + "/x")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		codes = append(codes, res.StatusCode)
	}
	if fmt.Sprint(codes) != "[200 200 429]" {
		t.Errorf("statuses %v, want [200 200 429]: the budget must count in the Redis that needs the password\n%s", codes, logs.String())
	}
	if strings.Contains(logs.String(), password) {
		t.Error("the Redis password is in the log")
	}
}

// TestStorePasswordChangeIsReported: a new value of the secret in store:
// is not taken by the open Redis connections; a reload says so.
func TestStorePasswordChangeIsReported(t *testing.T) {
	rs := redistest.Start(t)
	dir := t.TempDir()
	pw := filepath.Join(dir, "redis-password")
	if err := os.WriteFile(pw, []byte("first-password-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := redistest.Client(t, rs.URL()).ConfigSet(context.Background(), "requirepass", "first-password-value").Err(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "keyward.yaml")
	cfg := "listen: \"127.0.0.1:0\"\nsecrets:\n  redis: { file: redis-password }\nstore: \"redis://:{secret.redis}@" + rs.Addr() + "\"\nroutes:\n  - { name: x, path: /x, upstream: \"https://api.example.com/x\" }\n"
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	srv, _, _, _ := start(t, path, logs)
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "password") {
		t.Fatalf("a reload with the same password warned:\n%s", logs.String())
	}
	if err := os.WriteFile(pw, []byte("second-password-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "the store's password (a secret in store:) changed") {
		t.Errorf("no warning for a changed store password:\n%s", out)
	}
	if strings.Contains(out, "second-password-value") || strings.Contains(out, "first-password-value") {
		t.Error("a password is in the log")
	}
}
