package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/keyward/keyward/internal/certs"
	"github.com/keyward/keyward/internal/certs/acme"
)

// tlsSetup prepares HTTPS for the public listener ln from the serving
// settings: the TLS configuration (nil for plain HTTP), the ACME manager
// (nil unless tls.acme; Serve starts it once the listeners serve), and
// the http_redirect listener's handler. Certificate files are watched
// until ctx ends.
func (s *Server) tlsSetup(ctx context.Context, ln net.Listener) (*tls.Config, *acme.Manager, http.Handler, error) {
	st := s.Settings()
	redirect := redirectTo(ln.Addr())
	switch {
	case st.TLS == nil:
		return nil, nil, redirect, nil
	case st.TLS.ACME == nil:
		go func() {
			if err := s.files.Watch(ctx); err != nil {
				s.log.Warn("certificate files are not watched; reload with SIGHUP", "error", err.Error())
			}
		}()
		return certs.ServerConfig(s.files.GetCertificate), nil, redirect, nil
	}
	m, err := acme.New(acme.Options{Spec: st.TLS.ACME, TLSAddr: ln.Addr(), HTTPAddr: s.RedirectAddr(), Logger: s.log})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("automatic certificates: %w", err)
	}
	return m.TLSConfig(), m, m.HTTPHandler(redirect), nil
}

// redirectTo answers every request with a redirect to the same host and
// target over https, on the port of the public listener at addr (left out
// when it is 443): 301 for GET and HEAD, 308 for other methods, which a
// client must repeat with the same method and body (RFC 9110 section
// 15.4), where a 301 would turn a POST into a GET.
func redirectTo(addr net.Addr) http.Handler {
	_, port, _ := net.SplitHostPort(addr.String())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		if port != "443" && port != "" {
			host = net.JoinHostPort(host, port)
		} else if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		status := http.StatusMovedPermanently
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			status = http.StatusPermanentRedirect
		}
		w.Header()["Location"] = []string{"https://" + host + r.URL.RequestURI()}
		w.Header()["Content-Length"] = []string{"0"}
		w.WriteHeader(status)
	})
}
