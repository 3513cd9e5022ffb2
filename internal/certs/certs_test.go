package certs_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ocsp"

	"github.com/keyward/keyward/internal/certs"
	"github.com/keyward/keyward/internal/certs/certtest"
	"github.com/keyward/keyward/internal/config"
)

// safety bounds every wait, so a broken watcher fails a test instead of
// hanging it; no test waits on it to reach a state.
const safety = 10 * time.Second

func parse(t *testing.T, yaml string) *config.Config {
	t.Helper()
	f, err := config.Parse("keyward.yaml", []byte(yaml+"\nroutes:\n  - { name: r, path: /r, upstream: \"https://api.example.com/r\" }\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Unknown) > 0 {
		t.Fatalf("decoding: %v", f.Unknown)
	}
	return &f.Config
}

// problems compiles yaml (relative paths resolved in dir) and returns its
// problems as "path: message" lines, warnings marked.
func problems(t *testing.T, dir, yaml string) []string {
	t.Helper()
	_, ps := certs.Compile(parse(t, yaml), certs.CompileOptions{Resolve: func(p string) string { return filepath.Join(dir, p) }, Now: time.Now()})
	var out []string
	for _, p := range ps {
		line := p.Path + ": " + p.Msg
		if p.Warning {
			line = "warning " + line
		}
		out = append(out, line)
	}
	return out
}

func TestCompileFiles(t *testing.T) {
	ca := certtest.NewCA(t)
	dir := t.TempDir()
	good := ca.Leaf(t, certtest.Options{Names: []string{"gw.example.com"}})
	good.Write(t, dir)
	other := ca.Leaf(t, certtest.Options{})
	if err := os.WriteFile(filepath.Join(dir, "other-key.pem"), other.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	expired := ca.Leaf(t, certtest.Options{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	expDir := t.TempDir()
	expired.Write(t, expDir)
	soon := ca.Leaf(t, certtest.Options{NotAfter: time.Now().Add(3 * 24 * time.Hour)})
	soonDir := t.TempDir()
	soon.Write(t, soonDir)
	if err := os.WriteFile(filepath.Join(dir, "junk.pem"), []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name string
		yaml string
		want []string // a substring of each problem, in order
	}{
		{"good pair, relative paths", "tls: { cert: cert.pem, key: key.pem, hsts: 1y }", nil},
		{"missing file", "tls: { cert: nope.pem, key: key.pem }", []string{"tls.cert: reading the certificate"}},
		{"not PEM", "tls: { cert: junk.pem, key: key.pem }", []string{"holds no PEM certificate"}},
		{"key of another certificate", "tls: { cert: cert.pem, key: other-key.pem }", []string{"tls.key: does not go with tls.cert"}},
		{"expired", "tls: { cert: " + filepath.Join(expDir, "cert.pem") + ", key: " + filepath.Join(expDir, "key.pem") + " }", []string{"tls.cert: expired on"}},
		{"expiring soon is a warning", "tls: { cert: " + filepath.Join(soonDir, "cert.pem") + ", key: " + filepath.Join(soonDir, "key.pem") + " }", []string{"warning tls.cert: expires on"}},
		{"cert without key", "tls: { cert: cert.pem }", []string{"tls.key: required with tls.cert"}},
		{"both sources", "tls: { cert: cert.pem, key: key.pem, acme: { domains: [gw.example.com] } }", []string{"tls: set either cert and key, or acme, not both"}},
		{"no source", "tls: { hsts: 1y }", []string{"tls: set cert and key"}},
		{"bad hsts", "tls: { cert: cert.pem, key: key.pem, hsts: forever }", []string{"tls.hsts: bad duration"}},
		{"redirect without tls", `http_redirect: ":80"`, []string{"http_redirect: redirects to https, which needs tls"}},
		{"redirect address", "tls: { cert: cert.pem, key: key.pem }\nhttp_redirect: \"80\"", []string{`http_redirect: bad address "80"`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := problems(t, dir, tt.yaml)
			if len(got) != len(tt.want) {
				t.Fatalf("problems %q, want %d like %q", got, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %q, want it to contain %q", got[i], w)
				}
			}
		})
	}
}

func TestCompileACME(t *testing.T) {
	dir := t.TempDir()
	ca := certtest.NewCA(t)
	if err := os.WriteFile(filepath.Join(dir, "root.pem"), ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		yaml string
		want []string
	}{
		{"public CA", "tls: { acme: { domains: [GW.example.com.], email: ops@example.com } }", nil},
		{"private CA may issue internal names", "tls: { acme: { domains: [gw.internal, localhost], ca: \"https://127.0.0.1:14000/dir\", ca_root: root.pem } }", nil},
		{"no domains", "tls: { acme: { email: ops@example.com } }", []string{"tls.acme.domains: required"}},
		{"wildcard", "tls: { acme: { domains: [\"*.example.com\"] } }", []string{"tls.acme.domains[0]: \"*.example.com\": wildcard certificates need the DNS-01 challenge"}},
		{"IP address", "tls: { acme: { domains: [192.0.2.1] } }", []string{"tls.acme.domains[0]: \"192.0.2.1\": an IP address"}},
		{"internal name at a public CA", "tls: { acme: { domains: [gw.internal, localhost] } }",
			[]string{"tls.acme.domains[0]: ", "tls.acme.domains[1]: "}},
		{"malformed", "tls: { acme: { domains: [gw_x.example.com, -a.example.com] } }", []string{"domains[0]", "domains[1]"}},
		{"twice", "tls: { acme: { domains: [gw.example.com, GW.example.com] } }", []string{"tls.acme.domains[1]: \"GW.example.com\" is listed twice"}},
		{"email", "tls: { acme: { domains: [gw.example.com], email: ops } }", []string{"tls.acme.email"}},
		{"plain http CA", "tls: { acme: { domains: [gw.example.com], ca: \"http://ca.example.com/dir\" } }", []string{"tls.acme.ca: "}},
		{"roots not PEM", "tls: { acme: { domains: [gw.example.com], ca_root: nope.pem } }", []string{"tls.acme.ca_root: reading CA roots"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := problems(t, dir, tt.yaml)
			if len(got) != len(tt.want) {
				t.Fatalf("problems %q, want %d like %q", got, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %q, want it to contain %q", got[i], w)
				}
			}
		})
	}
	spec, _ := certs.Compile(parse(t, "tls: { acme: { domains: [GW.example.com.], storage: acme } }"), certs.CompileOptions{Resolve: func(p string) string { return filepath.Join(dir, p) }, Now: time.Now()})
	if diff := cmp.Diff([]string{"gw.example.com"}, spec.ACME.Domains); diff != "" {
		t.Errorf("domains (-want +got):\n%s", diff)
	}
	if spec.ACME.Storage != filepath.Join(dir, "acme") || spec.ACME.CA != config.DefaultACMECA {
		t.Errorf("storage %q, CA %q", spec.ACME.Storage, spec.ACME.CA)
	}
}

func TestServerConfig(t *testing.T) {
	cfg := certs.ServerConfig(nil, "acme-tls/1")
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion %x, want TLS 1.2", cfg.MinVersion)
	}
	if diff := cmp.Diff([]string{"h2", "http/1.1", "acme-tls/1"}, cfg.NextProtos); diff != "" {
		t.Errorf("NextProtos (-want +got):\n%s", diff)
	}
	if cfg.CipherSuites != nil || cfg.CurvePreferences != nil {
		t.Error("cipher suites or curves set: Go's defaults are wanted")
	}
}

// serving serves f's certificate on a TLS listener and returns a function
// that handshakes and reports the serial number and staple it was given.
func serving(t *testing.T, f *certs.Files, ca *certtest.CA) func() (serial string, staple []byte) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", certs.ServerConfig(f.GetCertificate))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	return func() (string, []byte) {
		c, err := tls.Dial("tcp", ln.Addr().String(), ca.ClientConfig())
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer c.Close()
		st := c.ConnectionState()
		return st.PeerCertificates[0].SerialNumber.String(), st.OCSPResponse
	}
}

// TestFilesRotateWithoutDroppingConnections: a renewed certificate written
// over the files is served to new handshakes once the watcher sees it; a
// connection made before keeps working; a broken pair keeps the last good
// one serving.
func TestFilesRotateWithoutDroppingConnections(t *testing.T) {
	ca := certtest.NewCA(t)
	dir := t.TempDir()
	first := ca.Leaf(t, certtest.Options{})
	certFile, keyFile := first.Write(t, dir)
	f, err := certs.LoadFiles(certFile, keyFile, certs.FilesOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = f.Watch(ctx) }()
	handshake := serving(t, f, ca)
	if s, _ := handshake(); s != first.Cert.SerialNumber.String() {
		t.Fatalf("serial %s, want the first certificate's", s)
	}

	// An open connection, on the first certificate, through the rotation.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", certs.ServerConfig(f.GetCertificate))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echo := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			echo <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 5)
		for {
			if _, err := c.Read(buf); err != nil {
				echo <- err
				return
			}
			if _, err := c.Write(buf); err != nil {
				echo <- err
				return
			}
		}
	}()
	open, err := tls.Dial("tcp", ln.Addr().String(), ca.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	roundTrip := func() {
		t.Helper()
		_ = open.SetDeadline(time.Now().Add(safety))
		if _, err := open.Write([]byte("hello")); err != nil {
			t.Fatalf("the open connection broke: %v", err)
		}
		if _, err := open.Read(make([]byte, 5)); err != nil {
			t.Fatalf("the open connection broke: %v", err)
		}
	}
	roundTrip()

	second := ca.Leaf(t, certtest.Options{})
	second.Write(t, dir)
	waitFor(t, "the renewed certificate to be served", func() bool {
		s, _ := handshake()
		return s == second.Cert.SerialNumber.String()
	})
	roundTrip()

	// A key that does not match: the last good pair keeps serving.
	other := ca.Leaf(t, certtest.Options{})
	if err := os.WriteFile(keyFile, other.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.Reload(); err == nil {
		t.Fatal("a mismatched pair loaded")
	}
	if s, _ := handshake(); s != second.Cert.SerialNumber.String() {
		t.Errorf("after a failed reload, serial %s; want the last good certificate", s)
	}
}

// ocspResponder answers OCSP requests for ca's certificates with status.
type ocspResponder struct {
	ca     *certtest.CA
	status atomic.Int64
	calls  atomic.Int64
}

func (o *ocspResponder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.calls.Add(1)
	body := make([]byte, 4096)
	n, _ := r.Body.Read(body)
	req, err := ocsp.ParseRequest(body[:n])
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	now := time.Now()
	der, err := ocsp.CreateResponse(o.ca.Cert, o.ca.Cert, ocsp.Response{
		Status: int(o.status.Load()), SerialNumber: req.SerialNumber,
		ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(time.Hour),
	}, o.ca.Key)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	_, _ = w.Write(der)
}

// TestFilesStapleOCSP: a certificate that names an OCSP responder is
// served with the responder's "good" answer stapled; a "revoked" answer
// is never stapled.
func TestFilesStapleOCSP(t *testing.T) {
	ca := certtest.NewCA(t)
	resp := &ocspResponder{ca: ca}
	srv := httptest.NewServer(resp)
	defer srv.Close()
	dir := t.TempDir()
	leaf := ca.Leaf(t, certtest.Options{OCSPServer: srv.URL})
	certFile, keyFile := leaf.Write(t, dir)
	f, err := certs.LoadFiles(certFile, keyFile, certs.FilesOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = f.Watch(ctx) }()
	handshake := serving(t, f, ca)
	var staple []byte
	waitFor(t, "a staple", func() bool { _, staple = handshake(); return staple != nil })
	r, err := ocsp.ParseResponseForCert(staple, leaf.Cert, ca.Cert)
	if err != nil || r.Status != ocsp.Good {
		t.Fatalf("staple: %v, status %d; want a good answer", err, r.Status)
	}

	// A renewed certificate whose responder says revoked gets no staple.
	resp.status.Store(ocsp.Revoked)
	calls := resp.calls.Load()
	next := ca.Leaf(t, certtest.Options{OCSPServer: srv.URL})
	next.Write(t, dir)
	waitFor(t, "the renewed certificate, after its responder was asked", func() bool {
		s, _ := handshake()
		return s == next.Cert.SerialNumber.String() && resp.calls.Load() > calls
	})
	if _, staple := handshake(); staple != nil {
		t.Error("a revoked answer was stapled")
	}
}

func TestCheckDomain(t *testing.T) {
	for _, tt := range []struct {
		name   string
		public bool
		ok     bool
	}{
		{"gw.example.com", true, true},
		{"a-b.example.co.uk", true, true},
		{"localhost", true, false},
		{"gw.internal", true, false},
		{"gw.internal", false, true},
		{"single", true, false},
		{"single", false, true},
		{"*.example.com", false, false},
		{"::1", false, false},
		{"a..b", false, false},
		{"-a.b", false, false},
		{"a_b.example.com", false, false},
		{strings.Repeat("a", 64) + ".com", false, false},
	} {
		if err := certs.CheckDomain(tt.name, tt.public); (err == nil) != tt.ok {
			t.Errorf("CheckDomain(%q, public %v) = %v, want ok %v", tt.name, tt.public, err, tt.ok)
		}
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
		time.Sleep(5 * time.Millisecond)
	}
}
