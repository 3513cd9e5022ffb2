package http1_test

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"

	"github.com/keyward/keyward/internal/http1"
)

// A handler that declares Content-Length (as gateway.fail always does) and
// leaves a large body unread: the server closes the connection, so the
// response must say Connection: close.
func TestUnreadBodyDeclaredLength(t *testing.T) {
	refuse := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := `{"error":{"code":"body_too_large"}}` + "\n"
		w.Header()["Content-Length"] = []string{strconv.Itoa(len(body))}
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		_, _ = io.WriteString(w, body)
	})
	t.Run("large body", func(t *testing.T) {
		ts := start(t, &http1.Server{Handler: refuse}, guard)
		c := dial(t, ts.addr)
		const size = 1 << 20
		c.send(fmt.Sprintf("POST /x HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n", size))
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			_, _ = c.conn.Write(make([]byte, size))
		}()
		t.Cleanup(func() { c.conn.Close(); <-wrote })
		res, _ := c.roundTrip("POST")
		if !res.Close {
			t.Error("413 with Content-Length: no Connection: close, though the server closes the connection")
		}
		c.expectClosed()
	})
	t.Run("expect 100-continue", func(t *testing.T) {
		ts := start(t, &http1.Server{Handler: refuse}, guard)
		c := dial(t, ts.addr)
		c.send("POST /x HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		res, _ := c.roundTrip("POST")
		if !res.Close {
			t.Error("final response to an unanswered 100-continue: no Connection: close, though the server closes")
		}
		c.expectClosed()
	})
}

// TestContinueFromAnotherGoroutine: the body is read on another goroutine
// (as internal/upstream's writer does) while the handler commits its
// response; the 100 Continue and the head must not race (found in review,
// by -race).
func TestContinueFromAnotherGoroutine(t *testing.T) {
	continued := make(chan struct{}) // the client has read the 100 Continue
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		done := make(chan struct{})
		go func() { // like upstream.writeBody
			defer close(done)
			_, _ = io.ReadAll(r.Body)
		}()
		<-continued
		w.Header()["Content-Length"] = []string{"2"}
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "ok") // commit: writes w.committed
		_ = r.Body.Close()
		<-done
	})
	ts := start(t, &http1.Server{Handler: h}, guard)
	c := dial(t, ts.addr)
	c.send("POST /x HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	if got := c.line() + c.line(); got != "HTTP/1.1 100 Continue\r\n\r\n" {
		t.Fatalf("got %q", got)
	}
	close(continued)
	c.send("hello")
	if res, body := c.roundTrip("POST"); res.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("status %d body %q, want 200 ok", res.StatusCode, body)
	}
}
