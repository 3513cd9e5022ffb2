package http1_test

import (
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/http1"
)

// TestFraming checks how each kind of body is delimited, and that the
// framing is right by sending a second request on the same connection.
func TestFraming(t *testing.T) {
	big := strings.Repeat("b", 5000) // past the 4 KiB held back for a length
	tests := []struct {
		name    string
		h       http.HandlerFunc
		chunked bool
		length  int64 // when not chunked
		body    string
	}{
		{
			name:   "small body gets a length",
			h:      func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hello") },
			length: 5,
			body:   "hello",
		},
		{
			name:   "no body gets a zero length",
			h:      func(w http.ResponseWriter, r *http.Request) {},
			length: 0,
		},
		{
			name: "small writes adding up to 4 KiB get a length",
			h: func(w http.ResponseWriter, r *http.Request) {
				for range 4 {
					_, _ = io.WriteString(w, strings.Repeat("s", 1024))
				}
			},
			length: 4096,
			body:   strings.Repeat("s", 4096),
		},
		{
			name: "flush gets chunks",
			h: func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.WriteString(w, "hello ")
				w.(http.Flusher).Flush()
				_, _ = io.WriteString(w, "world")
			},
			chunked: true,
			body:    "hello world",
		},
		{
			name:    "more than 4 KiB in one write gets chunks",
			h:       func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, big) },
			chunked: true,
			body:    big,
		},
		{
			name: "more than 4 KiB in small writes gets chunks",
			h: func(w http.ResponseWriter, r *http.Request) {
				for i := 0; i < len(big); i += 500 {
					_, _ = io.WriteString(w, big[i:i+500])
				}
			},
			chunked: true,
			body:    big,
		},
		{
			name: "declared length is kept",
			h: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "5000")
				_, _ = io.WriteString(w, big)
			},
			length: 5000,
			body:   big,
		},
		{
			name: "declared length survives a flush",
			h: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "5")
				_, _ = io.WriteString(w, "he")
				w.(http.Flusher).Flush()
				_, _ = io.WriteString(w, "llo")
			},
			length: 5,
			body:   "hello",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := start(t, &http1.Server{Handler: tt.h}, guard)
			c := dial(t, ts.addr)
			for i := range 2 {
				c.send(get("/"))
				res, body := c.roundTrip("GET")
				if got := res.TransferEncoding; tt.chunked != (len(got) == 1 && got[0] == "chunked") {
					t.Fatalf("request %d: Transfer-Encoding %q; want chunked %v", i, got, tt.chunked)
				}
				if !tt.chunked && res.ContentLength != tt.length {
					t.Fatalf("request %d: Content-Length %d; want %d", i, res.ContentLength, tt.length)
				}
				if body != tt.body {
					t.Fatalf("request %d: body of %d bytes; want %d", i, len(body), len(tt.body))
				}
				if res.Close {
					t.Fatalf("request %d: Connection: close; want keep-alive", i)
				}
			}
		})
	}
}

func TestTrailers(t *testing.T) {
	tests := []struct {
		name string
		h    http.HandlerFunc
		// The values were set before the head was built, so they are in
		// the header too, as with net/http.
		inHeader bool
	}{
		{
			name: "announced",
			h: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Trailer", "X-Checksum, X-Count")
				_, _ = io.WriteString(w, "hello")
				w.(http.Flusher).Flush()
				w.Header().Set("X-Checksum", "abc")
				w.Header().Set("X-Count", "1")
			},
		},
		{
			name: "announced, body past 4 KiB",
			h: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Trailer", "X-Checksum")
				w.Header().Add("Trailer", "X-Count")
				_, _ = io.WriteString(w, strings.Repeat("x", 5000))
				w.Header().Set("X-Checksum", "abc")
				w.Header().Set("X-Count", "1")
			},
		},
		{
			name: "announced, small body, no flush",
			h: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Trailer", "X-Checksum, X-Count")
				_, _ = io.WriteString(w, "hello")
				w.Header().Set("X-Checksum", "abc")
				w.Header().Set("X-Count", "1")
			},
			inHeader: true,
		},
		{
			name: "TrailerPrefix",
			h: func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.WriteString(w, "hello")
				w.(http.Flusher).Flush()
				w.Header().Set(http.TrailerPrefix+"X-Checksum", "abc")
				w.Header().Set(http.TrailerPrefix+"X-Count", "1")
			},
		},
	}
	want := http.Header{"X-Checksum": {"abc"}, "X-Count": {"1"}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := start(t, &http1.Server{Handler: tt.h}, guard)
			c := dial(t, ts.addr)
			for i := range 2 {
				c.send(get("/"))
				res, _ := c.roundTrip("GET")
				if diff := cmp.Diff(want, res.Trailer); diff != "" {
					t.Fatalf("request %d: trailers (-want +got):\n%s", i, diff)
				}
				if !tt.inHeader && res.Header.Get("X-Checksum") != "" {
					t.Fatalf("request %d: trailer X-Checksum sent in the header", i)
				}
			}
		})
	}
}

