package upstream

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// benchBody is the size of the benchmark's upstream answer
// (bench/upstream: 2065 bytes of JSON).
var benchBody = bytes.Repeat([]byte("x"), 2065)

// stdlibTransport is net/http's Transport tuned as the gateway used it
// before internal/upstream, for comparison.
func stdlibTransport() *http.Transport {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		DialContext:            d.DialContext,
		MaxIdleConns:           1024,
		MaxIdleConnsPerHost:    512,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
}

// rawUpstream answers every request with a fixed response and allocates
// nothing per request, so allocs/op against it are the client's own.
func rawUpstream(b *testing.B) string {
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(benchBody)) + "\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n" + string(benchBody))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					for {
						line, err := br.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(line) <= 2 {
							break
						}
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

func httptestUpstream(b *testing.B) string {
	clen := strconv.Itoa(len(benchBody))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{clen}
		_, _ = w.Write(benchBody)
	}))
	b.Cleanup(srv.Close)
	return srv.URL
}

// BenchmarkRoundTrip compares this client with the gateway's tuned
// net/http Transport on the benchmark job's exchange (bench/README.md): a GET with two headers
// and a 2 KB answer read to EOF. Against the raw upstream, allocs/op are
// the client's alone; against httptest they include net/http's server.
func BenchmarkRoundTrip(b *testing.B) {
	upstreams := []struct {
		name string
		url  func(*testing.B) string
	}{{"raw", rawUpstream}, {"httptest", httptestUpstream}}
	transports := []struct {
		name string
		new  func() http.RoundTripper
	}{
		{"stdlib", func() http.RoundTripper { return stdlibTransport() }},
		{"upstream", func() http.RoundTripper { return New(Options{}) }},
	}
	for _, up := range upstreams {
		for _, tt := range transports {
			b.Run(up.name+"/"+tt.name, func(b *testing.B) {
				url := up.url(b) + "/user/repos"
				rt := tt.new()
				defer rt.(interface{ CloseIdleConnections() }).CloseIdleConnections()
				b.Run("serial", func(b *testing.B) { roundTrips(b, rt, url, false) })
				b.Run("parallel", func(b *testing.B) { roundTrips(b, rt, url, true) })
			})
		}
	}
}

func roundTrips(b *testing.B, rt http.RoundTripper, url string, parallel bool) {
	one := func(buf []byte) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header["Authorization"] = []string{"Bearer bench-secret"}
		req.Header["Accept"] = []string{"application/vnd.github+json"}
		resp, err := rt.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, resp.Body, buf)
		resp.Body.Close()
		if err != nil || n != int64(len(benchBody)) {
			b.Fatalf("read %d bytes: %v", n, err)
		}
	}
	b.ReportAllocs()
	if !parallel {
		buf := make([]byte, 32<<10)
		for b.Loop() {
			one(buf)
		}
		return
	}
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 32<<10)
		for pb.Next() {
			one(buf)
		}
	})
}

// BenchmarkWriteHead compares writing the request head by hand with
// Request.Write, which this package could have used instead.
func BenchmarkWriteHead(b *testing.B) {
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:9001/user/repos?per_page=5", nil)
	req.Header["Authorization"] = []string{"Bearer bench-secret"}
	req.Header["Accept"] = []string{"application/vnd.github+json"}
	req.Header["User-Agent"] = []string{"keyward/dev"}
	w := bufio.NewWriterSize(io.Discard, 4<<10)
	b.Run("own", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := writeHead(w, req, nil, false); err != nil {
				b.Fatal(err)
			}
			_ = w.Flush()
		}
	})
	b.Run("Request.Write", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := req.Write(w); err != nil {
				b.Fatal(err)
			}
			_ = w.Flush()
		}
	})
}
