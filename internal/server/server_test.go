package server_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/server"
)

// blockingUpstream holds /slow requests until released.
type blockingUpstream struct {
	srv     *httptest.Server
	arrived chan struct{}
	release chan struct{}
}

func newBlockingUpstream(t *testing.T) *blockingUpstream {
	u := &blockingUpstream{arrived: make(chan struct{}, 10), release: make(chan struct{})}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			u.arrived <- struct{}{}
			<-u.release
		}
		_, _ = io.WriteString(w, "from "+r.URL.Path)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func writeConfig(t *testing.T, path, upstream string, routes ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("listen: \"127.0.0.1:0\"\nroutes:\n")
	for _, r := range routes {
		b.WriteString("  - { name: " + r + ", path: /" + r + ", upstream: \"" + upstream + "/" + r + "\" }\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func start(t *testing.T, path string, logs io.Writer) (*server.Server, string, context.CancelFunc, chan error) {
	t.Helper()
	srv, err := server.New(path, gateway.Options{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, nil) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return srv, "http://" + ln.Addr().String(), cancel, done
}

func TestReload(t *testing.T) {
	up := newBlockingUpstream(t)
	path := filepath.Join(t.TempDir(), "keyward.yaml")
	writeConfig(t, path, up.srv.URL, "slow", "b")
	logs := &logBuffer{}
	srv, base, _, _ := start(t, path, logs)

	// A request in flight across both reloads.
	inflight := make(chan string, 1)
	go func() {
		code, body := get(t, base+"/slow")
		inflight <- strings.TrimSpace(body) + " " + http.StatusText(code)
	}()
	<-up.arrived

	if err := os.WriteFile(path, []byte("routes:\n  - name: x\n    pathh: /x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := srv.Reload(); err == nil {
		t.Fatal("reload of a bad file succeeded")
	}
	if code, body := get(t, base+"/b"); code != 200 || body != "from /b" {
		t.Errorf("after bad reload, /b: %d %q", code, body)
	}
	if !strings.Contains(logs.String(), "still serving the previous config") || !strings.Contains(logs.String(), "routes[0].pathh: unknown field") {
		t.Errorf("bad reload not logged in full:\n%s", logs.String())
	}

	writeConfig(t, path, up.srv.URL, "slow", "c")
	if err := srv.Reload(); err != nil {
		t.Fatalf("good reload: %v", err)
	}
	if code, _ := get(t, base+"/b"); code != 404 {
		t.Errorf("after good reload, /b: %d", code)
	}
	if code, body := get(t, base+"/c"); code != 200 || body != "from /c" {
		t.Errorf("after good reload, /c: %d %q", code, body)
	}

	close(up.release)
	if got := <-inflight; got != "from /slow OK" {
		t.Errorf("in-flight request: %q", got)
	}
}

func TestShutdownDrainsInFlightRequests(t *testing.T) {
	up := newBlockingUpstream(t)
	path := filepath.Join(t.TempDir(), "keyward.yaml")
	writeConfig(t, path, up.srv.URL, "slow")
	_, base, cancel, done := start(t, path, io.Discard)

	inflight := make(chan string, 1)
	go func() {
		_, body := get(t, base+"/slow")
		inflight <- body
	}()
	<-up.arrived
	cancel()
	// Wait until shutdown has closed the listener, then check that Serve is
	// still waiting for the request in flight.
	addr := strings.TrimPrefix(base, "http://")
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still open after shutdown began")
		}
		runtime.Gosched()
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned with a request in flight: %v", err)
	default:
	}
	close(up.release)
	if got := <-inflight; got != "from /slow" {
		t.Errorf("in-flight request: %q", got)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
		done <- nil // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the last request")
	}
}

func TestAdminEndpoints(t *testing.T) {
	up := newBlockingUpstream(t)
	path := filepath.Join(t.TempDir(), "keyward.yaml")
	writeConfig(t, path, up.srv.URL, "a")
	srv, err := server.New(path, gateway.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := net.Listen("tcp", "127.0.0.1:0")
	adm, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, pub, adm) }()
	defer func() { cancel(); <-done }()

	admin := "http://" + adm.Addr().String()
	// readyz flips to ready once Serve has started; wait on the condition.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if code, _ := get(t, admin+"/readyz"); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		runtime.Gosched()
	}
	if code, body := get(t, admin+"/readyz"); code != 200 || body != "{\"ready\":true}\n" {
		t.Errorf("readyz: %d %q", code, body)
	}
	if code, body := get(t, admin+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("healthz: %d %q", code, body)
	}
	get(t, "http://"+pub.Addr().String()+"/a")
	code, body := get(t, admin+"/metrics")
	if code != 200 || !strings.Contains(body, `keyward_requests_total{method="GET",route="a",status="200"} 1`) ||
		!strings.Contains(body, `keyward_config_reloads_total{result="ok"} 1`) {
		t.Errorf("metrics: %d\n%s", code, body)
	}
}

