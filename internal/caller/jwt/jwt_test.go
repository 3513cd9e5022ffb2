package jwt

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/secret"
)

type fixture struct {
	is    *issuer
	clk   *clock
	v     *Verifier
	rsa   testKey
	rsaB  testKey // published without alg: RS* and PS* may use it
	ec    testKey
	ec384 testKey
	ed    testKey
}

func newFixture(t *testing.T, mod func(*Options)) *fixture {
	t.Helper()
	genKeys(t)
	f := &fixture{
		clk:   newClock(),
		rsa:   testKey{kid: "rsa-1", alg: "RS256", priv: rsaA},
		rsaB:  testKey{kid: "rsa-b", priv: rsaB},
		ec:    testKey{kid: "ec-1", alg: "ES256", priv: ecA},
		ec384: testKey{kid: "ec-384", alg: "ES384", priv: ec384},
		ed:    testKey{kid: "ed-1", alg: "EdDSA", priv: edA},
	}
	f.is = newIssuer(t, f.rsa, f.rsaB, f.ec, f.ec384, f.ed)
	o := Options{Kind: "users", Issuer: testIss, Audience: []string{"api", "other"}, JWKS: f.is.url(), Now: f.clk.Now}
	if mod != nil {
		mod(&o)
	}
	v, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	f.v = v
	return f
}

func (f *fixture) claims() gojwt.MapClaims { return claimsAt(f.clk.Now()) }

func withAlg(k testKey, alg string) testKey { k.alg = alg; return k }

func TestVerifyAlgorithms(t *testing.T) {
	f := newFixture(t, nil)
	for _, k := range []testKey{f.rsa, f.ec, f.ec384, f.ed,
		withAlg(f.rsaB, "RS384"), withAlg(f.rsaB, "RS512"),
		withAlg(f.rsaB, "PS256"), withAlg(f.rsaB, "PS384"), withAlg(f.rsaB, "PS512")} {
		t.Run(k.alg+"/"+k.kid, func(t *testing.T) {
			tok := mint(t, k, f.claims(), nil)
			id, err := f.v.Verify(context.Background(), bearer(tok))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if id.Kind != "users" || id.ID != "user-42" || id.Claims["iss"] != testIss {
				t.Errorf("identity = %+v", id)
			}
		})
	}
	if n := f.is.fetches.Load(); n != 1 {
		t.Errorf("JWKS fetched %d times, want 1", n)
	}
}

