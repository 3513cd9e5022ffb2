// Package reload turns file changes and SIGHUP into calls to a reload
// function, debounced so that an editor's save (often several writes and a
// rename) reloads once, and held back while the file is still being
// written, so that a writer pausing mid-file never has half a file loaded.
package reload

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Debounce is how long the watcher waits after the last change, and how
// long the file's size and modification time must then stay the same.
const Debounce = 250 * time.Millisecond

// maxHold bounds how long a changed file still open for writing is held
// back: a process may keep the file open without writing (or a
// truncate(2) by name looks like a write that never ends).
const maxHold = time.Minute

// Watch calls reload after the file at path changes, and whenever signal
// receives, until ctx ends. It is Watcher.Run with the defaults.
func Watch(ctx context.Context, path string, signal <-chan struct{}, reload func()) error {
	return (&Watcher{Path: path, Signal: signal, Reload: reload}).Run(ctx)
}

// Watcher calls Reload when the file at Path has changed and stopped
// changing, and whenever Signal receives.
//
// A change counts once the file has been quiet for Debounce: no change
// event, the same size, modification time and identity as when the last
// event came (checked right before Reload, which reads it), and, on
// Linux, no process that wrote to it still holding it open for writing
// (inotify's IN_CLOSE_WRITE ends a write). A writer that pauses mid-file
// is waited for however long the pause (up to a minute); the only
// writing that is safe everywhere is to write a new file and rename it
// over the config, which replaces it at once (docs/OPERATIONS.md).
type Watcher struct {
	// Path is the file to watch. Its directory is watched, not the file:
	// editors and Kubernetes ConfigMaps replace the file by renaming,
	// which would end a watch on the file itself.
	Path string
	// Signal, when it receives, reloads at once (SIGHUP): the operator
	// says the file is ready. Nil: no signal.
	Signal <-chan struct{}
	// Reload is called from Run's goroutine, one call at a time.
	Reload func()
	// Logger says why a changed file is not loaded yet. Nil: nothing is
	// logged.
	Logger *slog.Logger
	// After returns a channel that receives once d has passed: the
	// clock, which tests drive. Nil: time.After.
	After func(d time.Duration) <-chan time.Time
}

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("starting file watcher: %w", err)
	}
	defer fw.Close()
	abs, err := filepath.Abs(w.Path)
	if err != nil {
		return fmt.Errorf("resolving %s: %w", w.Path, err)
	}
	dir := filepath.Dir(abs)
	if err := fw.Add(dir); err != nil {
		return fmt.Errorf("watching %s: %w", dir, err)
	}
	// In a Kubernetes ConfigMap or Secret volume, a file in a subdirectory
	// (tls/cert.pem) sits in a directory that is a link into the data the
	// kubelet swaps: the watch on it dies with the old data. The volume's
	// root, where "..data" is swapped, is watched too, and on a swap the
	// directory's watch is set up again on the new data.
	root := volumeRoot(dir)
	if root != "" && root != dir {
		if err := fw.Add(root); err != nil {
			return fmt.Errorf("watching %s: %w", root, err)
		}
	}
	writes := newWriters(dir, filepath.Base(abs))
	defer writes.close()
	after := w.After
	if after == nil {
		after = time.After
	}
	log := w.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	var (
		timer <-chan time.Time // nil: no change pending
		seen  fileState        // the file when the last change was seen
		held  time.Duration    // how long a quiet file was held for a writer
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return nil
			}
			if filepath.Clean(ev.Name) == abs || isConfigMapSwap(ev.Name) {
				if isConfigMapSwap(ev.Name) && root != "" && root != dir {
					_ = fw.Remove(dir)
					if err := fw.Add(dir); err != nil {
						log.Warn("watching the config's directory again after a volume update failed; reload with SIGHUP", "error", err.Error())
					}
				}
				seen, timer = stat(abs), after(Debounce)
			}
		case <-fw.Errors:
			// A dropped event is followed by the next one; keep watching.
		case <-w.Signal:
			timer, held = nil, 0
			w.Reload()
		case <-timer:
			// Re-checked right before Reload reads the file: a change whose
			// event is still queued, or that made none (a write through a
			// hard link elsewhere, a network file system), starts the
			// wait again.
			if now := stat(abs); !now.same(seen) {
				seen, timer = now, after(Debounce)
				continue
			}
			if writes.open() {
				if held == 0 {
					log.Warn("config file changed but is still open for writing; reloading once the writer closes it (or on SIGHUP)", "path", w.Path)
				}
				if held += Debounce; held < maxHold {
					timer = after(Debounce)
					continue
				}
				log.Warn("config file still open for writing; reloading it anyway", "path", w.Path, "after", maxHold.String())
			}
			timer, held = nil, 0
			w.Reload()
		}
	}
}

// fileState is what the watcher compares to tell that a file changed:
// its size, modification time and identity (a rename over it is another
// file), or that it could not be read.
type fileState struct {
	info os.FileInfo
	err  bool
}

func stat(path string) fileState {
	info, err := os.Stat(path)
	return fileState{info: info, err: err != nil}
}

func (a fileState) same(b fileState) bool {
	if a.err || b.err || a.info == nil || b.info == nil {
		return a.err == b.err && (a.info == nil) == (b.info == nil)
	}
	return a.info.Size() == b.info.Size() && a.info.ModTime().Equal(b.info.ModTime()) && os.SameFile(a.info, b.info)
}

// isConfigMapSwap recognises the "..data" symlink Kubernetes swaps when a
// mounted ConfigMap changes.
func isConfigMapSwap(name string) bool { return filepath.Base(name) == "..data" }

// volumeRoot returns the nearest directory at or above dir that holds a
// "..data" link (a Kubernetes ConfigMap or Secret volume), or "".
func volumeRoot(dir string) string {
	for d := dir; ; {
		if _, err := os.Lstat(filepath.Join(d, "..data")); err == nil {
			return d
		}
		parent := filepath.Dir(d)
		if parent == d {
			return ""
		}
		d = parent
	}
}