// TestPublicListenerRefusesAmbiguousFraming: the served listener is
// guarded, so a request with both Content-Length and Transfer-Encoding
// (a smuggling ingredient net/http itself accepts) is refused and the
// connection closed, and the gateway never sees it.
func TestPublicListenerRefusesAmbiguousFraming(t *testing.T) {
	up := newBlockingUpstream(t)
	path := filepath.Join(t.TempDir(), "keyward.yaml")
	writeConfig(t, path, up.srv.URL, "a")
	_, base, _, _ := start(t, path, io.Discard)
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n")
	all, _ := io.ReadAll(conn) // returns once the guard closes the connection
	got := string(all)
	if !strings.HasPrefix(got, "HTTP/1.1 400 ") || !strings.Contains(got, `"code":"bad_framing"`) || strings.Count(got, "HTTP/1.1") != 1 {
		t.Errorf("response:\n%s", got)
	}
}

// TestReloadTightenedOutboundDenyClosesPools: a reload that adds the
// upstream's address to outbound.deny holds for the very next request,
// although traffic kept the old config's upstream connections warm and
// one request is still in flight on one of them. Before, pooled
// connections were reused as long as traffic flowed.
func TestReloadTightenedOutboundDenyClosesPools(t *testing.T) {
	up := newBlockingUpstream(t)
	_, port, _ := net.SplitHostPort(up.srv.Listener.Addr().String())
	// A host name, not an IP literal: the policy judges what names
	// resolve to (an address written in the config is the operator's).
	upstream := "http://localhost:" + port
	path := filepath.Join(t.TempDir(), "keyward.yaml")
	write := func(deny string) {
		t.Helper()
		cfg := "listen: \"127.0.0.1:0\"\n" + deny + "routes:\n" +
			"  - { name: a, path: /a, upstream: \"" + upstream + "/a\" }\n" +
			"  - { name: slow, path: /slow, upstream: \"" + upstream + "/slow\" }\n"
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	srv, base, _, _ := start(t, path, io.Discard)
	for range 5 { // warm the pool
		if code, body := get(t, base+"/a"); code != 200 || body != "from /a" {
			t.Fatalf("before: %d %q", code, body)
		}
	}
	inflight := make(chan int, 1)
	go func() {
		code, _ := get(t, base+"/slow")
		inflight <- code
	}()
	<-up.arrived

	write("outbound: { deny: [\"127.0.0.0/8\", \"::1/128\"] }\n")
	if err := srv.Reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	for range 3 {
		code, body := get(t, base+"/a")
		if code != http.StatusBadGateway || !strings.Contains(body, "upstream_address_denied") {
			t.Fatalf("after tightening: %d %q, want 502 upstream_address_denied", code, body)
		}
	}
	// The request that started under the old config finishes on it, and
	// its connection is closed, not pooled, when it ends.
	close(up.release)
	if code := <-inflight; code != 200 {
		t.Errorf("in-flight request: %d", code)
	}
	if code, _ := get(t, base+"/a"); code != http.StatusBadGateway {
		t.Errorf("after the in-flight request: %d, want 502", code)
	}
}

// TestReloadLogsWarningsOnce: a config's warnings are logged at start and
// then only when a reload brings a new one; the start and reload lines
// count routes, stages and mounted routes as keyward check does.
func TestReloadLogsWarningsOnce(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	path := filepath.Join(t.TempDir(), "keyward.yaml")
	write := func(routes ...string) {
		cfg := "listen: \"127.0.0.1:0\"\nstages:\n  dev: { prefix: /dev }\n  prod: { prefix: /prod }\nroutes:\n"
		for _, r := range routes {
			cfg += "  - { name: " + r + ", path: /" + r + ", methods: [POST], upstream: \"" + up.URL + "/" + r + "\" }\n"
		}
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	count := func(logs, warning string) int { return strings.Count(logs, warning) }
	write("a")
	logs := &logBuffer{}
	srv, _, _, _ := start(t, path, logs)
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	write("a", "b")
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if n := count(out, `routes[0].methods: write methods`); n != 1 {
		t.Errorf("route a's warning logged %d times, want 1:\n%s", n, out)
	}
	if n := count(out, `routes[1].methods: write methods`); n != 1 {
		t.Errorf("route b's warning (new in the second reload) logged %d times, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, `"msg":"config reloaded","routes":2,"stages":2,"mounted":4`) {
		t.Errorf("the reload line does not count routes, stages and mounted routes:\n%s", out)
	}
}