// TestAttacks is the JWT attack set: every token here must be refused,
// with the right reason, and no error may quote it.
func TestAttacks(t *testing.T) {
	f := newFixture(t, nil)
	now := f.clk.Now()
	valid := f.claims()
	with := func(k string, v any) gojwt.MapClaims {
		c := claimsAt(now)
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	// The attacker's own key, which they publish on their own server.
	genKeys(t)
	attackerKey := testKey{kid: "rsa-1", alg: "RS256", priv: rsaB}
	attacker := newIssuer(t, attackerKey)

	pubDER, _ := x509.MarshalPKIXPublicKey(rsaA.Public())
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hmacWith := func(key []byte) func(string) []byte {
		return func(s string) []byte {
			m := hmac.New(sha256.New, key)
			m.Write([]byte(s))
			return m.Sum(nil)
		}
	}
	payload, _ := json.Marshal(valid)
	rsaSign := func(s string) []byte {
		sig, err := gojwt.SigningMethodRS256.Sign(s, rsaA)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}

	cases := []struct {
		name string
		tok  string
		want caller.Reason
	}{
		{"alg none", rawToken(`{"alg":"none","typ":"JWT"}`, string(payload), nil), caller.BadSignature},
		{"alg None", rawToken(`{"alg":"None","kid":"rsa-1"}`, string(payload), nil), caller.BadSignature},
		{"HS256 keyed with the RSA public key (PEM)", rawToken(`{"alg":"HS256","kid":"rsa-1"}`, string(payload), hmacWith(pubPEM)), caller.BadSignature},
		{"HS256 keyed with the RSA modulus", rawToken(`{"alg":"HS256","kid":"rsa-1"}`, string(payload), hmacWith(rsaA.N.Bytes())), caller.BadSignature},
		{"kid path traversal", mint(t, testKey{kid: "../../../../dev/null", alg: "RS256", priv: rsaA}, valid, nil), caller.UnknownKey},
		{"kid SQL injection", mint(t, testKey{kid: "x' UNION SELECT 'secret", alg: "RS256", priv: rsaA}, valid, nil), caller.UnknownKey},
		{"kid oversized", mint(t, testKey{kid: strings.Repeat("k", 300), alg: "RS256", priv: rsaA}, valid, nil), caller.Malformed},
		{"kid empty", mint(t, testKey{alg: "RS256", priv: rsaA}, valid, map[string]any{"kid": ""}), caller.Malformed},
		{"kid not a string", mint(t, testKey{alg: "RS256", priv: rsaA}, valid, map[string]any{"kid": 7}), caller.Malformed},
		{"jku to the attacker's keys", mint(t, attackerKey, valid, map[string]any{"jku": attacker.url()}), caller.BadSignature},
		{"x5u to the attacker's keys", mint(t, attackerKey, valid, map[string]any{"x5u": attacker.url()}), caller.BadSignature},
		{"embedded jwk", mint(t, attackerKey, valid, map[string]any{"jwk": jwkOf(attackerKey)}), caller.BadSignature},
		{"signed by another key under a known kid", mint(t, attackerKey, valid, nil), caller.BadSignature},
		{"ES256 under an RSA kid", mint(t, testKey{kid: "rsa-1", alg: "ES256", priv: ecA}, valid, nil), caller.UnknownKey},
		{"RS256 key used as PS256", mint(t, testKey{kid: "rsa-1", alg: "PS256", priv: rsaA}, valid, nil), caller.UnknownKey},
		{"ES384 under a P-256 kid", mint(t, testKey{kid: "ec-1", alg: "ES384", priv: ec384}, valid, nil), caller.UnknownKey},
		{"ES512 refused", rawToken(`{"alg":"ES512","kid":"ec-1"}`, string(payload), func(string) []byte { return make([]byte, 132) }), caller.BadSignature},
		{"HS512 refused", rawToken(`{"alg":"HS512","kid":"rsa-1"}`, string(payload), hmacWith(pubPEM)), caller.BadSignature},
		{"tampered payload", func() string {
			tok := mint(t, f.rsa, valid, nil)
			parts := strings.Split(tok, ".")
			c := claimsAt(now)
			c["sub"] = "admin"
			p, _ := json.Marshal(c)
			return parts[0] + "." + b64(p) + "." + parts[2]
		}(), caller.BadSignature},
		{"expired", mint(t, f.rsa, with("exp", now.Add(-time.Minute).Unix()), nil), caller.Expired},
		{"not yet valid", mint(t, f.rsa, with("nbf", now.Add(time.Minute).Unix()), nil), caller.NotYetValid},
		{"issued in the future", mint(t, f.rsa, with("iat", now.Add(time.Minute).Unix()), nil), caller.NotYetValid},
		{"no exp", mint(t, f.rsa, with("exp", nil), nil), caller.Malformed},
		{"wrong issuer", mint(t, f.rsa, with("iss", "https://evil.example/"), nil), caller.WrongIssuer},
		{"issuer prefix", mint(t, f.rsa, with("iss", testIss+"x"), nil), caller.WrongIssuer},
		{"wrong audience", mint(t, f.rsa, with("aud", "someone-else"), nil), caller.WrongAudience},
		{"no audience", mint(t, f.rsa, with("aud", nil), nil), caller.WrongAudience},
		{"oversized", mint(t, f.rsa, with("pad", strings.Repeat("a", MaxTokenBytes)), nil), caller.TooLarge},
		{"duplicate claim", rawToken(`{"alg":"RS256","kid":"rsa-1"}`,
			strings.Replace(string(payload), `"sub":"user-42"`, `"sub":"user-42","sub":"admin"`, 1), rsaSign), caller.Malformed},
		{"duplicate header", rawToken(`{"alg":"RS256","kid":"rsa-1","kid":"rsa-1"}`, string(payload), rsaSign), caller.Malformed},
		{"crit header", rawToken(`{"alg":"RS256","kid":"rsa-1","crit":["exp"]}`, string(payload), rsaSign), caller.Malformed},
		{"two segments", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0", caller.Malformed},
		{"not base64", "a.b!.c", caller.Malformed},
		{"payload not an object", rawToken(`{"alg":"RS256","kid":"rsa-1"}`, `["sub"]`, rsaSign), caller.Malformed},
		{"id claim missing", mint(t, f.rsa, with("sub", nil), nil), caller.ClaimFailed},
		{"id claim with a newline", mint(t, f.rsa, with("sub", "a\nb"), nil), caller.ClaimFailed},
		{"id claim not a string", mint(t, f.rsa, with("sub", map[string]any{"a": 1}), nil), caller.ClaimFailed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.v.Verify(context.Background(), bearer(tc.tok))
			if got := caller.ReasonOf(err); got != tc.want {
				t.Fatalf("reason = %q (%v), want %q", got, err, tc.want)
			}
			parts := strings.Split(tc.tok, ".")
			noSecretIn(t, err, append(parts, tc.tok)...)
		})
	}
	if n := attacker.fetches.Load(); n != 0 {
		t.Errorf("the attacker's key server was fetched %d times: jku/x5u must be ignored", n)
	}
}

func TestMissingAndAmbiguous(t *testing.T) {
	f := newFixture(t, nil)
	tok := mint(t, f.rsa, f.claims(), nil)
	for _, tc := range []struct {
		name string
		h    http.Header
		want caller.Reason
	}{
		{"no header", http.Header{}, caller.Missing},
		{"basic scheme", http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}, caller.Malformed},
		{"empty bearer", http.Header{"Authorization": {"Bearer "}}, caller.Malformed},
		{"two headers", http.Header{"Authorization": {"Bearer " + tok, "Bearer " + tok}}, caller.Malformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.Header = tc.h
			_, err := f.v.Verify(context.Background(), r)
			if got := caller.ReasonOf(err); got != tc.want {
				t.Fatalf("reason = %q (%v), want %q", got, err, tc.want)
			}
		})
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "bearer "+tok) // RFC 6750: case-insensitive scheme
	if _, err := f.v.Verify(context.Background(), r); err != nil {
		t.Errorf("lower-case scheme: %v", err)
	}
}

