package listener

import (
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// loopConn delivers msg over and over, one copy per Read, as a keep-alive
// client sending one request per segment would.
type loopConn struct {
	msg []byte
}

func (l *loopConn) Read(p []byte) (int, error)          { return copy(p, l.msg), nil }
func (l *loopConn) Write(p []byte) (int, error)         { return len(p), nil }
func (l *loopConn) Close() error                        { return nil }
func (l *loopConn) LocalAddr() net.Addr                 { return &net.TCPAddr{} }
func (l *loopConn) RemoteAddr() net.Addr                { return &net.TCPAddr{} }
func (l *loopConn) SetDeadline(time.Time) error         { return nil }
func (l *loopConn) SetReadDeadline(time.Time) error     { return nil }
func (l *loopConn) SetWriteDeadline(time.Time) error    { return nil }
func (l *loopConn) CloseWrite() error                   { return nil }
func (l *loopConn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(io.Discard, r) }

var (
	// benchGET is a typical 300-byte browser GET head.
	benchGET = "GET /repos/keyward/keyward/issues?state=open&per_page=50 HTTP/1.1\r\n" +
		"Host: gw.example.com\r\n" +
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\n" +
		"Accept: application/json\r\n" +
		"Accept-Language: en-US,en;q=0.5\r\n" +
		"Accept-Encoding: gzip, deflate, br\r\n" +
		"Origin: https://app.example.com\r\n" +
		"Connection: keep-alive\r\n\r\n"
	// benchPOST is a JSON POST of 2 KiB.
	benchPOST = func() string {
		body := `{"title":"t","body":"` + strings.Repeat("x", 2048-len(`{"title":"t","body":""}`)) + `"}`
		return "POST /repos/keyward/keyward/issues HTTP/1.1\r\n" +
			"Host: gw.example.com\r\n" +
			"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\n" +
			"Content-Type: application/json\r\n" +
			"Origin: https://app.example.com\r\n" +
			fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body)) + body
	}()
)

// cpuTime is the process's user and system CPU time. Benchmarks report it
// per op besides wall time, which a loaded machine inflates.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkGuard measures the guard's cost per request: each op reads one
// whole request through a guarded connection. "raw" reads the same bytes
// from the unguarded connection, for comparison.
func BenchmarkGuard(b *testing.B) {
	for _, bc := range []struct{ name, msg string }{
		{"GET300", benchGET},
		{"POST2K", benchPOST},
	} {
		b.Run(bc.name+"/raw", func(b *testing.B) {
			c := &loopConn{msg: []byte(bc.msg)}
			buf := make([]byte, 4096)
			b.SetBytes(int64(len(bc.msg)))
			b.ReportAllocs()
			start := cpuTime()
			for b.Loop() {
				if _, err := c.Read(buf); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, start)
		})
		b.Run(bc.name+"/guarded", func(b *testing.B) {
			l := Guard(newFakeListener(), Options{MaxConns: -1})
			c := l.wrap(&loopConn{msg: []byte(bc.msg)}, true)
			buf := make([]byte, 4096)
			b.SetBytes(int64(len(bc.msg)))
			b.ReportAllocs()
			start := cpuTime()
			for b.Loop() {
				n, err := c.Read(buf)
				if err != nil || n != len(bc.msg) {
					b.Fatalf("read %d, %v; want %d", n, err, len(bc.msg))
				}
			}
			reportCPU(b, start)
		})
	}
}

// loopListener hands out one loopConn per Accept, never blocking: the cost
// of the guard's accept path without a kernel in it.
type loopListener struct{ msg []byte }

func (l *loopListener) Accept() (net.Conn, error) { return &loopConn{msg: l.msg}, nil }
func (l *loopListener) Close() error              { return nil }
func (l *loopListener) Addr() net.Addr            { return &net.TCPAddr{} }

// BenchmarkAccept measures a connection's way through the guard's accept
// path: each op accepts one connection, reads its request and closes it,
// with the default connection limit (slot accounting included) and
// without one.
func BenchmarkAccept(b *testing.B) {
	for _, bc := range []struct {
		name string
		max  int
	}{{"limited", 0}, {"unlimited", -1}} {
		b.Run(bc.name, func(b *testing.B) {
			l := Guard(&loopListener{msg: []byte(benchGET)}, Options{MaxConns: bc.max})
			buf := make([]byte, 4096)
			b.ReportAllocs()
			start := cpuTime()
			for b.Loop() {
				c, err := l.Accept()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Read(buf); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			reportCPU(b, start)
		})
	}
}
