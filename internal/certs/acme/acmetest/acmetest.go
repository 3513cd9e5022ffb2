// Package acmetest runs an ACME certificate authority in the test process:
// Let's Encrypt's pebble (github.com/letsencrypt/pebble/v2), with a DNS
// server of its own that resolves every name to 127.0.0.1, so that its
// validation authority checks challenges on this machine's listeners.
// Nothing is fetched from the internet.
package acmetest

import (
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// Pebble is a running ACME CA.
type Pebble struct {
	// URL is the ACME directory.
	URL string
	// Roots trusts the CA's own HTTPS server (for ACME requests), and
	// RootsPEM is the same certificate as PEM, for tls.acme.ca_root.
	Roots    *x509.CertPool
	RootsPEM []byte
}

// Options shape the CA.
type Options struct {
	// HTTPPort and TLSPort are where its validation authority checks
	// HTTP-01 and TLS-ALPN-01 challenges on 127.0.0.1 (the CA on the
	// internet checks 80 and 443). Zero: a port nothing listens on.
	HTTPPort, TLSPort int
	// Validity is the certificates' lifetime. Zero: 90 days.
	Validity time.Duration
}

// Start runs a CA until the test ends. It sets pebble's environment for
// speed (no random validation delay, no nonce rejections, no reuse of
// valid authorizations, so every order is validated), so the test must
// not be parallel.
func Start(t testing.TB, opts Options) *Pebble {
	t.Helper()
	for k, v := range map[string]string{"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"} {
		if ts, ok := t.(interface{ Setenv(k, v string) }); ok {
			ts.Setenv(k, v)
		}
	}
	if opts.HTTPPort == 0 {
		opts.HTTPPort = closedPort(t)
	}
	if opts.TLSPort == 0 {
		opts.TLSPort = closedPort(t)
	}
	validity := uint64(90 * 24 * 3600)
	if opts.Validity > 0 {
		validity = uint64(opts.Validity / time.Second)
	}
	logger := log.New(io.Discard, "pebble ", 0)
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{
		"default": {Description: "test", ValidityPeriod: validity},
	})
	resolver := startDNS(t)
	validator := va.New(logger, opts.HTTPPort, opts.TLSPort, false, resolver, store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	srv := httptest.NewTLSServer(front.Handler())
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	return &Pebble{URL: srv.URL + wfe.DirectoryPath, Roots: roots,
		RootsPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})}
}

// startDNS serves DNS over TCP on 127.0.0.1 (pebble asks over TCP): A
// records are 127.0.0.1 for every name, AAAA records none.
func startDNS(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0},
					A:   net.IPv4(127, 0, 0, 1),
				})
			}
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return ln.Addr().String()
}

// FreePort returns a port on 127.0.0.1 that nothing listened on a moment
// ago, for a listener whose port the CA must know before it opens.
func FreePort(t testing.TB) int {
	t.Helper()
	return closedPort(t)
}

func closedPort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
