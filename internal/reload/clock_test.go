package reload

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// safety bounds every wait in these tests, so a broken watcher fails a
// test instead of hanging it; no test waits on it to reach a state.
const safety = 10 * time.Second

// fakeClock is the watcher's clock: each After is a channel the test
// fires.
type fakeClock struct{ armed chan chan time.Time }

func newFakeClock() *fakeClock { return &fakeClock{armed: make(chan chan time.Time, 100000)} }

func (f *fakeClock) After(time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	f.armed <- ch
	return ch
}

// watched runs a Watcher on path with a fake clock; each reload sends the
// file's content as it read it.
type watched struct {
	clock   *fakeClock
	reloads chan string
	signal  chan struct{}
	latest  chan time.Time // the last timer taken from clock.armed, not yet fired
}

func watch(t *testing.T, path string) *watched {
	t.Helper()
	return watchWith(t, path, nil)
}

// watchWith is watch with a logger.
func watchWith(t *testing.T, path string, log *slog.Logger) *watched {
	t.Helper()
	w := &watched{clock: newFakeClock(), reloads: make(chan string, 100), signal: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	wa := &Watcher{Path: path, Signal: w.signal, After: w.clock.After, Logger: log, Reload: func() {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("reload: %v", err)
		}
		w.reloads <- string(b)
	}}
	go func() { done <- wa.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	// The watch is in place once a signal is served.
	w.signal <- struct{}{}
	<-w.reloads
	return w
}

// step fires the latest timer the watcher armed, waiting for one first,
// then waits for the watcher to act: arm again, or reload. It returns what
// a reload read, and whether it reloaded. Timers are armed in the order
// clock.armed holds them, so the last one taken is the watcher's.
func (w *watched) step(t *testing.T) (string, bool) {
	t.Helper()
	if w.latest == nil {
		select {
		case w.latest = <-w.clock.armed:
		case <-time.After(safety):
			t.Fatal("the watcher armed no timer")
		}
	}
	for more := true; more; {
		select {
		case w.latest = <-w.clock.armed:
		default:
			more = false
		}
	}
	w.latest <- time.Now()
	w.latest = nil
	select {
	case got := <-w.reloads:
		return got, true
	case w.latest = <-w.clock.armed:
		return "", false
	case <-time.After(safety):
		t.Fatal("the watcher neither reloaded nor armed a timer")
		return "", false
	}
}

// TestChangeWithoutEventIsWaitedFor: a file that changes after the last
// event the watcher saw (here through a hard link in another directory,
// which sends it no event) is not loaded when the debounce ends: its size
// and modification time are checked right before the reload, and the
// wait starts again.
func TestChangeWithoutEventIsWaitedFor(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	path := filepath.Join(dir, "keyward.yaml")
	if err := os.WriteFile(path, []byte("routes: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w := watch(t, path)
	// A new file renamed over the config: one event, one timer.
	tmp := filepath.Join(dir, ".keyward.yaml.tmp")
	if err := os.WriteFile(tmp, []byte("listen: :1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(other, "link.yaml")
	if err := os.Link(tmp, link); err != nil {
		t.Skipf("no hard links here: %v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	select {
	case w.latest = <-w.clock.armed:
	case <-time.After(safety):
		t.Fatal("the rename armed no timer")
	}
	// Changed behind the watcher's back before its timer fires.
	if err := os.WriteFile(link, []byte("listen: :2\nroutes: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, reloaded := w.step(t); reloaded {
		t.Fatalf("reloaded %q right after a change the watcher had not waited out", got)
	}
	got, reloaded := w.step(t)
	if !reloaded || got != "listen: :2\nroutes: []\n" {
		t.Fatalf("after a quiet debounce: reloaded %v, read %q", reloaded, got)
	}
}

// TestConfigMapVolumeNestedFile: a file in a subdirectory of a Kubernetes
// ConfigMap volume (tls/keyward.yaml, reached through the "tls" link into
// the "..data" the kubelet swaps) is reloaded on every update, not only
// the first: the watch on its directory dies with the old data and is set
// up again on the new.
func TestConfigMapVolumeNestedFile(t *testing.T) {
	vol := t.TempDir()
	version := func(name, content string) {
		t.Helper()
		d := filepath.Join(vol, name, "tls")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "keyward.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// What the kubelet does: a new timestamped directory, a temporary link
	// renamed over ..data, the old directory removed.
	swap := func(name, old string) {
		t.Helper()
		tmp := filepath.Join(vol, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(vol, "..data")); err != nil {
			t.Fatal(err)
		}
		if old != "" {
			if err := os.RemoveAll(filepath.Join(vol, old)); err != nil {
				t.Fatal(err)
			}
		}
	}
	version("..v1", "one\n")
	swap("..v1", "")
	if err := os.Symlink("..data/tls", filepath.Join(vol, "tls")); err != nil {
		t.Fatal(err)
	}
	w := watch(t, filepath.Join(vol, "tls", "keyward.yaml"))
	for i, next := range []string{"two\n", "three\n", "four\n"} {
		name := fmt.Sprintf("..v%d", i+2)
		version(name, next)
		swap(name, fmt.Sprintf("..v%d", i+1))
		var got string
		for reloaded := false; !reloaded; {
			got, reloaded = w.step(t)
		}
		if got != next {
			t.Fatalf("update %d: reloaded %q, want %q", i+1, got, next)
		}
	}
}
