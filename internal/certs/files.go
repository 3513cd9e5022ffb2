package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/keyward/keyward/internal/reload"
)

// Files serves a certificate read from files: the one GetCertificate
// returns whatever name the client asks for. Reload reads the files again
// and swaps the new certificate in atomically, so new handshakes get it
// while open connections, which finished theirs, carry on undisturbed;
// Watch reloads when the files change. A pair that fails to load (a
// renewal half written: a new certificate beside the old key) keeps the
// last good one serving.
//
// When the certificate names an OCSP responder and the chain holds its
// issuer, Watch also staples the responder's answer (RFC 6960, TLS
// status_request): a client then learns that the certificate is not
// revoked without asking the CA itself, which is slower and tells the CA
// who visits. The staple is fetched in the background, refreshed halfway
// through its validity, and dropped when it expires; handshakes never
// wait for a responder.
type Files struct {
	certFile, keyFile string
	opts              FilesOptions
	cur               atomic.Pointer[loaded]
	mu                sync.Mutex // serialises Reload and stapling
}

// FilesOptions adjust Files. The zero value is ready to use.
type FilesOptions struct {
	// Logger receives reloads, failures and stapling problems. Nil:
	// nothing is logged.
	Logger *slog.Logger
	// Now is the clock. Nil: time.Now.
	Now func() time.Time
	// After is the timer stapling waits on. Nil: time.After.
	After func(time.Duration) <-chan time.Time
	// Client fetches OCSP responses. Nil: a client with a 10s timeout.
	Client *http.Client
}

// loaded is one certificate as loaded, with what stapling needs.
type loaded struct {
	cert    *tls.Certificate // served; replaced (copied) when a staple arrives
	pem     []byte           // the two files' bytes, to tell a change from a touch
	issuer  *x509.Certificate
	staple  *ocsp.Response // nil: none yet
	stapled time.Time      // when staple was fetched
}

// LoadFiles reads the certificate chain and key. It fails if they cannot
// be read, do not match, or hold no certificate.
func LoadFiles(certFile, keyFile string, opts FilesOptions) (*Files, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.After == nil {
		opts.After = time.After
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: 10 * time.Second}
	}
	f := &Files{certFile: certFile, keyFile: keyFile, opts: opts}
	l, err := f.load()
	if err != nil {
		return nil, err
	}
	f.cur.Store(l)
	return f, nil
}

func (f *Files) load() (*loaded, error) {
	certPEM, err := os.ReadFile(f.certFile)
	if err != nil {
		return nil, fmt.Errorf("reading the certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(f.keyFile)
	if err != nil {
		return nil, fmt.Errorf("reading the key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loading %s and %s: %w", f.certFile, f.keyFile, err)
	}
	l := &loaded{cert: &cert, pem: append(certPEM, keyPEM...)}
	if len(cert.Certificate) > 1 {
		if issuer, err := x509.ParseCertificate(cert.Certificate[1]); err == nil {
			l.issuer = issuer
		}
	}
	return l, nil
}

// GetCertificate returns the certificate, for tls.Config.GetCertificate.
func (f *Files) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return f.cur.Load().cert, nil
}

// Leaf returns the certificate being served.
func (f *Files) Leaf() *x509.Certificate { return f.cur.Load().cert.Leaf }

// Reload reads the files again and, if they load and differ from what is
// served, swaps them in. On failure the last good certificate keeps
// serving and the error says why.
func (f *Files) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, err := f.load()
	if err != nil {
		f.opts.Logger.Error("certificate reload failed; still serving the previous one", "error", err.Error())
		return err
	}
	if bytes.Equal(l.pem, f.cur.Load().pem) {
		return nil
	}
	f.cur.Store(l)
	f.opts.Logger.Info("certificate reloaded", "names", l.cert.Leaf.DNSNames, "not_after", l.cert.Leaf.NotAfter)
	return nil
}

// Watch reloads the files when either changes (through internal/reload:
// debounced, and never half written) and keeps the OCSP staple fresh,
// until ctx ends. It returns early only if the files cannot be watched;
// stapling then still runs until ctx ends.
func (f *Files) Watch(ctx context.Context) error {
	staples := make(chan struct{}, 1)
	reloaded := func() {
		if f.Reload() == nil {
			select {
			case staples <- struct{}{}:
			default:
			}
		}
	}
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	for _, path := range []string{f.certFile, f.keyFile} {
		wg.Add(2)
		// The watcher serves its signal once its watch is in place: that
		// first reload catches a change made since LoadFiles, which no
		// event will announce.
		placed := make(chan struct{})
		go func() {
			defer wg.Done()
			w := &reload.Watcher{Path: path, Signal: placed, Reload: reloaded, Logger: f.opts.Logger}
			if err := w.Run(ctx); err != nil {
				errc <- fmt.Errorf("watching %s: %w", path, err)
			}
		}()
		go func() {
			defer wg.Done()
			select {
			case placed <- struct{}{}:
			case <-ctx.Done():
			}
		}()
	}
	go func() {
		wg.Wait()
		close(errc)
	}()
	go f.staple(ctx, staples)
	if err := <-errc; err != nil {
		return err
	}
	return nil
}

