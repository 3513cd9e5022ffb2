//go:build !linux

package upstream

import "net"

// socketQuiet assumes nothing waits on the socket where no non-blocking
// peek is implemented: only bytes already read into the connection's
// buffers are seen, and a connection the upstream closed is found by the
// retry rule in RoundTrip.
func socketQuiet(net.Conn) bool { return true }
