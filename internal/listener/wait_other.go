//go:build !unix

package listener

// ready is the RawConn callback of WaitRead; without a portable peek it
// never waits, and the server's read waits instead (holding its buffer).
func (c *conn) ready(uintptr) bool { return true }