// staple keeps the served certificate's OCSP staple fresh until ctx ends:
// fetched at once, again halfway to its next update (at most a day
// later, since a responder may answer "revoked" any time), after 5
// minutes on failure, and whenever the certificate changes.
func (f *Files) staple(ctx context.Context, changed <-chan struct{}) {
	for {
		wait := f.refreshStaple(ctx)
		if wait < 0 {
			// Nothing to staple until the certificate changes.
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-f.opts.After(wait):
		}
	}
}

// Stapling's timing: a failed fetch is tried again after stapleRetry, a
// good staple refreshed at half its validity, but at least stapleMin and
// at most stapleMax after it was fetched.
const (
	stapleRetry = 5 * time.Minute
	stapleMin   = time.Minute
	stapleMax   = 24 * time.Hour
)

// refreshStaple fetches a new staple for the served certificate if it
// needs one, and returns how long until it should look again; negative:
// the certificate cannot be stapled.
func (f *Files) refreshStaple(ctx context.Context) time.Duration {
	f.mu.Lock()
	l := f.cur.Load()
	f.mu.Unlock()
	leaf := l.cert.Leaf
	if len(leaf.OCSPServer) == 0 || l.issuer == nil {
		return -1
	}
	now := f.opts.Now()
	if l.staple != nil && now.Before(l.stapled.Add(refreshAfter(l.staple))) {
		return l.stapled.Add(refreshAfter(l.staple)).Sub(now)
	}
	resp, der, err := f.fetchOCSP(ctx, leaf, l.issuer)
	if err != nil {
		f.opts.Logger.Warn("OCSP stapling: no fresh answer from the responder; serving without a new staple", "error", err.Error())
		f.expireStaple(l, now)
		return stapleRetry
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur.Load() != l {
		return 0 // reloaded meanwhile: staple the new one
	}
	next := &loaded{pem: l.pem, issuer: l.issuer, staple: resp, stapled: now}
	c := *l.cert
	c.OCSPStaple = der
	next.cert = &c
	f.cur.Store(next)
	return refreshAfter(resp)
}

// expireStaple drops a staple past its NextUpdate: a stale answer is
// worse than none (clients refuse it).
func (f *Files) expireStaple(l *loaded, now time.Time) {
	if l.staple == nil || l.staple.NextUpdate.IsZero() || now.Before(l.staple.NextUpdate) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur.Load() != l {
		return
	}
	c := *l.cert
	c.OCSPStaple = nil
	f.cur.Store(&loaded{cert: &c, pem: l.pem, issuer: l.issuer})
}

func refreshAfter(r *ocsp.Response) time.Duration {
	if r.NextUpdate.IsZero() {
		return stapleMax
	}
	return min(max(r.NextUpdate.Sub(r.ThisUpdate)/2, stapleMin), stapleMax)
}

// fetchOCSP asks the certificate's responder about it. Only a "good"
// answer, signed for this issuer and current, is stapled.
func (f *Files) fetchOCSP(ctx context.Context, leaf, issuer *x509.Certificate) (*ocsp.Response, []byte, error) {
	req, err := ocsp.CreateRequest(leaf, issuer, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("making the OCSP request: %w", err)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, leaf.OCSPServer[0], bytes.NewReader(req))
	if err != nil {
		return nil, nil, fmt.Errorf("OCSP responder %q: %w", leaf.OCSPServer[0], err)
	}
	hreq.Header.Set("Content-Type", "application/ocsp-request")
	res, err := f.opts.Client.Do(hreq)
	if err != nil {
		return nil, nil, fmt.Errorf("asking the OCSP responder: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("OCSP responder answered %s", res.Status)
	}
	der, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if err != nil {
		return nil, nil, fmt.Errorf("reading the OCSP response: %w", err)
	}
	resp, err := ocsp.ParseResponseForCert(der, leaf, issuer)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing the OCSP response: %w", err)
	}
	now := f.opts.Now()
	switch {
	case resp.Status != ocsp.Good:
		return nil, nil, fmt.Errorf("the responder says the certificate is %s", ocspStatus(resp.Status))
	case !resp.NextUpdate.IsZero() && !now.Before(resp.NextUpdate):
		return nil, nil, errors.New("the OCSP response is out of date")
	case !resp.NextUpdate.IsZero() && resp.NextUpdate.After(leaf.NotAfter):
		// Valid past the certificate itself: a sign of a broken responder.
		return nil, nil, errors.New("the OCSP response outlives the certificate")
	}
	return resp, der, nil
}

func ocspStatus(s int) string {
	switch s {
	case ocsp.Revoked:
		return "revoked"
	case ocsp.Unknown:
		return "unknown to it"
	}
	return fmt.Sprintf("in state %d", s)
}
