// Package acme obtains and renews the public listener's certificates from
// an ACME certificate authority (Let's Encrypt by default, RFC 8555)
// through certmagic. keyward answers the challenges itself: HTTP-01 on the
// http_redirect listener (HTTPHandler) and TLS-ALPN-01 on the public one
// (the "acme-tls/1" protocol of TLSConfig), so certmagic never opens a
// listener of its own. Certificates, keys and the account live in a storage
// directory: a restart serves the stored certificates at once, and
// instances sharing the directory share them (certmagic locks it).
// Renewal runs in the background, from a third of the certificate's
// lifetime before it expires; OCSP staples are kept fresh for
// certificates that name a responder.
package acme

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/keyward/keyward/internal/certs"
)

// Options configure a Manager.
type Options struct {
	// Spec is the compiled tls.acme block.
	Spec *certs.ACME
	// TLSAddr is the public listener's address as bound: TLS-ALPN-01 is
	// answered there. The CA checks port 443; another port works only
	// behind a forward from 443 (or with a test CA told the port). Nil:
	// TLS-ALPN-01 is off.
	TLSAddr net.Addr
	// HTTPAddr is the http_redirect listener's address as bound, where
	// HTTP-01 is answered (the CA checks port 80). Nil: HTTP-01 is off,
	// and certificates come through TLS-ALPN-01 alone.
	HTTPAddr net.Addr
	// Logger receives certmagic's log (obtaining, renewing, failures).
	// Nil: nothing is logged.
	Logger *slog.Logger
	// RenewalWindowRatio is the share of a certificate's lifetime, at its
	// end, in which it is renewed. Zero: certmagic's default (1/3).
	RenewalWindowRatio float64
	// RenewCheckInterval is how often certificates are checked for
	// renewal. Zero: certmagic's default (10 minutes).
	RenewCheckInterval time.Duration
}

// Manager holds the certificates of one tls.acme block.
type Manager struct {
	domains []string
	cache   *certmagic.Cache
	cfg     *certmagic.Config
	issuer  *certmagic.ACMEIssuer
	log     *slog.Logger
	stop    sync.Once
}

// New prepares certificate management. It opens no connection: Start
// loads stored certificates and asks the CA for the missing ones.
func New(opts Options) (*Manager, error) {
	if opts.Spec == nil || len(opts.Spec.Domains) == 0 {
		return nil, errors.New("acme: no domains")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	storage := opts.Spec.Storage
	if storage == "" {
		dir, err := DefaultStorage()
		if err != nil {
			return nil, err
		}
		storage = dir
	}
	if err := os.MkdirAll(storage, 0o700); err != nil {
		return nil, fmt.Errorf("acme: creating the storage directory: %w", err)
	}
	zl := zap.New(&slogCore{l: log.With("component", "acme")})
	m := &Manager{domains: opts.Spec.Domains, log: log}
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return m.cfg, nil },
		RenewCheckInterval: opts.RenewCheckInterval,
		Logger:             zl,
	})
	m.cfg = certmagic.New(m.cache, certmagic.Config{
		Storage:            &certmagic.FileStorage{Path: storage},
		RenewalWindowRatio: opts.RenewalWindowRatio,
		// A client that sends no server name (an IP address in the URL)
		// gets the first domain's certificate, as nginx's default server.
		DefaultServerName: opts.Spec.Domains[0],
		Logger:            zl,
	})
	host, tlsPort := hostPort(opts.TLSAddr)
	tmpl := certmagic.ACMEIssuer{
		CA:           opts.Spec.CA,
		Email:        opts.Spec.Email,
		Agreed:       true,
		TrustedRoots: opts.Spec.CARoots,
		// certmagic would open a listener on these addresses if nothing
		// listened there; keyward's listeners do, and answer.
		ListenHost:     host,
		AltTLSALPNPort: tlsPort,
		Logger:         zl,
	}
	if opts.HTTPAddr == nil {
		tmpl.DisableHTTPChallenge = true
	} else {
		_, tmpl.AltHTTPPort = hostPort(opts.HTTPAddr)
	}
	if opts.TLSAddr == nil {
		tmpl.DisableTLSALPNChallenge = true
	}
	if opts.Spec.CA != certmagic.LetsEncryptProductionCA {
		// certmagic retries a failed order at Let's Encrypt's staging CA
		// only when the production one is used.
		tmpl.TestCA = opts.Spec.CA
	}
	m.issuer = certmagic.NewACMEIssuer(m.cfg, tmpl)
	m.cfg.Issuers = []certmagic.Issuer{m.issuer}
	return m, nil
}

// DefaultStorage is where certificates are kept when tls.acme.storage is
// not set: $XDG_DATA_HOME/keyward/acme, else ~/.local/share/keyward/acme.
func DefaultStorage() (string, error) {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "keyward", "acme"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("acme: no storage directory: set tls.acme.storage (%w)", err)
	}
	return filepath.Join(home, ".local", "share", "keyward", "acme"), nil
}

func hostPort(a net.Addr) (string, int) {
	if a == nil {
		return "", 0
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return "", 0
	}
	n, _ := strconv.Atoi(port)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "" // all interfaces, as certmagic writes it
	}
	return host, n
}

// TLSConfig is the public listener's TLS configuration: certificates from
// the manager, and the "acme-tls/1" protocol that answers TLS-ALPN-01.
func (m *Manager) TLSConfig() *tls.Config {
	return certs.ServerConfig(m.cfg.GetCertificate, "acme-tls/1")
}

// GetCertificate returns the certificate for a handshake.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return m.cfg.GetCertificate(hello)
}

// HTTPHandler answers HTTP-01 challenges (GET
// /.well-known/acme-challenge/TOKEN) and passes every other request to
// next.
func (m *Manager) HTTPHandler(next http.Handler) http.Handler {
	return m.issuer.HTTPChallengeHandler(next)
}

// Start loads the stored certificates and obtains the missing ones in
// the background, retrying failures with backoff, then keeps them
// renewed until Stop. Call it once the listeners that answer challenges
// are serving.
func (m *Manager) Start(ctx context.Context) error {
	if err := m.cfg.ManageAsync(ctx, m.domains); err != nil {
		return fmt.Errorf("acme: managing certificates for %v: %w", m.domains, err)
	}
	return nil
}

// Stop ends renewal and OCSP maintenance. It may be called more than
// once.
func (m *Manager) Stop() { m.stop.Do(m.cache.Stop) }

// slogCore writes certmagic's zap log to slog.
type slogCore struct {
	l      *slog.Logger
	fields []zapcore.Field
}

var _ zapcore.Core = (*slogCore)(nil)

func level(l zapcore.Level) slog.Level {
	switch {
	case l >= zapcore.ErrorLevel:
		return slog.LevelError
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	}
	return slog.LevelDebug
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return c.l.Enabled(context.Background(), level(l))
}

func (c *slogCore) With(fs []zapcore.Field) zapcore.Core {
	return &slogCore{l: c.l, fields: append(append([]zapcore.Field(nil), c.fields...), fs...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields)+1)
	if e.LoggerName != "" {
		attrs = append(attrs, slog.String("logger", e.LoggerName))
	}
	for k, v := range enc.Fields {
		attrs = append(attrs, slog.Any(k, v))
	}
	c.l.LogAttrs(context.Background(), level(e.Level), "acme: "+e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