func TestFrom(t *testing.T) {
	for _, tc := range []struct {
		from string
		req  func(tok string) *http.Request
	}{
		{"cookie:sb", func(tok string) *http.Request {
			r := httptest.NewRequest("GET", "/", nil)
			r.AddCookie(&http.Cookie{Name: "sb", Value: tok})
			return r
		}},
		{"query:access_token", func(tok string) *http.Request {
			return httptest.NewRequest("GET", "/?access_token="+tok, nil)
		}},
		{"header:X-Id-Token", func(tok string) *http.Request {
			r := httptest.NewRequest("GET", "/", nil)
			r.Header.Set("X-Id-Token", tok)
			return r
		}},
	} {
		t.Run(tc.from, func(t *testing.T) {
			src, err := caller.ParseSource(tc.from)
			if err != nil {
				t.Fatal(err)
			}
			f := newFixture(t, func(o *Options) { o.From = src })
			tok := mint(t, f.ec, f.claims(), nil)
			if _, err := f.v.Verify(context.Background(), tc.req(tok)); err != nil {
				t.Errorf("Verify: %v", err)
			}
			if _, err := f.v.Verify(context.Background(), bearer(tok)); caller.ReasonOf(err) != caller.Missing {
				t.Errorf("a token elsewhere: %v, want missing", err)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.RefetchGap = time.Second })
	f.is.publish(f.rsa)
	if _, err := f.v.Verify(context.Background(), bearer(mint(t, f.rsa, f.claims(), nil))); err != nil {
		t.Fatal(err)
	}
	// The issuer rotates in a new key; a token signed by it arrives
	// before the next scheduled refresh.
	next := testKey{kid: "ec-2", alg: "ES256", priv: ecA}
	f.is.publish(f.rsa, next)
	f.clk.Advance(2 * time.Second)
	if _, err := f.v.Verify(context.Background(), bearer(mint(t, next, f.claims(), nil))); err != nil {
		t.Fatalf("token of the rotated-in key: %v", err)
	}
	if n := f.is.fetches.Load(); n != 2 {
		t.Errorf("fetches = %d, want 2 (one more for the unknown kid)", n)
	}
	// The old key is rotated out; after the background refresh, new
	// tokens signed by it are refused.
	f.is.publish(next)
	f.clk.Advance(DefaultRefreshEvery)
	_, _ = f.v.Verify(context.Background(), bearer(mint(t, next, f.claims(), nil))) // triggers the refresh
	waitFor(t, "the background refresh", func() bool {
		return f.v.keys.keys.Load().byKid["rsa-1"] == nil
	})
	_, err := f.v.Verify(context.Background(), bearer(mint(t, f.rsa, f.claims(), nil)))
	if caller.ReasonOf(err) != caller.UnknownKey {
		t.Errorf("token of the rotated-out key: %v, want unknown_key", err)
	}
}

// TestUnknownKidFlood: forged kids cost at most one fetch per gap, and
// fail at once in between.
func TestUnknownKidFlood(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.CacheSize = -1 })
	if _, err := f.v.Verify(context.Background(), bearer(mint(t, f.rsa, f.claims(), nil))); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 500 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			forged := testKey{kid: fmt.Sprintf("forged-%d", i), alg: "ES256", priv: ecA}
			_, err := f.v.Verify(context.Background(), bearer(mint(t, forged, f.claims(), nil)))
			if caller.ReasonOf(err) != caller.UnknownKey {
				t.Errorf("forged kid: %v", err)
			}
		}()
	}
	wg.Wait()
	if n := f.is.fetches.Load(); n > 2 {
		t.Errorf("500 forged kids caused %d fetches, want at most 2", n)
	}
	before := f.is.fetches.Load()
	f.clk.Advance(DefaultRefetchGap)
	forged := testKey{kid: "forged-late", alg: "ES256", priv: ecA}
	for range 100 {
		_, _ = f.v.Verify(context.Background(), bearer(mint(t, forged, f.claims(), nil)))
	}
	if n := f.is.fetches.Load() - before; n != 1 {
		t.Errorf("after the gap, 100 forged kids caused %d fetches, want 1", n)
	}
}

