package jwt

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"
)

// clock is a fake clock tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testKey is a signing key a test issuer publishes.
type testKey struct {
	kid  string
	alg  string
	priv crypto.Signer
}

// Keys are generated once: 2048-bit RSA takes a while under -race.
var (
	keysOnce sync.Once
	rsaA     *rsa.PrivateKey
	rsaB     *rsa.PrivateKey
	ecA      *ecdsa.PrivateKey
	ec384    *ecdsa.PrivateKey
	edA      ed25519.PrivateKey
	rsaSmall *rsa.PrivateKey
)

func genKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if rsaA, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if rsaB, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if ecA, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if ec384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
			panic(err)
		}
		if _, edA, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
		//nolint:gosec // deliberately weak: the JWKS must refuse it
		if rsaSmall, err = rsa.GenerateKey(rand.Reader, 1024); err != nil {
			panic(err)
		}
	})
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// jwkOf is the public JWK of k.
func jwkOf(k testKey) map[string]any {
	m := map[string]any{"kid": k.kid, "use": "sig"}
	if k.alg != "" {
		m["alg"] = k.alg
	}
	switch p := k.priv.Public().(type) {
	case *rsa.PublicKey:
		m["kty"] = "RSA"
		m["n"] = b64(p.N.Bytes())
		m["e"] = b64(big.NewInt(int64(p.E)).Bytes())
	case *ecdsa.PublicKey:
		m["kty"] = "EC"
		size := (p.Curve.Params().BitSize + 7) / 8
		raw, _ := p.Bytes()
		m["crv"] = p.Curve.Params().Name
		m["x"] = b64(raw[1 : 1+size])
		m["y"] = b64(raw[1+size:])
	case ed25519.PublicKey:
		m["kty"] = "OKP"
		m["crv"] = "Ed25519"
		m["x"] = b64(p)
	}
	return m
}

// issuer is a local identity provider: a JWKS server whose keys a test
// rotates, and which counts its fetches.
type issuer struct {
	srv     *httptest.Server
	mu      sync.Mutex
	keys    []map[string]any
	body    []byte        // when set, served instead of the keys
	status  int           // when set, answered instead of 200
	block   chan struct{} // when set, requests wait for it to close
	fetches atomic.Int64
}

func newIssuer(t testing.TB, keys ...testKey) *issuer {
	t.Helper()
	is := &issuer{}
	is.publish(keys...)
	is.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		is.fetches.Add(1)
		is.mu.Lock()
		block, status, body := is.block, is.status, is.body
		if body == nil {
			body, _ = json.Marshal(map[string]any{"keys": is.keys})
		}
		is.mu.Unlock()
		if block != nil {
			select {
			case <-block:
			case <-r.Context().Done():
				return
			}
		}
		if status != 0 {
			w.WriteHeader(status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(is.srv.Close)
	return is
}

func (is *issuer) publish(keys ...testKey) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys = nil
	for _, k := range keys {
		is.keys = append(is.keys, jwkOf(k))
	}
}

func (is *issuer) set(f func(is *issuer)) {
	is.mu.Lock()
	defer is.mu.Unlock()
	f(is)
}

func (is *issuer) url() string { return is.srv.URL + "/.well-known/jwks.json" }

const testIss = "https://auth.example.test/"

// claimsAt returns valid claims for a token issued at now.
func claimsAt(now time.Time) gojwt.MapClaims {
	return gojwt.MapClaims{
		"iss": testIss,
		"aud": []string{"api"},
		"sub": "user-42",
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(time.Hour).Unix(),
	}
}

// mint signs claims with k, its kid in the header, plus extra headers.
func mint(t testing.TB, k testKey, claims gojwt.MapClaims, extra map[string]any) string {
	t.Helper()
	var m gojwt.SigningMethod
	switch k.alg {
	case "":
		t.Fatal("mint: key without alg")
	default:
		m = gojwt.GetSigningMethod(k.alg)
	}
	tok := gojwt.NewWithClaims(m, claims)
	if k.kid != "" {
		tok.Header["kid"] = k.kid
	}
	for h, v := range extra {
		tok.Header[h] = v
	}
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	return s
}

// rawToken assembles a token from header and payload JSON texts and a
// signature over them made by sign (nil: empty signature).
func rawToken(header, payload string, sign func(signing string) []byte) string {
	s := b64([]byte(header)) + "." + b64([]byte(payload))
	var sig []byte
	if sign != nil {
		sig = sign(s)
	}
	return s + "." + b64(sig)
}

func bearer(tok string) *http.Request {
	r := httptest.NewRequest("GET", "/x", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	return r
}

// waitFor waits until cond holds, failing after 5s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// noSecretIn fails when err quotes a canary (of 8 bytes or more: shorter
// ones match by chance).
func noSecretIn(t testing.TB, err error, canaries ...string) {
	t.Helper()
	if err == nil {
		return
	}
	for _, c := range canaries {
		if len(c) >= 8 && strings.Contains(err.Error(), c) {
			t.Errorf("error text %q contains a credential", err.Error())
		}
	}
}
