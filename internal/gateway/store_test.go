package gateway

import (
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/config"
)

// TestStoreURL: keyward check reports a store URL that Open would refuse
// on the store line, with what is wrong and what to write, and never the
// URL's password; every form of the URL is accepted.
func TestStoreURL(t *testing.T) {
	tests := []struct {
		name, store string
		want        string // "" when accepted
	}{
		{name: "memory", store: "memory"},
		{name: "one server", store: "redis://:s3cret@cache.internal:6379/0"},
		{name: "Sentinel over TLS", store: "rediss-sentinel://:s3cret@s1,s2/mymaster/0?sentinel_password=s3cret"},
		{name: "cluster", store: "redis-cluster://:s3cret@n1:7000,n2:7000"},
		{name: "bad port", store: "redis://:s3cret@cache.internal:port/0", want: "k.yaml:2: store: parsing redis URL: host 1: invalid port: write HOST:PORT"},
		{name: "missing CA file", store: "rediss://:s3cret@cache.internal?ca=missing-ca.pem", want: "k.yaml:2: store: parsing redis URL: reading the CA file (option ca)"},
		{name: "Sentinel without a master", store: "redis-sentinel://:s3cret@s1:26379", want: "k.yaml:2: store: parsing redis URL: no Sentinel master name"},
		{name: "not Redis", store: "mysql://root:s3cret@db", want: "want memory, redis://"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs, _ := compileErrs(t, fmt.Sprintf(`
store: %q
routes:
  - name: a
    path: /a
    upstream: "https://api.example.com/a"
`, tt.store), nil)
			got := strings.Join(errs, "\n")
			if strings.Contains(got, "s3cret") {
				t.Errorf("errors quote the password:\n%s", got)
			}
			switch {
			case tt.want == "" && got != "":
				t.Errorf("errors:\n%s\nwant none", got)
			case tt.want != "" && !strings.Contains(got, tt.want):
				t.Errorf("errors:\n%s\nwant one saying %q", got, tt.want)
			}
		})
	}
}

// TestStoreURLSecrets: the store URL takes its password from a declared
// secret, escaped so that any byte stays part of the password; a
// placeholder that is not a declared secret is an error that quotes no
// value.
func TestStoreURLSecrets(t *testing.T) {
	const password = "p@ss:w/rd%+ é"
	env := map[string]string{"REDIS_PASSWORD": password}
	getenv := func(k string) string { return env[k] }
	for _, tc := range []struct {
		store, want, err string
	}{
		{"redis://:{secret.redis}@127.0.0.1:6379/0", "redis://:p%40ss%3Aw%2Frd%25%2B%20%C3%A9@127.0.0.1:6379/0", ""},
		{"redis://127.0.0.1:6379", "redis://127.0.0.1:6379", ""},
		{"redis://:{secret.nope}@127.0.0.1", "", `declare it under secrets`},
		{"redis://:{env.REDIS_PASSWORD}@127.0.0.1", "", "not a {secret.NAME} placeholder"},
		{"redis://:Zq{h7Kx}9p@127.0.0.1", "", "not a {secret.NAME} placeholder"},
		{"redis://:{secret.redis@127.0.0.1", "", "an unclosed {"},
	} {
		f, err := config.Parse("k.yaml", []byte("secrets:\n  redis: { env: REDIS_PASSWORD }\nstore: \""+tc.store+"\"\nroutes: [{ name: a, path: /a, upstream: \"https://api.example.com/a\" }]\n"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := StoreURL(f, getenv)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "p@ss") || strings.Contains(err.Error(), "h7Kx") {
				t.Errorf("%s: error %v, want one saying %q without the password", tc.store, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q %v, want %q", tc.store, got, err, tc.want)
		}
		if u, err := url.Parse(got); err != nil {
			t.Errorf("%s: %v", tc.store, err)
		} else if p, _ := u.User.Password(); u.User != nil && p != password {
			t.Errorf("%s: the URL's password is %q", tc.store, p)
		}
	}
}

// TestStoreSecretMissingOnce: a store secret that does not load is one
// error, where the secret is declared, not a second one on store.
func TestStoreSecretMissingOnce(t *testing.T) {
	errs, _ := compileErrs(t, `
secrets:
  redis: { env: KW_UNSET_REDIS_PASSWORD }
store: "redis://:{secret.redis}@127.0.0.1:6379"
routes: [{ name: a, path: /a, upstream: "https://api.example.com/a" }]
`, nil)
	if len(errs) != 1 || !strings.Contains(errs[0], "secrets.redis") {
		t.Errorf("errors %q, want one, on secrets.redis", errs)
	}
}
