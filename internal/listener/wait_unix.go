//go:build unix

package listener

import "syscall"

// ready is the RawConn callback of WaitRead. The runtime forgets a
// readiness event it saw before the call (RawConn.Read resets it), so the
// first call peeks: input already there, an end of stream or an error
// means "ready"; nothing yet parks the goroutine until the socket becomes
// readable, and the next call is then "ready" without a syscall.
func (c *conn) ready(fd uintptr) bool {
	if c.waited {
		return true
	}
	c.waited = true
	_, _, err := syscall.Recvfrom(int(fd), c.peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK && err != syscall.EINTR
}