// TestStreaming proves a flushed event reaches the client while its
// handler is still running: the handler waits until the client read it.
func TestStreaming(t *testing.T) {
	const event = "data: one\n\n"
	read := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, event)
		w.(http.Flusher).Flush()
		select {
		case <-read:
		case <-time.After(safety):
			t.Error("the client did not get the flushed event while the handler ran")
			return
		}
		_, _ = io.WriteString(w, "data: two\n\n")
	})
	ts := start(t, &http1.Server{Handler: h}, guard)
	c := dial(t, ts.addr)
	c.send(get("/events"))
	res := c.response("GET")
	b := make([]byte, len(event))
	if _, err := io.ReadFull(res.Body, b); err != nil || string(b) != event {
		t.Fatalf("first event %q (%v); want %q", b, err, event)
	}
	close(read)
	rest, err := io.ReadAll(res.Body)
	if err != nil || string(rest) != "data: two\n\n" {
		t.Fatalf("rest of the stream %q (%v); want the second event", rest, err)
	}
}

// TestNoBody covers the responses that carry no body, each followed by a
// request on the same connection, which a stray body byte would corrupt.
func TestNoBody(t *testing.T) {
	writeErr := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.WriteHeader(http.StatusNotModified)
		case "/next":
			_, _ = io.WriteString(w, "next")
			return
		}
		_, err := io.WriteString(w, "hello")
		if r.Method == http.MethodGet {
			writeErr <- err
		}
	})
	tests := []struct {
		method, path string
		status       int
		length       int64 // HEAD: the length a GET would get
		writeErr     error
	}{
		{method: "HEAD", path: "/", status: 200, length: 5},
		{method: "GET", path: "/204", status: 204, writeErr: http.ErrBodyNotAllowed},
		{method: "GET", path: "/304", status: 304, writeErr: http.ErrBodyNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			ts := start(t, &http1.Server{Handler: h}, guard)
			c := dial(t, ts.addr)
			c.send(tt.method + " " + tt.path + " HTTP/1.1\r\nHost: test\r\n\r\n" + get("/next"))
			res, _ := c.roundTrip(tt.method)
			if res.StatusCode != tt.status {
				t.Errorf("status %d; want %d", res.StatusCode, tt.status)
			}
			if tt.method == "HEAD" && res.ContentLength != tt.length {
				t.Errorf("Content-Length %d; want %d (the length a GET would get)", res.ContentLength, tt.length)
			}
			if tt.writeErr != nil {
				if err := <-writeErr; !errors.Is(err, tt.writeErr) {
					t.Errorf("Write returned %v; want %v", err, tt.writeErr)
				}
			}
			if res, body := c.roundTrip("GET"); res.StatusCode != 200 || body != "next" {
				t.Fatalf("next response: status %d, body %q; want 200, next", res.StatusCode, body)
			}
		})
	}
}

func TestContentLengthMismatch(t *testing.T) {
	t.Run("longer", func(t *testing.T) {
		writeErr := make(chan error, 1)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "3")
			if _, err := io.WriteString(w, "abc"); err != nil {
				t.Errorf("writing the declared 3 bytes: %v", err)
			}
			_, err := io.WriteString(w, "d")
			writeErr <- err
		})
		ts := start(t, &http1.Server{Handler: h}, guard)
		c := dial(t, ts.addr)
		c.send(get("/"))
		_, body := c.roundTrip("GET")
		if err := <-writeErr; !errors.Is(err, http.ErrContentLength) {
			t.Errorf("writing past Content-Length returned %v; want http.ErrContentLength", err)
		}
		if body != "abc" {
			t.Errorf("body %q; want abc", body)
		}
		c.expectClosed()
	})

	t.Run("shorter", func(t *testing.T) {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "10")
			_, _ = io.WriteString(w, "abc")
		})
		ts := start(t, &http1.Server{Handler: h}, guard)
		c := dial(t, ts.addr)
		c.send(get("/"))
		res := c.response("GET")
		b, err := io.ReadAll(res.Body)
		if !errors.Is(err, io.ErrUnexpectedEOF) || string(b) != "abc" {
			t.Errorf("body %q, error %v; want abc cut short by the close (io.ErrUnexpectedEOF)", b, err)
		}
		c.expectClosed()
	})
}