func TestJWKSDown(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.CacheSize = -1 })
	if _, err := f.v.Verify(context.Background(), bearer(mint(t, f.ec, f.claims(), nil))); err != nil {
		t.Fatal(err)
	}
	f.is.set(func(is *issuer) { is.status = http.StatusServiceUnavailable })
	f.clk.Advance(DefaultRefreshEvery + time.Second)
	// Stale keys: the refresh fails in the background, and the last good
	// keys keep working, before and after it.
	if _, err := f.v.Verify(context.Background(), bearer(mint(t, f.ed, f.claims(), nil))); err != nil {
		t.Fatalf("with the JWKS down: %v", err)
	}
	waitFor(t, "the failed refresh", func() bool {
		f.v.keys.mu.Lock()
		defer f.v.keys.mu.Unlock()
		return f.v.keys.inflight == nil && f.v.keys.lastErr != nil
	})
	if _, err := f.v.Verify(context.Background(), bearer(mint(t, f.rsa, f.claims(), nil))); err != nil {
		t.Fatalf("after the failed refresh: %v", err)
	}
	if n := f.is.fetches.Load(); n != 2 {
		t.Errorf("fetches = %d, want 2", n)
	}

	// Never fetched and down: jwks_unavailable, and one fetch per gap.
	g := newFixture(t, nil)
	g.is.set(func(is *issuer) { is.status = http.StatusInternalServerError })
	for range 3 {
		_, err := g.v.Verify(context.Background(), bearer(mint(t, g.ec, g.claims(), nil)))
		if caller.ReasonOf(err) != caller.JWKSUnavailable {
			t.Fatalf("reason = %v, want jwks_unavailable", err)
		}
	}
	if n := g.is.fetches.Load(); n != 1 {
		t.Errorf("fetches while down = %d, want 1", n)
	}
}

