package http1_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"

	"github.com/keyward/keyward/internal/http1"
)

// BenchmarkServer measures one keep-alive request over a loopback socket,
// behind the guard as keyward serves it, client parsing included:
//
//   - small: a 2 KiB body with its length, one write (the proxy's case).
//   - stream: 64 flushed writes of 1 KiB (server-sent events): what a
//     cost per write to the client adds up to.
//   - large: 1 MiB in 32 KiB writes (a download the gateway copies).
func BenchmarkServer(b *testing.B) {
	small := bytes.Repeat([]byte("x"), 2<<10)
	piece := bytes.Repeat([]byte("y"), 1<<10)
	block := bytes.Repeat([]byte("z"), 32<<10)
	cases := []struct {
		name string
		size int64
		h    http.HandlerFunc
	}{
		{"small", int64(len(small)), func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Content-Length"] = []string{strconv.Itoa(len(small))}
			_, _ = w.Write(small)
		}},
		{"stream", 64 * int64(len(piece)), func(w http.ResponseWriter, r *http.Request) {
			f := w.(http.Flusher)
			for range 64 {
				_, _ = w.Write(piece)
				f.Flush()
			}
		}},
		{"large", 32 * int64(len(block)), func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Content-Length"] = []string{strconv.Itoa(32 * len(block))}
			for range 32 {
				_, _ = w.Write(block)
			}
		}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			ts := start(b, &http1.Server{Handler: tc.h}, guard)
			c, err := net.Dial("tcp", ts.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			req := []byte(get("/"))
			br := bufio.NewReaderSize(c, 64<<10)
			buf := make([]byte, 64<<10)
			b.ReportAllocs()
			b.SetBytes(tc.size)
			for b.Loop() {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				res, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.CopyBuffer(io.Discard, res.Body, buf)
				res.Body.Close()
				if err != nil || res.StatusCode != http.StatusOK || n != tc.size {
					b.Fatalf("status %d, %d bytes: %v", res.StatusCode, n, err)
				}
			}
		})
	}
}

// BenchmarkConnect measures a request on a new connection, behind the
// guard: dial, accept, one small request, close. It is the accept path as
// a client meets it.
func BenchmarkConnect(b *testing.B) {
	ts := start(b, &http1.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})}, guard)
	req := []byte("GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
	buf := make([]byte, 4096)
	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		n, err := io.ReadFull(c, buf[:1])
		for err == nil && n > 0 {
			n, err = c.Read(buf)
		}
		c.Close()
		if err != io.EOF {
			b.Fatal(err)
		}
	}
}
