//go:build unix

package http1_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/http1"
)

// TestWriteTimeoutSparesSlowReader: a client that keeps reading, slowly,
// keeps its stream, even when a single Write takes several times the
// write timeout: the timeout measures progress, not the response or the
// write.
func TestWriteTimeoutSparesSlowReader(t *testing.T) {
	const (
		timeout = 200 * time.Millisecond
		size    = 512 << 10
		sip     = 16 << 10              // what the client reads at a time
		every   = 25 * time.Millisecond // how often: well under the timeout
	)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			type result struct {
				err  error
				took time.Duration
			}
			done := make(chan result, 1)
			payload := bytes.Repeat([]byte("p"), size)
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(size))
				begin := time.Now()
				_, err := w.Write(payload) // one write, sent straight from payload
				done <- result{err, time.Since(begin)}
			})
			// Small socket buffers, so that the write waits for the client.
			wrap := func(ln net.Listener) net.Listener {
				ln = smallSendBuffers{ln}
				if m.wrap != nil {
					ln = m.wrap(ln)
				}
				return ln
			}
			ts := start(t, &http1.Server{Handler: h, WriteTimeout: timeout}, wrap)
			c := dialSmall(t, ts.addr)
			c.send(get("/slow"))
			res := c.response("GET")
			tick := time.NewTicker(every) // a slow client's pace, not a wait for a state
			defer tick.Stop()
			buf := make([]byte, sip)
			var n int
			for {
				k, err := res.Body.Read(buf)
				n += k
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("after %d bytes: %v; want the whole stream", n, err)
				}
				<-tick.C
			}
			if n != size {
				t.Fatalf("read %d bytes; want %d", n, size)
			}
			r := <-done
			if r.err != nil {
				t.Errorf("the handler's Write failed: %v", r.err)
			}
			if r.took < 2*timeout {
				t.Fatalf("the write took %v: too short to show a slow reader outlasting the write timeout %v (socket buffers too large?)", r.took, timeout)
			}
		})
	}
}

// smallSendBuffers shrinks each accepted connection's send buffer.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		err = c.(*net.TCPConn).SetWriteBuffer(8 << 10)
	}
	return c, err
}

// dialSmall is dial with a small receive buffer, set before connecting so
// that the TCP window never grows past it: a slow reader then holds the
// server's writes back at once.
func dialSmall(t *testing.T, addr string) *client {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8<<10)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &client{t: t, conn: conn, br: bufio.NewReader(conn)}
}
