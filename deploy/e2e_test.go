package deploy_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/keyward/keyward/internal/redisstore/redistest"
)

// instance is a keyward process started by a test.
type instance struct {
	name    string
	cmd     *exec.Cmd
	log     *syncBuffer
	exited  chan struct{}
	waitErr error
	public  string // host:port of the public (TLS) listener
	plain   string // host:port of http_redirect
	admin   string // host:port of the admin listener
}

// syncBuffer is a bytes.Buffer the process's stderr and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freeAddr returns a loopback address nothing listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// start runs `keyward serve -c cfg` with env, stops it with SIGTERM when
// the test ends (a drain must exit 0, as systemd's and Kubernetes' stops
// expect) and waits until its admin listener says it is ready.
func start(t *testing.T, bin, name, cfg string, env map[string]string, public, plain, admin string) *instance {
	t.Helper()
	in := &instance{name: name, log: &syncBuffer{}, exited: make(chan struct{}), public: public, plain: plain, admin: admin}
	in.cmd = exec.Command(bin, "serve", "-c", cfg)
	in.cmd.Env = os.Environ()
	for k, v := range env {
		in.cmd.Env = append(in.cmd.Env, k+"="+v)
	}
	in.cmd.Stdout, in.cmd.Stderr = in.log, in.log
	if err := in.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		in.waitErr = in.cmd.Wait()
		close(in.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-in.exited:
		default:
			if err := in.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Errorf("%s: SIGTERM: %v", name, err)
			}
			select {
			case <-in.exited:
				if in.waitErr != nil {
					t.Errorf("%s: after SIGTERM: %v, want exit 0\n%s", name, in.waitErr, in.log.String())
				}
			case <-time.After(time.Minute):
				in.cmd.Process.Kill()
				<-in.exited
				t.Errorf("%s: still running a minute after SIGTERM\n%s", name, in.log.String())
			}
		}
		if t.Failed() {
			t.Logf("%s's log:\n%s", name, in.log.String())
		}
	})

	// Poll /readyz as a load balancer would, until it answers 200, the
	// process exits, or a generous deadline passes.
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		resp, err := client.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return in
			}
		}
		select {
		case <-in.exited:
			t.Fatalf("%s exited before it was ready: %v\n%s", name, in.waitErr, in.log.String())
		case <-deadline:
			t.Fatalf("%s: /readyz not 200 within 30s (last: %v)\n%s", name, err, in.log.String())
		case <-tick.C:
		}
	}
}

// TestComposeTopologyEndToEnd runs deploy/compose.yaml's topology without
// a container engine: the Dockerfile's binary, twice, with the compose
// config (its listeners moved to free loopback ports, its certificate a
// self-signed stand-in), the secrets of the env file's example, and one
// real redis-server as the store. Both instances answer the probes the
// Kubernetes manifests use, serve HTTPS with HTTP/2, redirect plain HTTP,
// share one rate limit through Redis, and stop cleanly on SIGTERM.
func TestComposeTopologyEndToEnd(t *testing.T) {
	bin := binary(t)
	redis := redistest.Start(t)

	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(upstream.Close)

	const cfgFile = "deploy/compose/config/keyward.yaml"
	var base map[string]any
	if err := yaml.Unmarshal(readFile(t, cfgFile), &base); err != nil {
		t.Fatal(err)
	}
	// One more route, to a local upstream, limited to one request a
	// minute per client: a second request is refused by whichever
	// instance gets it, because the count is in Redis.
	routes := append(list(base, "routes"), map[string]any{
		"name": "e2e", "path": "/e2e", "methods": []any{"GET"},
		"upstream": upstream.URL + "/ok",
		"limits":   map[string]any{"rate": "1/m", "burst": 1},
	})
	env := envFile(t, "deploy/compose/secrets.env.example")
	deployment := yamlDocs(t, k8sDir+"/deployment.yaml", readFile(t, k8sDir+"/deployment.yaml"))[0]
	container := get(deployment, "spec", "template", "spec", "containers", "0")

	var instances []*instance
	for _, name := range []string{"keyward-1", "keyward-2"} {
		public, plain, admin := freeAddr(t), freeAddr(t), freeAddr(t)
		cfg := writeRunnable(t, readFile(t, cfgFile), map[string]any{
			"listen": public, "http_redirect": plain, "admin": map[string]any{"listen": admin},
			"store": redis.URL(), "routes": routes,
			// The local upstream is on loopback, which outbound refuses by
			// default (SSRF).
			"outbound": map[string]any{"allow": []any{"127.0.0.1/32"}},
		})
		in := start(t, bin, name, cfg, env, public, plain, admin)
		instances = append(instances, in)

		// The Kubernetes probes' paths, on the admin listener.
		for _, probe := range []string{"readinessProbe", "livenessProbe"} {
			p := str(container, probe, "httpGet", "path")
			resp, err := http.Get("http://" + admin + p)
			if err != nil {
				t.Fatalf("%s %s %s: %v", name, probe, p, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s %s %s: %d, want 200", name, probe, p, resp.StatusCode)
			}
		}
	}

	pool := x509.NewCertPool()
	for _, in := range instances {
		pem, err := os.ReadFile(str(yamlFileAbs(t, in.cmd.Args[3]), "tls", "cert"))
		if err != nil {
			t.Fatal(err)
		}
		pool.AppendCertsFromPEM(pem)
	}
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
		Timeout: 10 * time.Second,
	}
	t.Cleanup(client.CloseIdleConnections)

	for _, in := range instances {
		// HTTPS with HTTP/2: keyward's own 404, in its JSON.
		resp, err := client.Get("https://" + in.public + "/no-such-route")
		if err != nil {
			t.Fatalf("%s: %v", in.name, err)
		}
		var body struct {
			Error struct{ Code string } `json:"error"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || err != nil || body.Error.Code != "not_found" || resp.ProtoMajor != 2 {
			t.Errorf("%s: GET https:///no-such-route: %s %s, code %q (%v); want HTTP/2 404 not_found", in.name, resp.Proto, resp.Status, body.Error.Code, err)
		}

		// Plain HTTP on http_redirect: to the same place over HTTPS.
		resp, err = client.Get("http://" + in.plain + "/my-repos?page=2")
		if err != nil {
			t.Fatalf("%s: %v", in.name, err)
		}
		resp.Body.Close()
		if want := "https://" + in.public + "/my-repos?page=2"; resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != want {
			t.Errorf("%s: GET http:///my-repos: %s to %q, want 301 to %q", in.name, resp.Status, resp.Header.Get("Location"), want)
		}
	}

	// One rate limit across both instances.
	codes := make([]int, 0, 2)
	for _, in := range instances {
		resp, err := client.Get("https://" + in.public + "/e2e")
		if err != nil {
			t.Fatalf("%s: %v", in.name, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
	if codes[0] != http.StatusOK || codes[1] != http.StatusTooManyRequests {
		t.Errorf("GET /e2e on keyward-1 then keyward-2: %v, want [200 429] (one limit, in Redis)", codes)
	}

	// Secrets never reach the log.
	for _, in := range instances {
		for k, v := range env {
			if strings.Contains(in.log.String(), v) {
				t.Errorf("%s's log contains the value of %s", in.name, k)
			}
		}
	}
}

// yamlFileAbs decodes a YAML file at an absolute path.
func yamlFileAbs(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", filepath.Base(path), err)
	}
	return m
}
