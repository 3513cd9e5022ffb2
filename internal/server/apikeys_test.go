package server_test

import (
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/caller/apikey"
	akredis "github.com/keyward/keyward/internal/caller/apikey/redis"
	"github.com/keyward/keyward/internal/redisstore/redistest"
)

// TestAPIKeysInRedis: with store: redis://, keyward serve checks API keys
// in Redis: a key added there is accepted, a revocation made elsewhere is
// refused within a second, and during a Redis outage an unknown key is
// refused with 503 store_unavailable, never let in.
func TestAPIKeysInRedis(t *testing.T) {
	rs := redistest.Start(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	dir := t.TempDir()
	path := filepath.Join(dir, "keyward.yaml")
	cfg := "listen: \"127.0.0.1:0\"\nstore: " + rs.URL() + "\ncallers:\n  partners: { api_keys: {} }\nroutes:\n  - { name: x, path: /x, upstream: \"" + up.URL + "/x\", callers: [partners] }\noutbound: { allow: [\"127.0.0.0/8\"] }\n"
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	admin := akredis.New(redistest.Client(t, rs.URL()), akredis.Options{})
	key, h, _ := apikey.Generate(rand.Reader)
	if err := admin.Add(context.Background(), apikey.Record{Kind: "partners", Name: "acme", Hash: h, Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	_, base, _, _ := start(t, path, logs)
	do := func() (int, string) {
		req, _ := http.NewRequest("GET", base+"/x", nil)
		req.Header.Set("X-Api-Key", key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, body := do(); code != 200 {
		t.Fatalf("%d %s\n%s", code, body, logs.String())
	}
	if err := admin.Revoke(context.Background(), "partners", "acme", time.Now()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		code, _ := do()
		if code == 401 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not refused within 1s")
		}
		<-time.After(10 * time.Millisecond) // polling another instance's view of Redis
	}
	rs.Kill()
	key2, _, _ := apikey.Generate(rand.Reader)
	key = key2
	code, body := do()
	if code != 503 || !strings.Contains(body, "store_unavailable") {
		t.Errorf("outage: %d %s", code, body)
	}
}
