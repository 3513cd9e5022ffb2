package upstream

import (
	"crypto/tls"
	"errors"
	"os"
	"time"
)

// quiet reports whether nothing waits to be read on c, the condition for
// c to carry another exchange. Between exchanges an HTTP/1.1 connection
// has nothing to say: whatever is readable there (a second response, a
// body after the answer to a HEAD, bytes past a Content-Length, or the
// upstream's FIN) answers no request, and read as the next exchange's
// response it would reach the next client, whoever that is, as its
// answer. net/http's Transport keeps a goroutine reading every idle
// connection to notice such bytes; this client checks, without blocking,
// when a connection is pooled and again each time it is taken from the
// pool, at a system call each.
func (c *conn) quiet() bool {
	tc, ok := c.nc.(*tls.Conn)
	if !ok {
		return c.sock.isQuiet()
	}
	// The socket check sees raw records, so any record that arrived
	// (a late session ticket too) counts: a spare handshake is cheaper
	// than a crossed answer. Records already read from the socket sit in
	// the tls.Conn's own buffers, where only a Read can see them.
	return c.sock.isQuiet() && tlsQuiet(tc)
}

// aLongTimeAgo is a read deadline that has passed, for a Read that must
// not wait.
var aLongTimeAgo = time.Unix(1, 0)

// tlsQuiet reports whether tc holds no decrypted data or complete record
// it has read from the socket but not returned. A Read past its deadline
// returns what those buffers hold (data, or a close_notify as io.EOF) and
// otherwise fails at once without a system call; a read timeout leaves a
// tls.Conn usable, unlike a write timeout.
func tlsQuiet(tc *tls.Conn) bool {
	if tc.SetReadDeadline(aLongTimeAgo) != nil {
		return false
	}
	var b [1]byte
	n, err := tc.Read(b[:])
	if tc.SetReadDeadline(time.Time{}) != nil {
		return false
	}
	return n == 0 && errors.Is(err, os.ErrDeadlineExceeded)
}
