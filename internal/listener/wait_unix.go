//go:build unix

package listener

import (
	"io"
	"net"
	"os"
	"syscall"
)

// ready is the RawConn callback of WaitRead. The runtime forgets a
// readiness event it saw before the call (RawConn.Read resets it), so the
// first call looks: on an idle connection (nothing held) it reads into a
// pooled buffer, as Read would, so input already there costs one syscall
// and is scanned at once; with a head held it peeks. "Nothing yet" parks
// the goroutine until the socket becomes readable; the next call is then
// "ready" without a syscall, and Read reads.
func (c *conn) ready(fd uintptr) bool {
	if c.waited {
		return true
	}
	c.waited = true
	if c.buf != nil {
		_, _, err := syscall.Recvfrom(int(fd), c.peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		for err == syscall.EINTR {
			_, _, err = syscall.Recvfrom(int(fd), c.peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		}
		return !wouldBlock(err)
	}
	c.getBuf()
	n, err := syscall.Read(int(fd), c.buf)
	for err == syscall.EINTR {
		// Interrupted, not empty: "not ready" would wait for a readiness
		// event that may already have been consumed.
		n, err = syscall.Read(int(fd), c.buf)
	}
	switch {
	case wouldBlock(err):
		c.putBuf()
		return false
	case err != nil:
		c.putBuf()
		c.readErr = &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", err)}
	case n <= 0:
		c.putBuf()
		c.readErr = io.EOF
	default:
		c.took(n, nil)
		if c.r == c.w {
			c.freeBuf() // a refused head passed nothing
		}
	}
	return true
}

func wouldBlock(err error) bool {
	return err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
}
