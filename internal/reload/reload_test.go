package reload

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keyward.yaml")
	if err := os.WriteFile(path, []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	calls := make(chan struct{}, 10)
	signal := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, path, signal, func() { calls <- struct{}{} }) }()
	t.Cleanup(func() { cancel(); <-done })

	wait := func(what string) {
		t.Helper()
		select {
		case <-calls:
		case <-time.After(10 * time.Second):
			t.Fatalf("no reload after %s", what)
		}
	}

	signal <- struct{}{}
	wait("a signal")

	// The watcher may start after the first write; keep writing until it
	// reacts, which proves the change was seen.
	write := func(content string) {
		for i := 0; ; i++ {
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			select {
			case <-calls:
				return
			case <-time.After(2 * Debounce):
				if i > 20 {
					t.Fatal("no reload after writes")
				}
			}
		}
	}
	write("b")

	// An editor's save: write a temp file and rename it over the config.
	tmp := filepath.Join(dir, ".keyward.yaml.swp")
	if err := os.WriteFile(tmp, []byte("c"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	wait("a rename over the file")

	// A burst of writes reloads once per burst, not once per write.
	for i := range 5 {
		if err := os.WriteFile(path, []byte{byte('d' + i)}, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wait("a burst of writes")
	select {
	case <-calls:
		// A second call may come only if the burst straddled the debounce
		// window on a very slow machine; more than that is a bug.
		select {
		case <-calls:
			t.Error("a burst of 5 writes caused 3 or more reloads")
		case <-time.After(3 * Debounce):
		}
	case <-time.After(3 * Debounce):
	}

	// Other files in the directory are ignored.
	if err := os.WriteFile(filepath.Join(dir, "other.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case <-calls:
		t.Error("a change to another file caused a reload")
	case <-time.After(3 * Debounce):
	}
}
