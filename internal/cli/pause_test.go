package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/ratelimit"
	rlredis "github.com/keyward/keyward/internal/ratelimit/redis"
	"github.com/keyward/keyward/internal/redisstore/redistest"
)

// TestPauseResume: keyward pause and resume write the kill switch to the
// store every instance reads; an unknown route is an error naming the
// known ones; a memory store points at the admin API.
func TestPauseResume(t *testing.T) {
	rs := redistest.Start(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "keyward.yaml")
	cfg := fmt.Sprintf("store: %q\nroutes:\n  - { name: chat, path: /chat, upstream: \"https://api.example.com/chat\" }\n", rs.URL())
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	store := rlredis.New(redistest.Client(t, rs.URL()), rlredis.Options{})
	paused := func(route string) bool {
		t.Helper()
		var p ratelimit.Pauses = store
		all, routes, err := p.PausedRoutes(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return all || route != "" && strings.Contains(strings.Join(routes, ","), route)
	}
	code, stdout, stderr := run(t, "pause", "-c", path, "chat")
	if code != exitOK || !strings.Contains(stdout, "paused: route chat") || !paused("chat") {
		t.Fatalf("pause chat: %d %q %q", code, stdout, stderr)
	}
	if code, stdout, _ = run(t, "resume", "-c", path, "chat"); code != exitOK || paused("chat") || !strings.Contains(stdout, "paused now: none") {
		t.Errorf("resume chat: %d %q", code, stdout)
	}
	if code, _, _ = run(t, "pause", "-c", path); code != exitOK || !paused("") {
		t.Errorf("pause every route: %d", code)
	}
	if code, _, _ = run(t, "resume", "-c", path); code != exitOK || paused("") {
		t.Errorf("resume every route: %d", code)
	}
	if code, _, stderr = run(t, "pause", "-c", path, "nope"); code != exitError || !strings.Contains(stderr, `no route named "nope" (routes: chat)`) {
		t.Errorf("unknown route: %d %q", code, stderr)
	}
	mem := filepath.Join(dir, "mem.yaml")
	if err := os.WriteFile(mem, []byte("routes:\n  - { name: chat, path: /chat, upstream: \"https://api.example.com/chat\" }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr = run(t, "pause", "-c", mem); code != exitError || !strings.Contains(stderr, "admin API") {
		t.Errorf("memory store: %d %q", code, stderr)
	}
	if strings.Contains(stderr+stdout, rs.URL()) {
		t.Errorf("the store URL is printed")
	}
}
