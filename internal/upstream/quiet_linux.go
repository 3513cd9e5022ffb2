package upstream

import (
	"net"
	"syscall"
)

// socketQuiet reports whether nothing waits to be read on nc's socket: a
// non-blocking peek (MSG_PEEK|MSG_DONTWAIT) finds neither bytes nor the
// upstream's FIN. It costs one recvfrom system call and reads nothing.
func socketQuiet(nc net.Conn) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true // a custom dialer's conn: the buffered checks and the retry rule are all there is
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	quiet := true
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		quiet = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK || err == syscall.EINTR
		return true
	})
	return err == nil && quiet
}
