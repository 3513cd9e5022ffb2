//go:build unix

package apikey

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lock takes the exclusive lock of the keys file at path, held in
// path.lock, and returns its release. Every read-modify-write of the
// keys file or of its last uses holds it, so that two `keyward keys
// create` run at once, or a create and a server writing last uses, never
// lose each other's write. An flock lock is released by the kernel when
// its holder dies, so a crashed command leaves no stale lock. The lock
// file is never removed: removing it would let two writers lock two
// different files of the same name.
func lock(path string) (unlock func(), err error) {
	name := lockPath(path)
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking the keys file: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking the keys file %s: %w", name, err)
	}
	// Closing the file releases the lock.
	return func() { f.Close() }, nil
}
