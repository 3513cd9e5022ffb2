package listener

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/http1"
)

// feedConn is a client that has sent data, arriving in pieces whose sizes
// cycle through sizes. What the guard writes back is kept.
type feedConn struct {
	data    []byte
	sizes   []int
	turn    int
	written bytes.Buffer
}

func (f *feedConn) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(f.data), f.sizes[f.turn%len(f.sizes)])
	f.turn++
	copy(p, f.data[:n])
	f.data = f.data[n:]
	return n, nil
}

func (f *feedConn) Write(p []byte) (int, error)      { return f.written.Write(p) }
func (f *feedConn) Close() error                     { return nil }
func (f *feedConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (f *feedConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (f *feedConn) SetDeadline(time.Time) error      { return nil }
func (f *feedConn) SetReadDeadline(time.Time) error  { return nil }
func (f *feedConn) SetWriteDeadline(time.Time) error { return nil }

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// guardStream runs data through a guarded connection, arriving in pieces
// picked by split and read with buffers of varying size, and returns what
// the guard passed, the framing of each head it passed, and the connection.
func guardStream(t testing.TB, data []byte, split uint8) ([]byte, []framing, *conn) {
	l := Guard(newFakeListener(), Options{MaxConns: -1, MaxHeaderBytes: 8 << 10, MaxHeaders: 20})
	arrive := []int{int(split)%7 + 1, 4096, int(split)/7 + 1, 3}
	reads := []int{4096, int(split)%13 + 2, 4096, 1000}
	c := l.wrap(&feedConn{data: data, sizes: arrive}, true)
	var heads []framing
	c.onHead = func(f framing) { heads = append(heads, f) }
	var out []byte
	buf := make([]byte, 4096)
	for i := 0; ; i++ {
		n, err := c.Read(buf[:reads[i%len(reads)]])
		out = append(out, buf[:n]...)
		if err != nil {
			break
		}
		if i > 10*len(data)+10 {
			t.Fatalf("Read does not end: %d calls for %d bytes", i, len(data))
		}
	}
	return out, heads, c
}

// FuzzGuard checks that the guard never panics, passes bytes unmodified, and
// that whatever it passes, net/http parses as the same requests with the
// same body framing, ending where the guard says each one ends.
func FuzzGuard(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: k\r\n\r\n"), uint8(0))
	f.Add([]byte("POST /a HTTP/1.1\r\nHost: k\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: k\r\n\r\n"), uint8(5))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX: 1\r\n\r\nGET / HTTP/1.0\r\n\r\n"), uint8(40))
	f.Add([]byte("GET http://k:80/a?b=%zz HTTP/1.1\r\nHost: k\r\nX-N: caf\xe9\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: k\r\n\r\n"), uint8(9))
	f.Add([]byte("PUT /r HTTP/1.1\r\nHost: k\r\nContent-Length: 2\r\ncontent-length: 2\r\nTrailer: X-Sum\r\n\r\nhiGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), uint8(77))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: Chunked\r\n\r\n00a\r\n0123456789\r\n0;last\r\nA: 1\r\nB: 2\r\n\r\n"), uint8(200))
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		out, heads, c := guardStream(t, data, split)
		if !bytes.HasPrefix(data, out) {
			t.Fatalf("passed bytes are not the input's prefix:\npassed %q\ninput  %q", out, data)
		}

		cr := &countingReader{r: bytes.NewReader(out)}
		br := bufio.NewReaderSize(cr, http1.ReadBufferSize) // as the server reads
		off := func() int { return cr.n - br.Buffered() }
		// The guard has seen the last passed body end unless it stopped
		// inside it: input ran out, or a fault inside the body.
		lastComplete := c.ps.phase == phHead || (c.rejected && c.reply.Load() != nil)
		start := 0
		for i, fr := range heads {
			if off() != start {
				t.Fatalf("request %d: net/http is at byte %d, the guard at %d\n%q", i, off(), start, out)
			}
			req, err := http.ReadRequest(br)
			if err != nil {
				t.Fatalf("request %d: net/http refuses a head the guard passed: %v\n%q", i, err, out[start:])
			}
			if off() != start+fr.headLen {
				t.Fatalf("request %d: head ends at %d for net/http, %d for the guard\n%q", i, off(), start+fr.headLen, out[start:])
			}
			chunked := len(req.TransferEncoding) == 1 && req.TransferEncoding[0] == "chunked"
			if req.ContentLength != fr.contentLength || chunked != fr.chunked || len(req.TransferEncoding) > 1 {
				t.Fatalf("request %d: net/http frames the body with Content-Length %d, Transfer-Encoding %q; the guard with %d, chunked %v\n%q",
					i, req.ContentLength, req.TransferEncoding, fr.contentLength, fr.chunked, out[start:])
			}
			_, err = io.Copy(io.Discard, req.Body)
			last := i == len(heads)-1
			if err != nil && (!last || lastComplete) {
				t.Fatalf("request %d: net/http fails on a body the guard passed whole: %v\n%q", i, err, out[start:])
			}
			start = off()
		}
		if lastComplete && off() != len(out) {
			t.Fatalf("the guard passed %d bytes past the last request\n%q", len(out)-off(), out)
		}

		answered := c.reply.Load() != nil
		c.Close()
		if w := c.Conn.(*feedConn).written.Bytes(); answered {
			resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(w)), nil)
			if err != nil || !resp.Close || (resp.StatusCode != 400 && resp.StatusCode != 431) {
				t.Fatalf("refusal %q does not parse as a closing 400/431: %v", w, err)
			}
		} else if len(w) > 0 {
			t.Fatalf("the guard wrote %q without refusing a head", w)
		}
	})
}
