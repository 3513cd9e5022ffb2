package jwt

import (
	"context"
	"testing"
)

// go test -run '^$' -bench . -benchmem ./internal/caller/jwt/
func BenchmarkVerify(b *testing.B) {
	genKeys(b)
	for _, tc := range []struct {
		name  string
		key   testKey
		cache int
	}{
		{"ES256", testKey{kid: "ec", alg: "ES256", priv: ecA}, -1},
		{"RS256", testKey{kid: "rsa", alg: "RS256", priv: rsaA}, -1},
		{"EdDSA", testKey{kid: "ed", alg: "EdDSA", priv: edA}, -1},
		{"ES256-cached", testKey{kid: "ec", alg: "ES256", priv: ecA}, 0},
		{"RS256-cached", testKey{kid: "rsa", alg: "RS256", priv: rsaA}, 0},
	} {
		b.Run(tc.name, func(b *testing.B) {
			clk := newClock()
			is := newIssuer(b, tc.key)
			v, err := New(Options{Kind: "users", Issuer: testIss, Audience: []string{"api"}, JWKS: is.url(), Now: clk.Now, CacheSize: tc.cache})
			if err != nil {
				b.Fatal(err)
			}
			r := bearer(mint(b, tc.key, claimsAt(clk.Now()), nil))
			if _, err := v.Verify(context.Background(), r); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := v.Verify(context.Background(), r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
