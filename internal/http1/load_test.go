package http1_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/http1"
	"github.com/keyward/keyward/internal/listener"
)

// startLimited serves srv behind the guard with at most max connections,
// the server closing idle ones for the guard as keyward's public listener
// does, and returns the guard too.
func startLimited(t *testing.T, srv *http1.Server, max int) (*testServer, *listener.Listener) {
	t.Helper()
	var g *listener.Listener
	ts := start(t, srv, func(ln net.Listener) net.Listener {
		g = listener.Guard(ln, listener.Options{MaxConns: max, Idle: srv})
		return g
	})
	return ts, g
}

// TestFullTableClosesLongestIdle: with every slot held by an idle
// keep-alive connection, a new client is served at once, not after the
// idle timeout, and the connection closed for it is the one idle the
// longest; the others keep working.
func TestFullTableClosesLongestIdle(t *testing.T) {
	srv := &http1.Server{Handler: pathEcho, IdleTimeout: time.Hour}
	ts, g := startLimited(t, srv, 3)
	var idle []*client
	for i, path := range []string{"/1", "/2", "/3"} {
		c := dial(t, ts.addr)
		c.send(get(path))
		if res, body := c.roundTrip("GET"); body != path || res.Close {
			t.Fatalf("%s: body %q, close %v", path, body, res.Close)
		}
		// Each goes idle before the next: the order CloseIdle must keep.
		waitFor(t, "the connection to go idle", func() bool { return http1.IdleConns(srv) == i+1 })
		idle = append(idle, c)
	}

	fresh := dial(t, ts.addr)
	fresh.send(get("/new"))
	if _, body := fresh.roundTrip("GET"); body != "/new" {
		t.Fatalf("new client: body %q", body)
	}
	idle[0].expectClosed()
	for i, c := range idle[1:] {
		c.send(get("/again"))
		if _, body := c.roundTrip("GET"); body != "/again" {
			t.Errorf("connection %d after the admission: body %q", i+2, body)
		}
	}
	if n := g.Reclaimed(); n != 1 {
		t.Errorf("Reclaimed() = %d, want 1", n)
	}
}

// TestFullTableBusyConnectionCloses: with every slot busy, a waiting
// client is admitted when a request ends: that response says
// Connection: close and its connection closes, instead of staying open
// idle while the other waits.
func TestFullTableBusyConnectionCloses(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, r.URL.Path)
	})
	srv := &http1.Server{Handler: h, IdleTimeout: time.Hour}
	ts, g := startLimited(t, srv, 1)
	busy := dial(t, ts.addr)
	busy.send(get("/slow"))
	<-arrived
	waiting := dial(t, ts.addr)
	waiting.send(get("/next"))
	waitFor(t, "the new connection to wait", func() bool { return g.Waiting() >= 1 })

	close(release)
	if res, body := busy.roundTrip("GET"); body != "/slow" || !res.Close {
		t.Fatalf("busy: body %q, close %v; want /slow with Connection: close", body, res.Close)
	}
	busy.expectClosed()
	if _, body := waiting.roundTrip("GET"); body != "/next" {
		t.Fatalf("waiting client: body %q", body)
	}
}

// TestSetLimits: new limits apply to connections that come afterwards
// (and to the next request of those open), without a restart.
func TestSetLimits(t *testing.T) {
	t.Run("idle timeout", func(t *testing.T) {
		srv := &http1.Server{Handler: pathEcho, IdleTimeout: time.Hour}
		ts := start(t, srv, guard)
		srv.SetLimits(http1.Limits{IdleTimeout: 100 * time.Millisecond})
		c := dial(t, ts.addr)
		c.send(get("/"))
		c.roundTrip("GET")
		c.expectClosed()
	})
	t.Run("header bytes", func(t *testing.T) {
		srv := &http1.Server{Handler: pathEcho}
		ts := start(t, srv, nil)
		c := dial(t, ts.addr)
		big := "GET / HTTP/1.1\r\nHost: test\r\nX-Big: " + strings.Repeat("b", 16<<10) + "\r\n\r\n"
		c.send(big)
		if res, _ := c.roundTrip("GET"); res.StatusCode != 200 {
			t.Fatalf("before: status %d", res.StatusCode)
		}
		srv.SetLimits(http1.Limits{MaxHeaderBytes: 4096})
		c.send(big) // the same connection's next request
		if res, _ := c.roundTrip("GET"); res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("after: status %d, want 431", res.StatusCode)
		}
	})
}

// sseHandler starts an event stream, sends one event, and when its
// context ends reports the cause on causes and aborts the response as
// keyward's forwarder does when its upstream read fails.
func sseHandler(contentType string, causes chan<- error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		causes <- context.Cause(r.Context())
		_, _ = io.WriteString(w, "data: half an ev") // then the upstream read fails
		panic(http.ErrAbortHandler)
	}
}

// TestShutdownEndsEventStream: when the drain time is up, an open event
// stream is ended cleanly (the last chunk sent), its request's context
// says ErrShutdown, and Shutdown reports the request it ended, within
// its context's deadline.
func TestShutdownEndsEventStream(t *testing.T) {
	causes := make(chan error, 1)
	srv := &http1.Server{Handler: sseHandler("text/event-stream; charset=utf-8", causes)}
	ts := start(t, srv, guard)
	c := dial(t, ts.addr)
	c.send(get("/events"))
	res := c.response("GET")
	if !slices.Equal(res.TransferEncoding, []string{"chunked"}) {
		t.Fatalf("transfer encoding %v; want chunked", res.TransferEncoding)
	}

	const drain = 400 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	start := time.Now()
	err := srv.Shutdown(ctx)
	var de *http1.DrainError
	if !errors.As(err, &de) || de.Requests != 1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v; want a *DrainError for 1 request wrapping context.DeadlineExceeded", err)
	}
	// The requests are ended a quarter of the drain before its deadline,
	// so that the stream's end fits in it; a loaded machine may be late.
	if d := time.Since(start); d < drain/2 || d > drain+drain/2 {
		t.Errorf("Shutdown returned after %v; want about %v", d, drain)
	}
	if cause := <-causes; cause != http1.ErrShutdown {
		t.Errorf("the request's context cause: %v; want ErrShutdown", cause)
	}
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading the stream: %v (read %q); want a clean end", err, body)
	}
	if !strings.HasPrefix(string(body), "data: one\n\n") {
		t.Errorf("stream %q", body)
	}
	c.expectClosed()
}

// TestShutdownCutsOtherStreams: a chunked response of another type is
// cut, not ended, when the drain time is up: its client must not take a
// truncated body for a whole one.
func TestShutdownCutsOtherStreams(t *testing.T) {
	causes := make(chan error, 1)
	srv := &http1.Server{Handler: sseHandler("application/json", causes)}
	ts := start(t, srv, guard)
	c := dial(t, ts.addr)
	c.send(get("/download"))
	res := c.response("GET")
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	_ = srv.Shutdown(ctx)
	<-causes
	if body, err := io.ReadAll(res.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("reading the body: %v (read %q); want io.ErrUnexpectedEOF", err, body)
	}
}