func TestSlowAndHugeJWKS(t *testing.T) {
	t.Run("slow", func(t *testing.T) {
		f := newFixture(t, func(o *Options) { o.FetchTimeout = 50 * time.Millisecond })
		block := make(chan struct{})
		defer close(block)
		f.is.set(func(is *issuer) { is.block = block })
		start := time.Now()
		_, err := f.v.Verify(context.Background(), bearer(mint(t, f.ec, f.claims(), nil)))
		if caller.ReasonOf(err) != caller.JWKSUnavailable {
			t.Fatalf("reason = %v, want jwks_unavailable", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("took %v: the fetch is not bounded in time", d)
		}
	})
	t.Run("huge", func(t *testing.T) {
		f := newFixture(t, func(o *Options) { o.MaxJWKSBytes = 64 << 10 })
		keys, _ := json.Marshal(map[string]any{"keys": []any{jwkOf(f.ec)}, "pad": strings.Repeat("x", 2<<20)})
		f.is.set(func(is *issuer) { is.body = keys })
		_, err := f.v.Verify(context.Background(), bearer(mint(t, f.ec, f.claims(), nil)))
		if caller.ReasonOf(err) != caller.JWKSUnavailable || !strings.Contains(err.Error(), "larger than") {
			t.Fatalf("err = %v, want jwks_unavailable: larger than", err)
		}
	})
	t.Run("a request gone does not fail the shared fetch", func(t *testing.T) {
		f := newFixture(t, nil)
		block := make(chan struct{})
		f.is.set(func(is *issuer) { is.block = block })
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := f.v.Verify(ctx, bearer(mint(t, f.ec, f.claims(), nil)))
		if caller.ReasonOf(err) != caller.JWKSUnavailable {
			t.Fatalf("reason = %v", err)
		}
		close(block)
		if _, err := f.v.Verify(context.Background(), bearer(mint(t, f.ec, f.claims(), nil))); err != nil {
			t.Fatalf("the next request: %v", err)
		}
	})
}

func TestKeySetParsing(t *testing.T) {
	genKeys(t)
	small := jwkOf(testKey{kid: "small", alg: "RS256", priv: rsaSmall})
	oct := map[string]any{"kty": "oct", "kid": "oct", "k": b64([]byte(strings.Repeat("s", 32)))}
	enc := jwkOf(testKey{kid: "enc", alg: "RS256", priv: rsaA})
	enc["use"] = "enc"
	offCurve := jwkOf(testKey{kid: "off", alg: "ES256", priv: ecA})
	offCurve["y"] = offCurve["x"]
	good := jwkOf(testKey{kid: "good", alg: "EdDSA", priv: edA})
	body, _ := json.Marshal(map[string]any{"keys": []any{small, oct, enc, offCurve, good}})
	m, err := parseSet(body)
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range m.all {
		kids = append(kids, k.kid)
	}
	if diff := cmp.Diff([]string{"good"}, kids); diff != "" {
		t.Errorf("usable keys (-want +got):\n%s", diff)
	}
	if _, err := parseSet([]byte(`{"keys":[]}`)); err == nil {
		t.Error("an empty set was accepted")
	}
}

// TestSymmetricKeyInJWKS: an "oct" key published in the set never keys
// an HMAC check.
func TestSymmetricKeyInJWKS(t *testing.T) {
	f := newFixture(t, nil)
	k := []byte(strings.Repeat("s", 32))
	body, _ := json.Marshal(map[string]any{"keys": []any{
		map[string]any{"kty": "oct", "kid": "oct", "k": b64(k)}, jwkOf(f.ec)}})
	f.is.set(func(is *issuer) { is.body = body })
	payload, _ := json.Marshal(f.claims())
	tok := rawToken(`{"alg":"HS256","kid":"oct"}`, string(payload), func(s string) []byte {
		m := hmac.New(sha256.New, k)
		m.Write([]byte(s))
		return m.Sum(nil)
	})
	if _, err := f.v.Verify(context.Background(), bearer(tok)); caller.ReasonOf(err) != caller.BadSignature {
		t.Errorf("HS256 with a published oct key: %v, want bad_signature", err)
	}
}

func TestSecretHS256(t *testing.T) {
	clk := newClock()
	key := "super-secret-jwt-key-of-supabase-legacy-0123456789"
	v, err := New(Options{Kind: "users", Issuer: testIss, Secret: secret.New("sb", key), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	hs := gojwt.NewWithClaims(gojwt.SigningMethodHS256, claimsAt(clk.Now()))
	tok, _ := hs.SignedString([]byte(key))
	if _, err := v.Verify(context.Background(), bearer(tok)); err != nil {
		t.Fatalf("HS256: %v", err)
	}
	wrong, _ := hs.SignedString([]byte(key + "x"))
	_, err = v.Verify(context.Background(), bearer(wrong))
	if caller.ReasonOf(err) != caller.BadSignature {
		t.Errorf("wrong secret: %v", err)
	}
	noSecretIn(t, err, key, wrong)
	genKeys(t)
	rs := mint(t, testKey{kid: "rsa-1", alg: "RS256", priv: rsaA}, claimsAt(clk.Now()), nil)
	if _, err := v.Verify(context.Background(), bearer(rs)); caller.ReasonOf(err) != caller.BadSignature {
		t.Errorf("RS256 with a secret configured: %v", err)
	}
	_, err = New(Options{Issuer: testIss, Secret: secret.New("short", "tooshort")})
	if err == nil || strings.Contains(err.Error(), "tooshort") {
		t.Errorf("short secret: %v", err)
	}
}

func TestRequire(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.Require = map[string]any{
			"role":           "authenticated",
			"groups":         "admins",             // membership in a list claim
			"plan":           []any{"pro", "team"}, // any of
			"email_verified": true,                 // boolean
			"tier":           uint64(3),            // number, as YAML decodes it
		}
	})
	base := func() gojwt.MapClaims {
		c := f.claims()
		c["role"] = "authenticated"
		c["groups"] = []string{"staff", "admins"}
		c["plan"] = "team"
		c["email_verified"] = true
		c["tier"] = 3
		return c
	}
	id, err := f.v.Verify(context.Background(), bearer(mint(t, f.ec, base(), nil)))
	if err != nil {
		t.Fatalf("all claims hold: %v", err)
	}
	if id.Claims["plan"] != "team" {
		t.Errorf("claims = %v", id.Claims)
	}
	for name, v := range map[string]any{
		"role": "anon", "groups": []string{"staff"}, "plan": "free",
		"email_verified": false, "tier": 2,
	} {
		t.Run(name, func(t *testing.T) {
			c := base()
			c[name] = v
			_, err := f.v.Verify(context.Background(), bearer(mint(t, f.ec, c, nil)))
			var ce *caller.Error
			if !errors.As(err, &ce) || ce.Reason != caller.ClaimFailed || ce.Status() != http.StatusForbidden {
				t.Errorf("err = %v, want claim_failed (403)", err)
			}
		})
	}
}

func TestIDClaimAndLeeway(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.IDClaim = "user_id"; o.Leeway = 10 * time.Second })
	c := f.claims()
	c["user_id"] = 12345678901234567
	c["exp"] = f.clk.Now().Add(-5 * time.Second).Unix() // within the leeway
	id, err := f.v.Verify(context.Background(), bearer(mint(t, f.ec, c, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if id.ID != "12345678901234567" {
		t.Errorf("id = %q: a numeric id claim must keep every digit", id.ID)
	}
	c["exp"] = f.clk.Now().Add(-11 * time.Second).Unix()
	if _, err := f.v.Verify(context.Background(), bearer(mint(t, f.ec, c, nil))); caller.ReasonOf(err) != caller.Expired {
		t.Errorf("past the leeway: %v", err)
	}
}

func TestCache(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.CacheFor = 10 * time.Minute })
	c := f.claims()
	c["exp"] = f.clk.Now().Add(2 * time.Minute).Unix()
	tok := mint(t, f.rsa, c, nil)
	if _, err := f.v.Verify(context.Background(), bearer(tok)); err != nil {
		t.Fatal(err)
	}
	// With every key gone, only the cache can answer.
	f.v.keys.keys.Store(&keyMap{byKid: map[string]*jwk{}})
	if _, err := f.v.Verify(context.Background(), bearer(tok)); err != nil {
		t.Fatalf("cached token: %v", err)
	}
	if _, err := f.v.Verify(context.Background(), bearer(mint(t, f.rsa, f.claims(), nil))); err == nil {
		t.Fatal("an uncached token verified without keys")
	}
	// The cache never outlives exp (plus the leeway the full check allows).
	f.clk.Advance(2*time.Minute + DefaultLeeway + time.Second)
	if _, err := f.v.Verify(context.Background(), bearer(tok)); caller.ReasonOf(err) != caller.Expired {
		t.Fatalf("an expired token: %v, want expired", err)
	}

	small := &tokenCache{max: 8, m: map[[32]byte]cached{}}
	now := f.clk.Now()
	for i := range 100 {
		small.put([32]byte{byte(i)}, cached{until: now.Add(time.Hour)}, now)
	}
	if n := len(small.m); n > 8 {
		t.Errorf("cache holds %d entries, bound 8", n)
	}
}

func TestNewRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"no issuer", Options{JWKS: "https://x.example/jwks"}, "issuer is required"},
		{"neither", Options{Issuer: testIss}, "exactly one"},
		{"both", Options{Issuer: testIss, JWKS: "https://x.example/jwks", Secret: secret.New("s", strings.Repeat("k", 40))}, "exactly one"},
		{"http jwks", Options{Issuer: testIss, JWKS: "http://idp.example/jwks"}, "must be https://"},
		{"HS256 with jwks", Options{Issuer: testIss, JWKS: "https://x.example/jwks", Algorithms: []string{"HS256"}}, "not accepted with a JWKS"},
		{"none", Options{Issuer: testIss, JWKS: "https://x.example/jwks", Algorithms: []string{"none"}}, "not accepted with a JWKS"},
		{"bad require", Options{Issuer: testIss, JWKS: "https://x.example/jwks", Require: map[string]any{"a": map[string]any{}}}, "require.a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestCheckURL(t *testing.T) {
	for u, ok := range map[string]bool{
		"https://idp.example/jwks":     true,
		"http://127.0.0.1:8080/jwks":   true,
		"http://[::1]:8080/jwks":       true,
		"http://localhost/jwks":        true,
		"http://idp.example/jwks":      false,
		"http://127.0.0.1.nip.io/jwks": false,
		"ftp://idp.example/jwks":       false,
		"/relative":                    false,
		"https://":                     false,
	} {
		if err := CheckURL(u); (err == nil) != ok {
			t.Errorf("CheckURL(%q) = %v, want ok=%v", u, err, ok)
		}
	}
}
