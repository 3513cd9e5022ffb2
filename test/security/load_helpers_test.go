package security_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
	"github.com/keyward/keyward/internal/server"
)

// loadSafety bounds every wait of the load tests, so a broken server fails
// a test instead of hanging it; no test waits on it to reach a state.
const loadSafety = 5 * time.Second

// loadUpstream serves the routes the load tests use: /fast answers at
// once, /slow holds each request until released (or its client leaves),
// /download streams until its client leaves, /events is an event stream
// that never ends by itself.
type loadUpstream struct {
	srv      *httptest.Server
	arrived  chan string   // the path of each /slow, /download and /events request
	release  chan struct{} // closed: /slow answers
	stopped  chan string   // the path of each streaming request that ended
	releaser sync.Once
}

func newLoadUpstream(t *testing.T) *loadUpstream {
	t.Helper()
	u := &loadUpstream{arrived: make(chan string, 100), release: make(chan struct{}), stopped: make(chan string, 100)}
	chunk := bytes.Repeat([]byte("d"), 32<<10)
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			u.arrived <- r.URL.Path
			select {
			case <-u.release:
			case <-r.Context().Done():
				return
			}
		case "/download":
			u.arrived <- r.URL.Path
			defer func() { u.stopped <- r.URL.Path }()
			for r.Context().Err() == nil {
				if _, err := w.Write(chunk); err != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
			return
		case "/events":
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: tick\n\n")
			w.(http.Flusher).Flush()
			u.arrived <- r.URL.Path
			<-r.Context().Done()
			u.stopped <- r.URL.Path
			return
		}
		_, _ = io.WriteString(w, "from "+r.URL.Path)
	}))
	t.Cleanup(func() {
		u.unblock()
		u.srv.Close()
	})
	return u
}

func (u *loadUpstream) unblock() { u.releaser.Do(func() { close(u.release) }) }

// loadConfig is a config of the four routes, with server settings.
func loadConfig(up, server string) string {
	var b strings.Builder
	b.WriteString("listen: \"127.0.0.1:0\"\n")
	if server != "" {
		b.WriteString("server: { " + server + " }\n")
	}
	b.WriteString("routes:\n")
	for _, r := range []string{"fast", "slow", "download", "events"} {
		b.WriteString("  - { name: " + r + ", path: /" + r + ", upstream: \"" + up + "/" + r + "\", timeout: 60s, idle_timeout: 60s }\n")
	}
	return b.String()
}

// instance is a keyward served as `keyward serve` serves it, with an admin
// listener.
type instance struct {
	srv    *server.Server
	path   string
	addr   string // public host:port
	gw     *gatewaytest.Server
	field  string // server.engine for the suite's engine, or ""
	top    string // the tls block for the suite's engine, or ""
	admin  string // http://admin host:port
	logs   *syncLog
	cancel context.CancelFunc
	done   chan error
}

// startInstance writes yaml and serves it until the test ends, as the
// suite's engine serves (server.engine, tls with certificate files).
func startInstance(t *testing.T, yaml string) *instance {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "keyward.yaml")
	e := gatewaytest.CurrentEngine()
	field, top := gatewaytest.EngineConfig(t, e, dir)
	yaml = withEngine(yaml, field, top)
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &syncLog{}
	srv, err := server.New(path, gateway.Options{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adm, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{srv: srv, path: path, addr: pub.Addr().String(), admin: "http://" + adm.Addr().String(),
		logs: logs, cancel: cancel, done: make(chan error, 1), field: field, top: top,
		gw: gatewaytest.Remote(t, e, pub.Addr().String())}
	go func() { in.done <- srv.Serve(ctx, pub, adm) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-in.done:
		case <-time.After(2 * loadSafety):
			t.Error("Serve did not return")
		}
	})
	waitUntil(t, "the instance to be ready", func() bool { code, _ := in.readyz(t); return code == http.StatusOK })
	return in
}

