//go:build !unix

package apikey

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// lockWait bounds how long lock waits for another writer.
const lockWait = 10 * time.Second

// lock takes the exclusive lock of the keys file at path and returns its
// release. Without flock, the lock is the existence of path.lock, created
// exclusively; a writer that died holding it leaves it behind, and the
// error names the file to remove.
func lock(path string) (unlock func(), err error) {
	name := lockPath(path)
	deadline := time.Now().Add(lockWait)
	for {
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			f.Close()
			return func() { os.Remove(name) }, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("locking the keys file: %w", err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("locking the keys file: %s has existed for %v; remove it if no keyward is writing the keys file", name, lockWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
