// Package reload turns file changes and SIGHUP into calls to a reload
// function, debounced so that an editor's save (often several writes and a
// rename) reloads once.
package reload

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Debounce is how long the watcher waits after the last change.
const Debounce = 250 * time.Millisecond

// Watch calls reload after the file at path changes, and whenever signal
// receives, until ctx ends. It watches the directory, not the file,
// because editors and Kubernetes ConfigMaps replace the file by renaming,
// which would end a watch on the file itself.
func Watch(ctx context.Context, path string, signal <-chan struct{}, reload func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("starting file watcher: %w", err)
	}
	defer w.Close()
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("resolving %s: %w", path, err)
	}
	if err := w.Add(filepath.Dir(abs)); err != nil {
		return fmt.Errorf("watching %s: %w", filepath.Dir(abs), err)
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if filepath.Clean(ev.Name) == abs || isConfigMapSwap(ev.Name) {
				timer.Reset(Debounce)
			}
		case <-w.Errors:
			// A dropped event is followed by the next one; keep watching.
		case <-signal:
			reload()
		case <-timer.C:
			reload()
		}
	}
}

// isConfigMapSwap recognises the "..data" symlink Kubernetes swaps when a
// mounted ConfigMap changes.
func isConfigMapSwap(name string) bool { return filepath.Base(name) == "..data" }