// reload rewrites the config and reloads it, as a save followed by the
// watcher's call does.
func (in *instance) reload(t *testing.T, yaml string) {
	t.Helper()
	yaml = withEngine(yaml, in.field, in.top)
	if err := os.WriteFile(in.path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := in.srv.Reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
}

// readyz returns /readyz's status and its JSON reason.
func (in *instance) readyz(t *testing.T) (int, string) {
	t.Helper()
	res, err := http.Get(in.admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var v struct {
		Ready  bool   `json:"ready"`
		Reason string `json:"reason"`
	}
	if err := json.NewDecoder(res.Body).Decode(&v); err != nil {
		t.Fatalf("/readyz body: %v", err)
	}
	if v.Ready != (res.StatusCode == http.StatusOK) {
		t.Errorf("/readyz: status %d with ready %v", res.StatusCode, v.Ready)
	}
	return res.StatusCode, v.Reason
}

// metric returns the value line of a metric without labels, e.g.
// "keyward_connections_open 2".
func (in *instance) metric(t *testing.T, name string) string {
	t.Helper()
	res, err := http.Get(in.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, name+" ") {
			return line
		}
	}
	return ""
}

// withEngine adds to a loadConfig yaml the server.engine field and tls
// block of the suite's engine (see gatewaytest.EngineConfig).
func withEngine(yaml, field, top string) string {
	if field != "" {
		if strings.Contains(yaml, "server: { ") {
			yaml = strings.Replace(yaml, "server: { ", "server: { "+field+", ", 1)
		} else {
			yaml = "server: { " + field + " }\n" + yaml
		}
	}
	return top + yaml
}

// loadClient is a raw keep-alive client connection.
type loadClient struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
	sent chan error // the last send's write, once done
}

// dialLoad opens a keep-alive HTTP/1.1 connection to the instance (over
// TLS under a TLS engine). Under H2 the test skips: these tests manage
// HTTP/1.1 connections one request at a time.
func dialLoad(t *testing.T, in *instance) *loadClient {
	t.Helper()
	c := in.gw.DialH1(t)
	t.Cleanup(func() { c.Close() })
	return &loadClient{t: t, conn: c, br: bufio.NewReader(c)}
}

// send writes a GET of path. The write runs in the background: over TLS
// it completes the handshake first, which a connection waiting for a slot
// cannot do until it is admitted.
func (c *loadClient) send(path string) {
	c.t.Helper()
	c.wait()
	c.sent = make(chan error, 1)
	go func() {
		_, err := io.WriteString(c.conn, "GET "+path+" HTTP/1.1\r\nHost: gw.test\r\n\r\n")
		c.sent <- err
	}()
}

// wait waits for the last send's write and fails the test if it failed.
func (c *loadClient) wait() {
	c.t.Helper()
	if c.sent == nil {
		return
	}
	select {
	case err := <-c.sent:
		if err != nil {
			c.t.Fatalf("sending a request: %v", err)
		}
	case <-time.After(loadSafety):
		c.t.Fatal("sending a request never finished")
	}
	c.sent = nil
}

// head reads the next response's head; the body is left to the caller.
func (c *loadClient) head() *http.Response {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(loadSafety))
	res, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.t.Fatalf("reading a response: %v", err)
	}
	c.wait()
	return res
}

// get sends a GET of path and reads the whole response.
func (c *loadClient) get(path string) (*http.Response, string) {
	c.t.Helper()
	c.send(path)
	res := c.head()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		c.t.Fatalf("GET %s: reading the body: %v", path, err)
	}
	return res, string(b)
}

// closed reports whether the server closed the connection (it reads
// nothing more, for at most loadSafety).
func (c *loadClient) closed() bool {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(loadSafety))
	_, err := c.br.ReadByte()
	return err != nil && !os.IsTimeout(err)
}

// waitUntil polls cond until it holds, failing the test after loadSafety.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(loadSafety)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// syncLog is a log the server's goroutines write while the test reads it.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
