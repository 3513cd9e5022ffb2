package security_test

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/server"
)

const downloadConfig = `
secrets:
  github: { env: GITHUB_TOKEN }
routes:
  - name: download
    path: /download
    timeout: 60s
    idle_timeout: 60s
    upstream: "{{UP}}/download"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
  - name: small
    path: /small
    upstream: "{{UP}}/small"
`

// serveWithLimits serves h's gateway as internal/server does (server.Public:
// the framing guard in front of internal/http1), with at most maxConns
// client connections and the given write timeout, and returns its
// address.
func serveWithLimits(t *testing.T, h http.Handler, st gateway.Settings, maxConns int, writeTimeout time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	st.MaxConnections = maxConns
	srv, guarded := server.Public(ln, h, st, slog.New(slog.DiscardHandler))
	srv.WriteTimeout = writeTimeout
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(guarded)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// TestServerStalledReadersReleaseSlots: clients that ask for a large
// streamed response and never read it must not hold their connection
// slots, nor their upstream requests, past the write timeout. With every
// slot taken by such clients, a new client is served once the timeout has
// cut them, and each upstream request is stopped.
func TestServerStalledReadersReleaseSlots(t *testing.T) {
	const (
		stallers     = 4
		writeTimeout = 300 * time.Millisecond
	)
	started := make(chan struct{}, stallers)
	stopped := make(chan struct{}, stallers)
	chunk := bytes.Repeat([]byte("d"), 32<<10)
	up := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/download" {
			_, _ = io.WriteString(w, "small")
			return
		}
		started <- struct{}{}
		defer func() { stopped <- struct{}{} }()
		fl := w.(http.Flusher)
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			fl.Flush()
		}
	}
	h := newHarness(t, downloadConfig, up)
	addr := serveWithLimits(t, gateway.NewHandler(h.Gateway), h.Gateway.Settings(), stallers, writeTimeout)

	for range stallers {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, "GET /download HTTP/1.1\r\nHost: gw.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		// It never reads.
	}
	for range stallers {
		wait(t, started, "every stalled client's upstream request to start")
	}

	// Every slot is taken: this client is accepted only once one is free.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /small HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second)) // bounds a failure; no state is awaited by it
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("a new client was not served while stalled clients held every slot: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	h.Record(res, body)
	if res.StatusCode != http.StatusOK || string(body) != "small" {
		t.Errorf("status %d, body %q; want 200, small", res.StatusCode, body)
	}
	for range stallers {
		wait(t, stopped, "every stalled client's upstream request to stop")
	}
	h.Up.Take()
}