func TestHTTP10(t *testing.T) {
	streamed := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello ")
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "world")
	})

	t.Run("unknown length is delimited by the close", func(t *testing.T) {
		ts := start(t, &http1.Server{Handler: streamed}, guard)
		c := dial(t, ts.addr)
		c.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
		res, body := c.roundTrip("GET")
		if res.TransferEncoding != nil || res.ContentLength != -1 {
			t.Errorf("Transfer-Encoding %q, Content-Length %d; want neither", res.TransferEncoding, res.ContentLength)
		}
		if !res.Close {
			t.Error("no Connection: close")
		}
		if body != "hello world" {
			t.Errorf("body %q; want hello world", body)
		}
		c.expectClosed()
	})

	t.Run("no keep-alive", func(t *testing.T) {
		ts := start(t, &http1.Server{Handler: pathEcho}, guard)
		c := dial(t, ts.addr)
		c.send("GET /a HTTP/1.0\r\n\r\n")
		res, body := c.roundTrip("GET")
		if res.ContentLength != 2 || body != "/a" || !res.Close {
			t.Errorf("Content-Length %d, body %q, close %v; want 2, /a, Connection: close", res.ContentLength, body, res.Close)
		}
		c.expectClosed()
	})

	t.Run("keep-alive with a known length", func(t *testing.T) {
		ts := start(t, &http1.Server{Handler: pathEcho}, guard)
		c := dial(t, ts.addr)
		for _, path := range []string{"/a", "/b"} {
			c.send("GET " + path + " HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
			res, body := c.roundTrip("GET")
			if res.ContentLength != 2 || body != path || res.Close {
				t.Fatalf("Content-Length %d, body %q, close %v; want 2, %q, keep-alive", res.ContentLength, body, res.Close, path)
			}
			if got := res.Header.Get("Connection"); got != "keep-alive" {
				t.Fatalf("Connection: %q; want keep-alive", got)
			}
		}
	})
}

func TestResponseSplitting(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Value", "a\r\nX-Injected: 1")
		w.Header()["Bad Name"] = []string{"1"}
		w.Header()["X-Name\r\nX-Injected-By-Name"] = []string{"1"}
		w.Header().Set("X-Good", "kept")
		_, _ = io.WriteString(w, "ok")
	})
	ts := start(t, &http1.Server{Handler: h}, guard)
	c := dial(t, ts.addr)
	c.send(get("/") + get("/"))
	for range 2 {
		res, body := c.roundTrip("GET")
		if body != "ok" {
			t.Fatalf("body %q; want ok", body)
		}
		for _, name := range []string{"X-Injected", "X-Injected-By-Name", "Bad Name", "X-Name"} {
			if v, ok := res.Header[name]; ok {
				t.Errorf("header %s: %q was sent", name, v)
			}
		}
		if got := res.Header.Get("X-Value"); got != "a  X-Injected: 1" {
			t.Errorf("X-Value %q; want the CR and LF turned into spaces", got)
		}
		if got := res.Header.Get("X-Good"); got != "kept" {
			t.Errorf("X-Good %q; want kept", got)
		}
	}
}

func TestStatusLineAndDate(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(599) })
	ts := start(t, &http1.Server{Handler: h}, guard)
	c := dial(t, ts.addr)
	c.send(get("/"))
	if got := c.line(); got != "HTTP/1.1 599 status code 599\r\n" {
		t.Fatalf("status line %q; want HTTP/1.1 599 status code 599", got)
	}
	hdr, err := textproto.NewReader(c.br).ReadMIMEHeader()
	if err != nil {
		t.Fatal(err)
	}
	d, err := http.ParseTime(hdr.Get("Date"))
	if err != nil {
		t.Fatalf("Date %q: %v", hdr.Get("Date"), err)
	}
	if age := time.Since(d); age < -time.Minute || age > time.Minute {
		t.Errorf("Date %v is not about now", d)
	}
}
