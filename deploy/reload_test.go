package deploy_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/reload"
)

// atomicDir lays files out as the kubelet does for a ConfigMap, Secret or
// projected volume (its AtomicWriter): the files live in a timestamped
// directory, "..data" links to it, and each visible name is a link
// through "..data". An update writes a new timestamped directory, points
// "..data_tmp" at it, renames that over "..data" (the one atomic step)
// and removes the old directory. The visible names never change, so a
// watcher of keyward.yaml alone would see nothing.
type atomicDir struct {
	t   *testing.T
	dir string
	gen int
	cur string // the timestamped directory "..data" points to
}

func (a *atomicDir) write(files map[string]string) {
	a.t.Helper()
	a.gen++
	ts := fmt.Sprintf("..2026_01_01_00_00_00.%09d", a.gen)
	for name, content := range files {
		p := filepath.Join(a.dir, ts, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			a.t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			a.t.Fatal(err)
		}
	}
	tmp := filepath.Join(a.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		a.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(a.dir, "..data")); err != nil {
		a.t.Fatal(err)
	}
	for name := range files {
		first, _, _ := strings.Cut(name, "/")
		top := filepath.Join(a.dir, first)
		if _, err := os.Lstat(top); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", first), top); err != nil {
				a.t.Fatal(err)
			}
		}
	}
	if a.cur != "" {
		if err := os.RemoveAll(filepath.Join(a.dir, a.cur)); err != nil {
			a.t.Fatal(err)
		}
	}
	a.cur = ts
}

// TestConfigMapUpdateReloads proves the Kubernetes recipe's "edit the
// ConfigMap, every pod reloads": keyward's watcher sees the kubelet's
// swap of the projected volume and reads the new keyward.yaml through the
// unchanged path.
func TestConfigMapUpdateReloads(t *testing.T) {
	a := &atomicDir{t: t, dir: t.TempDir()}
	a.write(map[string]string{"keyward.yaml": "v1", "cert.pem": "cert1", "key.pem": "key1"})

	path := filepath.Join(a.dir, "keyward.yaml")
	loaded := make(chan string, 10)
	signal := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	w := &reload.Watcher{Path: path, Signal: signal, Reload: func() {
		b, err := os.ReadFile(path)
		if err != nil {
			loaded <- "error: " + err.Error()
			return
		}
		loaded <- string(b)
	}}
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watcher: %v", err)
		}
	})

	// A SIGHUP is answered from the watcher's loop, which starts after its
	// directory is watched: once answered, no change can be missed.
	signal <- struct{}{}
	expect(t, loaded, "v1")

	for _, v := range []string{"v2", "v3"} {
		a.write(map[string]string{"keyward.yaml": v, "cert.pem": "cert-" + v, "key.pem": "key-" + v})
		expect(t, loaded, v)
	}
}

// expect waits for the next reload and checks what it read.
func expect(t *testing.T, loaded <-chan string, want string) {
	t.Helper()
	select {
	case got := <-loaded:
		if got != want {
			t.Fatalf("reload read %q, want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no reload within 10s; want one reading %q", want)
	}
}
