//go:build !linux

package upstream

import "net"

// socket would check a connection's socket for bytes or a FIN; no
// non-blocking peek is implemented here, so only bytes already read into
// the connection's buffers are seen, and a connection the upstream closed
// is found by the retry rule in RoundTrip.
type socket struct{}

func (s *socket) init(net.Conn) {}

func (s *socket) isQuiet() bool { return true }
