package acme_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/certs"
	"github.com/keyward/keyward/internal/certs/acme"
	"github.com/keyward/keyward/internal/certs/acme/acmetest"
)

// safety bounds every wait: issuance against pebble takes well under a
// second here; a broken manager fails the test instead of hanging it.
const safety = 30 * time.Second

const domain = "gw.keyward.test"

// listeners are the public TLS listener and the plain HTTP one, serving
// a manager's challenges and certificates as keyward does.
type listeners struct {
	tls, http net.Listener
}

func listen(t *testing.T, tlsPort, httpPort int) *listeners {
	t.Helper()
	l := &listeners{}
	var err error
	if l.tls, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", itoa(tlsPort))); err != nil {
		t.Fatal(err)
	}
	if l.http, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", itoa(httpPort))); err != nil {
		t.Fatal(err)
	}
	return l
}

func itoa(n int) string { return (&net.TCPAddr{Port: n}).String()[1:] }

// serve serves m on l until the test ends: TLS (its handshake alone
// answers TLS-ALPN-01) and HTTP-01 with a 404 for anything else.
func (l *listeners) serve(t *testing.T, m *acme.Manager) {
	t.Helper()
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }),
		ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = hs.Serve(tls.NewListener(l.tls, m.TLSConfig())) }()
	ps := &http.Server{Handler: m.HTTPHandler(http.NotFoundHandler()), ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = ps.Serve(l.http) }()
	t.Cleanup(func() {
		hs.Close()
		ps.Close()
	})
}

// issued handshakes with the TLS listener for domain and returns the
// certificate served, once the CA's is (pebble's roots are not the
// system's, so the chain is checked by hand).
func issued(t *testing.T, addr string, after *x509.Certificate) *x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(safety)
	for {
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: domain, InsecureSkipVerify: true, NextProtos: certs.Protocols})
		if err == nil {
			leaf := c.ConnectionState().PeerCertificates[0]
			c.Close()
			if slices.Contains(leaf.DNSNames, domain) && (after == nil || leaf.SerialNumber.Cmp(after.SerialNumber) != 0) {
				return leaf
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no certificate for %s from the CA (last error %v)", domain, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func newManager(t *testing.T, p *acmetest.Pebble, storage string, l *listeners, http01, tlsalpn bool, adjust func(*acme.Options)) *acme.Manager {
	t.Helper()
	opts := acme.Options{Spec: &certs.ACME{Domains: []string{domain}, Email: "ops@keyward.test", Storage: storage, CA: p.URL, CARoots: p.Roots},
		Logger: slog.New(slog.DiscardHandler)}
	if http01 {
		opts.HTTPAddr = l.http.Addr()
	}
	if tlsalpn {
		opts.TLSAddr = l.tls.Addr()
	}
	if adjust != nil {
		adjust(&opts)
	}
	m, err := acme.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	return m
}

// TestObtainEachChallenge: a certificate is obtained through each
// challenge alone: TLS-ALPN-01 on the public listener, HTTP-01 on the
// redirect listener.
func TestObtainEachChallenge(t *testing.T) {
	for _, tt := range []struct {
		name            string
		http01, tlsalpn bool
	}{
		{"TLS-ALPN-01", false, true},
		{"HTTP-01", true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tlsPort, httpPort := acmetest.FreePort(t), acmetest.FreePort(t)
			// The CA checks the challenge's own port only: the other
			// points where nothing answers.
			popts := acmetest.Options{}
			if tt.tlsalpn {
				popts.TLSPort = tlsPort
			}
			if tt.http01 {
				popts.HTTPPort = httpPort
			}
			p := acmetest.Start(t, popts)
			l := listen(t, tlsPort, httpPort)
			m := newManager(t, p, t.TempDir(), l, tt.http01, tt.tlsalpn, nil)
			l.serve(t, m)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if err := m.Start(ctx); err != nil {
				t.Fatal(err)
			}
			leaf := issued(t, l.tls.Addr().String(), nil)
			if leaf.Issuer.CommonName == leaf.Subject.CommonName {
				t.Errorf("self-signed certificate served: %v", leaf.Issuer)
			}
		})
	}
}

// TestRenewAndRestart: a certificate near its end is renewed in the
// background and the new one served; a restarted manager on the same
// storage serves the stored certificate without asking the CA again.
func TestRenewAndRestart(t *testing.T) {
	tlsPort := acmetest.FreePort(t)
	p := acmetest.Start(t, acmetest.Options{TLSPort: tlsPort, Validity: time.Minute})
	storage := t.TempDir()
	l := listen(t, tlsPort, acmetest.FreePort(t))
	short := func(o *acme.Options) {
		// Renew once less than 95% of the lifetime is left: a few seconds
		// after issuance.
		o.RenewalWindowRatio = 0.95
		o.RenewCheckInterval = 200 * time.Millisecond
	}
	m := newManager(t, p, storage, l, false, true, short)
	l.serve(t, m)
	ctx, cancel := context.WithCancel(context.Background())
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	first := issued(t, l.tls.Addr().String(), nil)
	renewed := issued(t, l.tls.Addr().String(), first)
	if !renewed.NotAfter.After(first.NotAfter) {
		t.Errorf("renewed certificate ends %v, not after the first's %v", renewed.NotAfter, first.NotAfter)
	}
	cancel()
	m.Stop()
	l.tls.Close()
	l.http.Close()

	// A restart: same storage, a CA that can no longer validate anything
	// (no listener answers its challenges), and no renewal due.
	l2 := listen(t, acmetest.FreePort(t), acmetest.FreePort(t))
	m2 := newManager(t, p, storage, l2, false, false, nil)
	l2.serve(t, m2)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	if err := m2.Start(ctx2); err != nil {
		t.Fatal(err)
	}
	got := issued(t, l2.tls.Addr().String(), nil)
	if got.SerialNumber.Cmp(renewed.SerialNumber) != 0 {
		t.Errorf("after a restart, serial %v; want the stored certificate %v", got.SerialNumber, renewed.SerialNumber)
	}
}
