package security_test

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
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

// serveWithLimits serves h's gateway as internal/server does (a
// server.Front with the suite's engine), with at most maxConns client
// connections and the given write timeout.
func serveWithLimits(t *testing.T, h http.Handler, st gateway.Settings, maxConns int, writeTimeout time.Duration) *gatewaytest.Server {
	t.Helper()
	st.MaxConnections, st.WriteTimeout = maxConns, writeTimeout
	return gatewaytest.Serve(t, h, st, slog.New(slog.DiscardHandler))
}

// stallingClient asks gw for path and never reads the response: over
// HTTP/2 it never gives the server flow-control credit.
func stallingClient(t *testing.T, gw *gatewaytest.Server, path string) {
	t.Helper()
	if gw.Engine == gatewaytest.H2 {
		c := gatewaytest.DialH2(t, gw)
		if err := c.WriteHeaders(1, true, gatewaytest.H2Request("GET", path)...); err != nil {
			t.Fatal(err)
		}
		return
	}
	c := gw.DialH1(t)
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: gw.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
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
	gw := serveWithLimits(t, gateway.NewHandler(h.Gateway), h.Gateway.Settings(), stallers, writeTimeout)

	for range stallers {
		stallingClient(t, gw, "/download") // it never reads
	}
	for range stallers {
		wait(t, started, "every stalled client's upstream request to start")
	}

	// Every slot is taken: this client is accepted only once one is free.
	client := gw.Client()
	client.Timeout = 10 * time.Second // bounds a failure; no state is awaited by it
	res, err := client.Get(gw.URL + "/small")
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
