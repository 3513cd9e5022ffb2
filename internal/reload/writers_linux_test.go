package reload

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestHalfWrittenFileIsNeverLoaded (issue 15.9): a writer that writes the
// first half of the config (itself a valid file), pauses for many
// debounce periods, then writes the rest and closes it, gets one reload,
// of the whole file. Before, the first quiet debounce loaded the half.
func TestHalfWrittenFileIsNeverLoaded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyward.yaml")
	if err := os.WriteFile(path, []byte("routes: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w := watch(t, path)
	const first, second = "listen: \":8080\"\n", "routes:\n  - { name: a, path: /a, upstream: \"http://u/a\" }\n"

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(first); err != nil {
		t.Fatal(err)
	}
	// The pause: debounce after debounce passes with the file quiet.
	for range 8 {
		if got, reloaded := w.step(t); reloaded {
			t.Fatalf("loaded %q while its writer still had it open", got)
		}
	}
	if _, err := f.WriteString(second); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		got, reloaded := w.step(t)
		if !reloaded {
			continue
		}
		if got != first+second {
			t.Fatalf("loaded %q, want the whole file", got)
		}
		return
	}
	t.Fatal("the finished file was never loaded")
}

// TestWriterHoldingFileOpenIsNotWaitedForever: a writer that keeps the
// file open without writing is waited for a minute of quiet debounces,
// then the file is loaded, and the log says why it waited and why it
// stopped.
func TestWriterHoldingFileOpenIsNotWaitedForever(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyward.yaml")
	if err := os.WriteFile(path, []byte("routes: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &strings.Builder{}
	var mu sync.Mutex
	w := watchWith(t, path, slog.New(slog.NewTextHandler(lockedWriter{&mu, logs}, nil)))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("listen: \":1\"\n"); err != nil {
		t.Fatal(err)
	}
	steps := 0 // debounces fired, the one that reloaded included
	for steps < 2*int(maxHold/Debounce) {
		steps++
		if _, reloaded := w.step(t); reloaded {
			break
		}
	}
	if want := int(maxHold / Debounce); steps < want {
		t.Errorf("loaded after %d quiet debounces with a writer holding the file; want at least %d", steps, want)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{"still open for writing; reloading once the writer closes it", "still open for writing; reloading it anyway"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log lacks %q:\n%s", want, logs.String())
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
