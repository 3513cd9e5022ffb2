package gateway_test

import (
	"bufio"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
)

// BenchmarkProxyCallers measures the benchmark job's route with verified
// callers against the same route without: a JWT user (ES256, RS256) who
// sends the same token on every request, as a signed-in page does, so the
// verified-token cache answers after the first; and, for the cost of a
// first sight, a new token every request. The target: a route
// with ES256 or RS256 callers serves at least 0.9x the requests of the
// route without callers (server/http1 is the figure to compare).
func BenchmarkProxyCallers(b *testing.B) {
	up := benchUpstream(b)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	b64 := base64.RawURLEncoding.EncodeToString
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{
		{"kty": "EC", "crv": "P-256", "kid": "ec", "alg": "ES256", "x": b64(ec.X.FillBytes(make([]byte, 32))), "y": b64(ec.Y.FillBytes(make([]byte, 32)))},
		{"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": b64(rk.N.Bytes()), "e": b64(big.NewInt(int64(rk.E)).Bytes())},
	}})
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(jwks) }))
	b.Cleanup(idp.Close)
	mint := func(method gojwt.SigningMethod, kid string, key crypto.Signer, sub string) string {
		t := gojwt.NewWithClaims(method, gojwt.MapClaims{"iss": "https://id.bench", "aud": "bench", "sub": sub,
			"exp": time.Now().Add(time.Hour).Unix()})
		t.Header["kid"] = kid
		s, err := t.SignedString(key)
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	yaml := strings.ReplaceAll(benchConfig, "{{UP}}", up.URL) + fmt.Sprintf(`
callers:
  users:
    jwt: { issuer: "https://id.bench", audience: [bench], jwks: "%s/jwks" }
`, idp.URL)
	yaml = strings.Replace(yaml, "    methods: [GET]\n", "    methods: [GET]\n    callers: [users]\n", 1)
	f, err := config.Parse(filepath.Join(b.TempDir(), "keyward.yaml"), []byte(yaml))
	if err != nil {
		b.Fatal(err)
	}
	g, _, err := gateway.Compile(f, gateway.Options{Logger: slog.New(slog.DiscardHandler),
		Getenv: func(string) string { return "bench-secret" }})
	if err != nil {
		b.Fatal(err)
	}
	h := gateway.NewHandler(g)
	addr := gatewaytest.Serve(b, h, g.Settings(), slog.New(slog.DiscardHandler)).Addr
	plain := gatewaytest.Serve(b, benchGateway(b, up.URL, nil), g.Settings(), slog.New(slog.DiscardHandler)).Addr

	b.Run("none/server/http1", func(b *testing.B) { benchServer(b, plain) })
	for _, tc := range []struct {
		name   string
		method gojwt.SigningMethod
		kid    string
		key    crypto.Signer
	}{{"es256", gojwt.SigningMethodES256, "ec", ec}, {"rs256", gojwt.SigningMethodRS256, "rsa", rk}} {
		tok := mint(tc.method, tc.kid, tc.key, "user-1")
		b.Run(tc.name+"/server/http1", func(b *testing.B) { benchServerAuth(b, addr, func() string { return tok }) })
		b.Run(tc.name+"/first-sight/server/http1", func(b *testing.B) {
			toks := make([]string, 0, 4096)
			for i := range cap(toks) {
				toks = append(toks, mint(tc.method, tc.kid, tc.key, fmt.Sprintf("user-%d", i)))
			}
			i := 0
			benchServerAuth(b, addr, func() string { i++; return toks[i%len(toks)] })
		})
	}
}

func benchServerAuth(b *testing.B, addr string, token func() string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	buf := make([]byte, 32<<10)
	b.ReportAllocs()
	for b.Loop() {
		req := "GET /my-repos HTTP/1.1\r\nHost: 127.0.0.1:9105\r\nOrigin: https://app.example\r\nAuthorization: Bearer " + token() + "\r\n\r\n"
		if _, err := io.WriteString(c, req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, resp.Body, buf)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || n != 2065 {
			b.Fatalf("status %d, %d bytes: %v", resp.StatusCode, n, err)
		}
	}
}
