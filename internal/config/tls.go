package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// TLS serves the public listener over HTTPS: HTTP/2 (ALPN h2) and
// HTTP/1.1, TLS 1.2 at least. Exactly one certificate source is set:
// Cert and Key, or ACME.
//
//	tls:
//	  cert: /etc/keyward/cert.pem   # reloaded when the files change
//	  key: /etc/keyward/key.pem
//	  hsts: 1y
//
//	tls:
//	  acme: { domains: [gw.example.com], email: ops@example.com, storage: /var/lib/keyward/acme }
type TLS struct {
	// Cert is a PEM file holding the certificate chain, the server's
	// certificate first. A relative path is relative to the config file.
	// The files are read again when they change (a renewal by another
	// tool): new connections get the new certificate, open ones are not
	// dropped. Default: none.
	Cert string `yaml:"cert"`
	// Key is the PEM file holding Cert's private key. Required with Cert.
	Key string `yaml:"key"`
	// ACME obtains certificates for its domains from an ACME certificate
	// authority (Let's Encrypt by default) and renews them before they
	// expire. Default: none.
	ACME *ACME `yaml:"acme"`
	// HSTS sends Strict-Transport-Security with this max-age on every
	// HTTPS response ("1y", "180d", "12h"): browsers then refuse plain
	// HTTP to this host for that long. Default: off (a certificate
	// problem would otherwise lock browsers out for the whole max-age).
	HSTS string `yaml:"hsts"`
}

// ACME is automatic certificate management (RFC 8555) through certmagic.
// Challenges are answered by keyward itself: HTTP-01 on http_redirect's
// listener (port 80 for a public CA) and TLS-ALPN-01 on the public one
// (port 443 for a public CA).
type ACME struct {
	// Domains are the host names the certificate is for; each must
	// resolve to this machine. Required.
	Domains []string `yaml:"domains"`
	// Email is given to the CA for expiry and incident notices. Default:
	// none (an account without contact).
	Email string `yaml:"email"`
	// Storage is the directory holding the account, certificates and
	// keys, so a restart reuses them instead of asking the CA again (a
	// public CA limits how often it issues). Several instances may share
	// it (certmagic locks it). A relative path is relative to the config
	// file. Default: $XDG_DATA_HOME/keyward/acme, else
	// ~/.local/share/keyward/acme.
	Storage string `yaml:"storage"`
	// CA is the directory URL of the ACME server. Default Let's Encrypt's
	// production directory, DefaultACMECA.
	CA string `yaml:"ca"`
	// CARoot is a PEM file of root certificates to trust for talking to
	// CA, for a private ACME server (step-ca, pebble). Default: the
	// system's roots.
	CARoot string `yaml:"ca_root"`
}

// DefaultACMECA is Let's Encrypt's production directory, tls.acme.ca's
// default.
const DefaultACMECA = "https://acme-v02.api.letsencrypt.org/directory"

// Engines are the values server.engine accepts: "keyward" (keyward's own
// HTTP/1.1 server, internal/http1) and "stdlib" (net/http's), each behind
// the framing guard.
var Engines = []string{"keyward", "stdlib"}

func (t *TLS) setDefaults() {
	if t == nil || t.ACME == nil {
		return
	}
	if t.ACME.CA == "" {
		t.ACME.CA = DefaultACMECA
	}
}

// ParseAge parses a long duration such as an HSTS max-age: a Go duration
// ("12h") or a whole number of days or years ("180d", "1y"; a year is 365
// days). It must be positive.
func ParseAge(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	for _, u := range []struct {
		suffix string
		unit   time.Duration
	}{{"y", 365 * 24 * time.Hour}, {"d", 24 * time.Hour}} {
		if v, ok := strings.CutSuffix(t, u.suffix); ok {
			n, err := strconv.ParseInt(v, 10, 32)
			if err != nil || n <= 0 {
				break
			}
			return time.Duration(n) * u.unit, nil
		}
	}
	if d, err := time.ParseDuration(t); err == nil && d > 0 {
		return d, nil
	}
	return 0, fmt.Errorf("bad duration %q: want a positive duration like 1y, 180d or 12h", s)
}
