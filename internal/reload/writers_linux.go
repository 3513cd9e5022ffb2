package reload

import (
	"encoding/binary"
	"syscall"
)

// writers tells whether a process that wrote to the file still holds it
// open for writing, from inotify events on its directory: IN_MODIFY
// (a write or a truncation) starts a write, IN_CLOSE_WRITE ends it, and a
// file created or renamed in its place is a new file nobody is writing
// yet. fsnotify does not offer IN_CLOSE_WRITE (v1.10 keeps it
// unexported), so this is a second, non-blocking inotify instance, read
// only when the watcher is about to reload.
type writers struct {
	fd      int // -1: not tracked (inotify unavailable)
	name    string
	writing bool
}

func newWriters(dir, name string) *writers {
	fd, err := syscall.InotifyInit1(syscall.IN_NONBLOCK | syscall.IN_CLOEXEC)
	if err != nil {
		return &writers{fd: -1}
	}
	const mask = syscall.IN_MODIFY | syscall.IN_CLOSE_WRITE | syscall.IN_CREATE | syscall.IN_MOVED_TO | syscall.IN_DELETE
	if _, err := syscall.InotifyAddWatch(fd, dir, mask); err != nil {
		syscall.Close(fd)
		return &writers{fd: -1}
	}
	return &writers{fd: fd, name: name}
}

// open reads the events queued since the last call and reports whether
// the file is being written. Lost events (a queue overflow) count as no
// writer: the size and time check still holds.
func (w *writers) open() bool {
	if w.fd < 0 {
		return false
	}
	var buf [8192]byte
	for {
		n, err := syscall.Read(w.fd, buf[:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			return w.writing // EAGAIN: all read
		}
		for b := buf[:n]; len(b) >= syscall.SizeofInotifyEvent; {
			mask := binary.NativeEndian.Uint32(b[4:8])
			end := syscall.SizeofInotifyEvent + int(binary.NativeEndian.Uint32(b[12:16]))
			if end > len(b) {
				break
			}
			name := b[syscall.SizeofInotifyEvent:end]
			for len(name) > 0 && name[len(name)-1] == 0 {
				name = name[:len(name)-1]
			}
			b = b[end:]
			switch {
			case mask&syscall.IN_Q_OVERFLOW != 0:
				w.writing = false
			case string(name) != w.name:
			case mask&(syscall.IN_CLOSE_WRITE|syscall.IN_CREATE|syscall.IN_MOVED_TO|syscall.IN_DELETE) != 0:
				w.writing = false
			case mask&syscall.IN_MODIFY != 0:
				w.writing = true
			}
		}
	}
}

func (w *writers) close() {
	if w.fd >= 0 {
		syscall.Close(w.fd)
	}
}
