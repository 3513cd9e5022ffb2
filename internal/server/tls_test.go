package server_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/certs/acme/acmetest"
	"github.com/keyward/keyward/internal/certs/certtest"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/server"
)

// safety bounds every wait, so a broken server fails a test instead of
// hanging it; no test waits on it to reach a state.
const safety = 30 * time.Second

// serving is a keyward started as `keyward serve` starts it (New,
// Listen, Serve).
type serving struct {
	srv      *server.Server
	public   string // host:port
	redirect net.Addr
	logs     *logBuffer
	stop     func()
}

func serve(t *testing.T, path string) *serving {
	t.Helper()
	logs := &logBuffer{}
	srv, err := server.New(path, gateway.Options{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	public, admin, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, public, admin) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return &serving{srv: srv, public: public.Addr().String(), redirect: srv.RedirectAddr(), logs: logs, stop: stop}
}

// httpsClient trusts ca, speaks HTTP/2 or HTTP/1.1, and resolves every
// name to addr.
func httpsClient(ca *certtest.CA, addr string, h2 bool, keepAlive bool) *http.Client {
	tr := &http.Transport{TLSClientConfig: ca.ClientConfig(), DisableKeepAlives: !keepAlive,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}}
	var p http.Protocols
	p.SetHTTP1(!h2)
	p.SetHTTP2(h2)
	tr.Protocols = &p
	return &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func upstream(t *testing.T) string {
	t.Helper()
	up := newBlockingUpstream(t)
	return up.srv.URL
}

// TestTLSRotationUnderLoad: while clients keep making new HTTPS
// connections (HTTP/1.1 and HTTP/2), the certificate files are replaced
// three times; each new certificate is served once written, and not one
// request fails.
func TestTLSRotationUnderLoad(t *testing.T) {
	ca := certtest.NewCA(t)
	dir := t.TempDir()
	leaf := ca.Leaf(t, certtest.Options{})
	leaf.Write(t, dir)
	path := filepath.Join(dir, "keyward.yaml")
	cfg := fmt.Sprintf("listen: \"127.0.0.1:0\"\ntls: { cert: cert.pem, key: key.pem, hsts: 1y }\nroutes:\n  - { name: b, path: /b, upstream: \"%s/b\" }\n", upstream(t))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := serve(t, path)

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// New connections (h1 without keep-alive: a handshake each),
			// and a kept HTTP/2 connection that must survive rotations.
			c := httpsClient(ca, s.public, i%2 == 0, i%2 == 0)
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := c.Get("https://localhost/b")
				if err == nil {
					_, err = io.ReadAll(res.Body)
					res.Body.Close()
					if err == nil && (res.StatusCode != 200 || res.Header.Get("Strict-Transport-Security") != "max-age=31536000") {
						err = fmt.Errorf("status %d, HSTS %q", res.StatusCode, res.Header.Get("Strict-Transport-Security"))
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	served := func() string {
		c, err := tls.Dial("tcp", s.public, ca.ClientConfig("http/1.1"))
		if err != nil {
			return ""
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	for range 3 {
		next := ca.Leaf(t, certtest.Options{})
		next.Write(t, dir)
		waitFor(t, "the new certificate to be served", func() bool { return served() == next.Cert.SerialNumber.String() })
	}
	close(stop)
	wg.Wait()
	if t.Failed() {
		t.Log(s.logs.String())
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed during rotation; first: %v", n, n+ok.Load(), firstErr.Load())
	}
	if ok.Load() == 0 {
		t.Error("no request was made: the test proves nothing")
	}
	t.Logf("%d requests across three rotations", ok.Load())
}

// TestHTTPRedirect: the http_redirect listener sends every request to the
// same host and target over https, 301 for GET and HEAD and 308 for the
// rest, on the public listener's port; it serves no route.
func TestHTTPRedirect(t *testing.T) {
	ca := certtest.NewCA(t)
	dir := t.TempDir()
	ca.Leaf(t, certtest.Options{}).Write(t, dir)
	path := filepath.Join(dir, "keyward.yaml")
	cfg := fmt.Sprintf("listen: \"127.0.0.1:0\"\nhttp_redirect: \"127.0.0.1:0\"\ntls: { cert: cert.pem, key: key.pem, hsts: 1y }\nroutes:\n  - { name: b, path: /b, upstream: \"%s/b\" }\n", upstream(t))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := serve(t, path)
	_, port, _ := net.SplitHostPort(s.public)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tt := range []struct {
		method, host, target string
		status               int
		location             string
	}{
		{"GET", "gw.example.com", "/b?x=1&y=%2F", http.StatusMovedPermanently, "https://gw.example.com:" + port + "/b?x=1&y=%2F"},
		{"HEAD", "gw.example.com:80", "/", http.StatusMovedPermanently, "https://gw.example.com:" + port + "/"},
		{"POST", "gw.example.com", "/b", http.StatusPermanentRedirect, "https://gw.example.com:" + port + "/b"},
		{"GET", "[2001:db8::1]:80", "/b", http.StatusMovedPermanently, "https://[2001:db8::1]:" + port + "/b"},
	} {
		req, err := http.NewRequest(tt.method, "http://"+s.redirect.String()+tt.target, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = tt.host
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != tt.status || res.Header.Get("Location") != tt.location {
			t.Errorf("%s %s%s: %d %q, want %d %q", tt.method, tt.host, tt.target, res.StatusCode, res.Header.Get("Location"), tt.status, tt.location)
		}
		if res.Header.Get("Strict-Transport-Security") != "" {
			t.Errorf("%s %s: HSTS sent over plain HTTP", tt.method, tt.target)
		}
	}
}

// TestACMEThroughServer: with tls.acme and http_redirect, `keyward serve`
// gets a certificate from the CA (pebble, checking its challenges on this
// machine), serves HTTPS with it, and a restart on the same storage serves
// the stored certificate at once.
func TestACMEThroughServer(t *testing.T) {
	tlsPort, httpPort := acmetest.FreePort(t), acmetest.FreePort(t)
	p := acmetest.Start(t, acmetest.Options{TLSPort: tlsPort, HTTPPort: httpPort})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pebble.pem"), p.RootsPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "keyward.yaml")
	cfg := fmt.Sprintf(`listen: "127.0.0.1:%d"
http_redirect: "127.0.0.1:%d"
tls:
  acme: { domains: [gw.keyward.test], email: ops@keyward.test, storage: acme, ca: %q, ca_root: pebble.pem }
routes:
  - { name: b, path: /b, upstream: "%s/b" }
`, tlsPort, httpPort, p.URL, upstream(t))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := serve(t, path)
	serial := func() string {
		c, err := tls.Dial("tcp", s.public, &tls.Config{ServerName: "gw.keyward.test", InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		if err != nil {
			return ""
		}
		defer c.Close()
		leaf := c.ConnectionState().PeerCertificates[0]
		if !slices.Contains(leaf.DNSNames, "gw.keyward.test") {
			return ""
		}
		return leaf.SerialNumber.String()
	}
	var first string
	waitFor(t, "a certificate from the CA", func() bool { first = serial(); return first != "" })

	// The redirect listener answers what is not a challenge.
	res, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).
		Get("http://" + s.redirect.String() + "/b")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMovedPermanently {
		t.Errorf("redirect listener: status %d, want 301", res.StatusCode)
	}
	s.stop()

	s2 := serve(t, path)
	s.public = s2.public
	if got := serial(); got != first {
		t.Errorf("after a restart, serial %q; want the stored certificate %q at once", got, first)
	}
	if strings.Contains(s2.logs.String(), "certificate obtained successfully") {
		t.Error("the restart asked the CA for a new certificate")
	}
}

// waitFor polls cond until it holds, failing the test after safety.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(safety)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCheckReportsTLSProblems: the problems `keyward check` finds in the
// tls block and server.engine stop a start, each on its line.
func TestCheckReportsTLSProblems(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keyward.yaml")
	cfg := "listen: \"127.0.0.1:0\"\nserver: { engine: nginx }\ntls:\n  cert: missing.pem\n  key: missing-key.pem\nhttp_redirect: \"80\"\nroutes:\n  - { name: b, path: /b, upstream: \"http://127.0.0.1:1/b\" }\n"
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := server.New(path, gateway.Options{Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		t.Fatal("a config with a missing certificate started")
	}
	for _, want := range []string{
		"keyward.yaml:2: server.engine: unknown engine \"nginx\"",
		"keyward.yaml:4: tls.cert: reading the certificate",
		"keyward.yaml:5: tls.key: reading the key",
		"keyward.yaml:6: http_redirect: bad address \"80\"",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}
