package config

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestTLSDecodesWithDefaults(t *testing.T) {
	f := mustParse(t, `listen: ":443"
tls:
  acme: { domains: [gw.example.com], email: ops@example.com, storage: /var/lib/keyward/acme }
  hsts: 1y
http_redirect: ":80"
server: { engine: stdlib }
routes:
  - { name: r, path: /r, upstream: "https://api.example.com/r" }
`)
	if len(f.Unknown) != 0 {
		t.Fatalf("unexpected problems: %v", f.Unknown)
	}
	want := &TLS{HSTS: "1y", ACME: &ACME{Domains: []string{"gw.example.com"}, Email: "ops@example.com",
		Storage: "/var/lib/keyward/acme", CA: DefaultACMECA}}
	if diff := cmp.Diff(want, f.Config.TLS); diff != "" {
		t.Errorf("tls (-want +got):\n%s", diff)
	}
	if f.Config.HTTPRedirect != ":80" || f.Config.Server.Engine != "stdlib" {
		t.Errorf("http_redirect %q, server.engine %q", f.Config.HTTPRedirect, f.Config.Server.Engine)
	}
}

func TestTLSUnknownFieldIsAProblem(t *testing.T) {
	f := mustParse(t, `tls: { certificate: cert.pem }
routes:
  - { name: r, path: /r, upstream: "https://api.example.com/r" }
`)
	if len(f.Unknown) == 0 {
		t.Fatal("tls.certificate was accepted")
	}
}

func TestParseAge(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{in: "1y", want: 365 * 24 * time.Hour},
		{in: "180d", want: 180 * 24 * time.Hour},
		{in: "12h", want: 12 * time.Hour},
		{in: " 2y ", want: 2 * 365 * 24 * time.Hour},
		{in: "0d", bad: true},
		{in: "-1y", bad: true},
		{in: "1.5y", bad: true},
		{in: "y", bad: true},
		{in: "", bad: true},
		{in: "forever", bad: true},
	} {
		got, err := ParseAge(tt.in)
		if (err != nil) != tt.bad || got != tt.want {
			t.Errorf("ParseAge(%q) = %v, %v; want %v, bad %v", tt.in, got, err, tt.want, tt.bad)
		}
	}
}
