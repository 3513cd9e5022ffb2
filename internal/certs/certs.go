// Package certs supplies the public listener's certificates and checks the
// config's tls block: certificate files, reloaded when they change and
// stapled with OCSP when their issuer runs a responder (Files), or
// certificates obtained and renewed through ACME (subpackage acme). Both
// serve through the tls.Config ServerConfig builds: TLS 1.2 at least, Go's
// default cipher suites, HTTP/2 and HTTP/1.1 by ALPN.
//
// Compile is the part `keyward check` runs: it reads the files and reports
// every problem with the field to fix, and opens no sockets.
package certs

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyward/keyward/internal/config"
)

// Spec is a compiled tls block: where the certificates come from, with
// paths made absolute.
type Spec struct {
	// CertFile and KeyFile are the certificate files; empty with ACME.
	CertFile, KeyFile string
	// ACME is set when certificates come from an ACME CA.
	ACME *ACME
	// HSTS is the Strict-Transport-Security max-age; zero: not sent.
	HSTS time.Duration
}

// ACME is a compiled tls.acme block.
type ACME struct {
	Domains []string
	Email   string
	// Storage is the directory for the account, certificates and keys.
	Storage string
	// CA is the ACME directory URL.
	CA string
	// CARoots trusts the CA's server certificate; nil: the system's roots.
	CARoots *x509.CertPool
}

// Same reports whether s and o name the same certificate source (a
// change between them takes effect on restart). HSTS is not compared:
// a reload applies it.
func (s *Spec) Same(o *Spec) bool {
	if s == nil || o == nil {
		return s == o
	}
	if s.CertFile != o.CertFile || s.KeyFile != o.KeyFile || (s.ACME == nil) != (o.ACME == nil) {
		return false
	}
	if s.ACME == nil {
		return true
	}
	a, b := s.ACME, o.ACME
	return strings.Join(a.Domains, ",") == strings.Join(b.Domains, ",") && a.Email == b.Email &&
		a.Storage == b.Storage && a.CA == b.CA && (a.CARoots == nil) == (b.CARoots == nil)
}

// Problem is one thing wrong with the tls block (or http_redirect), at the
// config path to fix.
type Problem struct {
	Path string
	Msg  string
	// Warning marks a risk that does not stop the config from serving.
	Warning bool
}

// renewSoon is how close to its expiry a certificate file earns a warning:
// whatever renews it should have done so by now.
const renewSoon = 14 * 24 * time.Hour

// CompileOptions are what Compile needs besides the config.
type CompileOptions struct {
	// Resolve makes a relative path absolute (against the config file's
	// directory).
	Resolve func(string) string
	// Now is the time certificate validity is checked against.
	Now time.Time
	// SkipFiles leaves the certificate and key files unread: keyward
	// check --no-secrets, in CI, where the key is a secret that is not
	// there. Everything else is still checked.
	SkipFiles bool
}

// Compile checks cfg's tls block and http_redirect and returns the
// compiled Spec (nil without tls) and every problem found.
func Compile(cfg *config.Config, o CompileOptions) (*Spec, []Problem) {
	resolve, now := o.Resolve, o.Now
	var ps []Problem
	errorf := func(path, format string, args ...any) {
		ps = append(ps, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	if a := cfg.HTTPRedirect; a != "" {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errorf("http_redirect", "bad address %q: want host:port or :port, like \":80\"", a)
		}
		if cfg.TLS == nil {
			errorf("http_redirect", "redirects to https, which needs tls: add a tls block (cert and key, or acme)")
		}
	}
	t := cfg.TLS
	if t == nil {
		return nil, ps
	}
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return resolve(p)
	}
	s := &Spec{CertFile: abs(t.Cert), KeyFile: abs(t.Key)}
	if t.HSTS != "" {
		d, err := config.ParseAge(t.HSTS)
		if err != nil {
			errorf("tls.hsts", "%v", err)
		}
		s.HSTS = d
	}
	files := t.Cert != "" || t.Key != ""
	switch {
	case files && t.ACME != nil:
		errorf("tls", "set either cert and key, or acme, not both")
	case !files && t.ACME == nil:
		errorf("tls", "set cert and key (certificate files), or acme (automatic certificates)")
	case files && t.Cert == "":
		errorf("tls.cert", "required with tls.key: the certificate chain file (PEM)")
	case files && t.Key == "":
		errorf("tls.key", "required with tls.cert: the private key file (PEM)")
	case files:
		if !o.SkipFiles {
			ps = append(ps, CheckFiles(s.CertFile, s.KeyFile, now)...)
		}
	default:
		s.ACME = compileACME(t.ACME, abs, errorf)
	}
	return s, ps
}

