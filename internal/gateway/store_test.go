package gateway

import (
	"fmt"
	"strings"
	"testing"
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
