package upstream

import (
	"net"
	"syscall"
)

// socket checks a connection's socket for bytes or a FIN without reading
// them. What a check needs is made once per connection (the raw conn,
// the callback as a method value, its buffer), so a check allocates
// nothing and costs one recvfrom system call.
type socket struct {
	rc     syscall.RawConn // nil when the conn is not a socket (a custom dialer's): nothing to check
	peekFn func(fd uintptr) bool
	buf    [1]byte
	quiet  bool
}

// init prepares s for nc, the connection as dialled (under any TLS).
func (s *socket) init(nc net.Conn) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	s.rc = rc
	s.peekFn = s.peek
}

// isQuiet reports whether nothing waits to be read on the socket: a
// non-blocking peek (MSG_PEEK|MSG_DONTWAIT) finds neither bytes nor the
// upstream's FIN. A conn that is not a socket counts as quiet: the
// buffered checks and the retry rule are all there is for it.
func (s *socket) isQuiet() bool {
	if s.rc == nil {
		return true
	}
	s.quiet = false
	return s.rc.Read(s.peekFn) == nil && s.quiet
}

func (s *socket) peek(fd uintptr) bool {
	_, _, err := syscall.Recvfrom(int(fd), s.buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	s.quiet = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK || err == syscall.EINTR
	return true
}