func compileACME(a *config.ACME, abs func(string) string, errorf func(path, format string, args ...any)) *ACME {
	out := &ACME{Email: a.Email, Storage: abs(a.Storage), CA: a.CA}
	if len(a.Domains) == 0 {
		errorf("tls.acme.domains", "required: the host names to get a certificate for, like [gw.example.com]")
	}
	public := a.CA == config.DefaultACMECA
	seen := map[string]bool{}
	for i, d := range a.Domains {
		name := strings.ToLower(strings.TrimSuffix(d, "."))
		if err := CheckDomain(name, public); err != nil {
			errorf(fmt.Sprintf("tls.acme.domains[%d]", i), "%q: %v", d, err)
			continue
		}
		if seen[name] {
			errorf(fmt.Sprintf("tls.acme.domains[%d]", i), "%q is listed twice", d)
			continue
		}
		seen[name] = true
		out.Domains = append(out.Domains, name)
	}
	if a.Email != "" && !strings.Contains(a.Email, "@") {
		errorf("tls.acme.email", "%q is not an email address", a.Email)
	}
	if u, err := url.Parse(a.CA); err != nil || u.Scheme != "https" || u.Host == "" {
		errorf("tls.acme.ca", "%q: want the https:// URL of an ACME directory", a.CA)
	}
	if a.CARoot != "" {
		pool, err := readRoots(abs(a.CARoot))
		if err != nil {
			errorf("tls.acme.ca_root", "%v", err)
		}
		out.CARoots = pool
	}
	return out
}

func readRoots(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading CA roots: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// CheckDomain reports why an ACME CA would not issue a certificate for
// name, a lower-case host name: malformed, a wildcard (that needs the
// DNS-01 challenge, which keyward does not answer), an IP address, or, for
// a public CA, a name that is not on the public internet.
func CheckDomain(name string, public bool) error {
	switch {
	case name == "":
		return errors.New("empty host name")
	case strings.Contains(name, "*"):
		return errors.New("wildcard certificates need the DNS-01 challenge, which keyward does not answer: list each host name")
	case net.ParseIP(name) != nil:
		return errors.New("an IP address, not a host name")
	case len(name) > 253:
		return errors.New("longer than 253 characters")
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("malformed host name: each dot-separated label has 1 to 63 letters, digits or hyphens, not at either end")
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("malformed host name: %q is not allowed (letters, digits, hyphens and dots)", c)
			}
		}
	}
	if public {
		if !strings.Contains(name, ".") || name == "localhost" || strings.HasSuffix(name, ".localhost") ||
			strings.HasSuffix(name, ".local") || strings.HasSuffix(name, ".internal") || strings.HasSuffix(name, ".test") ||
			strings.HasSuffix(name, ".example") || strings.HasSuffix(name, ".invalid") {
			return errors.New("not a public host name: a public CA cannot check it (set tls.acme.ca to a private ACME server, or use cert and key)")
		}
	}
	return nil
}

// CheckFiles reads a certificate chain and key and reports every problem
// `keyward check` should show: a file that cannot be read or holds no PEM
// certificate or key, a key that does not match, a certificate not yet or
// no longer valid at now (or expiring within 14 days: a warning), one
// without subject alternative names (clients ignore the common name).
func CheckFiles(certFile, keyFile string, now time.Time) []Problem {
	var ps []Problem
	errorf := func(path, format string, args ...any) {
		ps = append(ps, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		errorf("tls.cert", "reading the certificate: %v", err)
	}
	keyPEM, kerr := os.ReadFile(keyFile)
	if kerr != nil {
		errorf("tls.key", "reading the key: %v", kerr)
	}
	if err != nil || kerr != nil {
		return ps
	}
	chain, err := parseChain(certPEM)
	if err != nil {
		errorf("tls.cert", "%s: %v", certFile, err)
		return ps
	}
	if bytes.Contains(certPEM, []byte("PRIVATE KEY")) {
		errorf("tls.cert", "%s holds a private key: keep the key in tls.key only", certFile)
	}
	if !bytes.Contains(keyPEM, []byte("PRIVATE KEY")) {
		errorf("tls.key", "%s holds no PEM private key", keyFile)
		return ps
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		errorf("tls.key", "does not go with tls.cert: %v", err)
	}
	leaf := chain[0]
	switch {
	case now.Before(leaf.NotBefore):
		errorf("tls.cert", "not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(leaf.NotAfter):
		errorf("tls.cert", "expired on %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	case leaf.NotAfter.Sub(now) < renewSoon:
		ps = append(ps, Problem{Path: "tls.cert", Warning: true,
			Msg: fmt.Sprintf("expires on %s: renew it (keyward reloads the files when they change)", leaf.NotAfter.UTC().Format(time.RFC3339))})
	}
	if len(leaf.DNSNames) == 0 && len(leaf.IPAddresses) == 0 {
		errorf("tls.cert", "names no host in its subject alternative names: clients ignore the common name %q", leaf.Subject.CommonName)
	}
	return ps
}

// parseChain parses the PEM certificates of a chain file, the server's
// first.
func parseChain(b []byte) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate %d: %w", len(chain)+1, err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, errors.New("holds no PEM certificate")
	}
	return chain, nil
}

// Protocols are the ALPN protocols the public listener offers, most
// preferred first.
var Protocols = []string{"h2", "http/1.1"}

// ServerConfig returns the public listener's TLS configuration: TLS 1.2 at
// least (1.0 and 1.1 are deprecated, RFC 8996), Go's default cipher
// suites and curves, HTTP/2 and HTTP/1.1 by ALPN plus extra protocols
// (ACME's "acme-tls/1"), and certificates from get.
func ServerConfig(get func(*tls.ClientHelloInfo) (*tls.Certificate, error), extra ...string) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     append(append([]string(nil), Protocols...), extra...),
		GetCertificate: get,
	}
}
