package security_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/keyward/keyward/internal/caller/apikey"
	"github.com/keyward/keyward/internal/gatewaytest"
)

// issuer is a local identity provider: an ES256 key served as a JWKS,
// and tokens minted with it.
type issuer struct {
	key *ecdsa.PrivateKey
	srv *httptest.Server
	url string
}

func newIssuer(t *testing.T) *issuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	is := &issuer{key: key}
	pad := func(n *big.Int) string { return base64.RawURLEncoding.EncodeToString(n.FillBytes(make([]byte, 32))) }
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
		"x": pad(key.X), "y": pad(key.Y),
	}}})
	is.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(jwks)
	}))
	t.Cleanup(is.srv.Close)
	is.url = is.srv.URL
	return is
}

// token mints a token for sub with extra claims; exp in the future unless
// given.
func (is *issuer) token(t *testing.T, sub string, extra map[string]any) string {
	t.Helper()
	claims := gojwt.MapClaims{"iss": "https://id.example.test", "aud": "keyward-test", "sub": sub,
		"exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix()}
	for k, v := range extra {
		claims[k] = v
	}
	tok := gojwt.NewWithClaims(gojwt.SigningMethodES256, claims)
	tok.Header["kid"] = "k1"
	s, err := tok.SignedString(is.key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func callersConfig(is *issuer, keys, verify string) string {
	return fmt.Sprintf(`
secrets:
  github: { env: GITHUB_TOKEN }
  visitor_key: { env: VISITOR_KEY }
  turnstile: { env: TURNSTILE_SECRET }
cors:
  allow_origins: ["https://app.example.com"]
callers:
  users:
    jwt:
      issuer: "https://id.example.test"
      audience: [keyward-test]
      jwks: "%s/jwks.json"
      require: { role: [member, admin] }
  partners:
    api_keys: { header: X-Api-Key, keys: %s }
  visitors:
    visitor:
      turnstile: { secret: turnstile, hostnames: [app.example.com], verify_url: "%s" }
      signing_key: visitor_key
routes:
  - name: me
    path: /me
    upstream: "{{UP}}/api/me"
    callers: [users, partners, visitors]
    headers:
      set: { Authorization: "Bearer {secret.github}", X-User: "{caller.kind}/{caller.id}" }
    limits: { rate: 2/h, burst: 2 }
  - name: open-ish
    path: /open-ish
    upstream: "{{UP}}/api/open"
    callers: [users]
    fallback: { budget: 2/day }
`, is.url, keys, verify)
}

// turnstileStandIn answers siteverify: "good" tokens pass once, on
// app.example.com.
func turnstileStandIn(t *testing.T) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	used := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_ = r.ParseForm()
		if r.PostForm.Get("secret") != gatewaytest.Turnstile {
			_ = json.NewEncoder(w).Encode(map[string]any{"success": false, "error-codes": []string{"invalid-input-secret"}})
			return
		}
		tok := r.PostForm.Get("response")
		if !strings.HasPrefix(tok, "good") || used[tok] {
			_ = json.NewEncoder(w).Encode(map[string]any{"success": false, "error-codes": []string{"invalid-input-response"}})
			return
		}
		used[tok] = true
		_ = json.NewEncoder(w).Encode(map[string]any{"success": true, "hostname": "app.example.com",
			"challenge_ts": time.Now().UTC().Format(time.RFC3339)})
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

// TestCallers: a route that lists callers refuses a request that proves
// none of them before anything else, never lets a credential go upstream,
// writes the verified identity only where the config says, and keys its
// limits per caller.
func TestCallers(t *testing.T) {
	is := newIssuer(t)
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.yaml")
	key, hash, err := apikey.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ks := apikey.OpenFile(keys, apikey.FileOptions{})
	if err := ks.Add(t.Context(), apikey.Record{Kind: "partners", Name: "acme", Hash: hash, Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	ts, _ := turnstileStandIn(t)
	h := newHarness(t, callersConfig(is, keys, ts.URL), nil)
	bearerOf := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

	t.Run("no credential: 401 before the upstream", func(t *testing.T) {
		res := h.Raw("GET", "/me", nil, "")
		refused(t, h, res, http.StatusUnauthorized, "unauthenticated")
		if got := res.Header.Get("Www-Authenticate"); got != "Bearer" {
			t.Errorf("WWW-Authenticate %q", got)
		}
	})
	t.Run("bad tokens: 401 invalid_token", func(t *testing.T) {
		good := is.token(t, "alice", map[string]any{"role": "member"})
		parts := strings.Split(good, ".")
		for name, tok := range map[string]string{
			"tampered":  parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"root","role":"admin","iss":"https://id.example.test","aud":"keyward-test","exp":9999999999}`)) + "." + parts[2],
			"alg none":  base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"k1"}`)) + "." + parts[1] + ".",
			"expired":   is.token(t, "alice", map[string]any{"role": "member", "exp": time.Now().Add(-time.Hour).Unix()}),
			"other aud": is.token(t, "alice", map[string]any{"role": "member", "aud": "someone-else"}),
			"garbage":   "not-a-token",
		} {
			res := h.Raw("GET", "/me", bearerOf(tok), "")
			refused(t, h, res, http.StatusUnauthorized, "unauthenticated")
			if got := res.Header.Get("Www-Authenticate"); !strings.Contains(got, `error="invalid_token"`) {
				t.Errorf("%s: WWW-Authenticate %q", name, got)
			}
		}
	})
	t.Run("a required claim that fails: 403", func(t *testing.T) {
		res := h.Raw("GET", "/me", bearerOf(is.token(t, "mallory", map[string]any{"role": "guest"})), "")
		refused(t, h, res, http.StatusForbidden, "forbidden")
	})
	t.Run("a verified user: identity where the config puts it, never the token", func(t *testing.T) {
		tok := is.token(t, "alice", map[string]any{"role": "member"})
		seen := ok(t, h, h.Raw("GET", "/me", bearerOf(tok), ""))
		if got := seen.Header.Get("X-User"); got != "users/alice" {
			t.Errorf("X-User %q, want users/alice", got)
		}
		if got := seen.Header.Values("Authorization"); len(got) != 1 || got[0] != bearer {
			t.Errorf("upstream Authorization is not the gateway's own")
		}
		for k, vs := range seen.Header {
			for _, v := range vs {
				if strings.Contains(v, tok) {
					t.Errorf("the caller's token went upstream in %s", k)
				}
			}
		}
		if logs := h.Logs.String(); strings.Contains(logs, tok) || strings.Contains(logs, "alice") {
			t.Errorf("the token or the raw id is in the logs")
		}
	})
	t.Run("limits count per caller", func(t *testing.T) {
		bob := bearerOf(is.token(t, "bob", map[string]any{"role": "admin"}))
		carol := bearerOf(is.token(t, "carol", map[string]any{"role": "admin"}))
		for range 2 {
			ok(t, h, h.Raw("GET", "/me", bob, ""))
		}
		refused(t, h, h.Raw("GET", "/me", bob, ""), http.StatusTooManyRequests, "rate_limited")
		// Same address, another caller: its own allowance.
		ok(t, h, h.Raw("GET", "/me", carol, ""))
	})
	t.Run("an API key", func(t *testing.T) {
		seen := ok(t, h, h.Raw("GET", "/me", http.Header{"X-Api-Key": {key}}, ""))
		if got := seen.Header.Get("X-User"); got != "partners/acme" {
			t.Errorf("X-User %q", got)
		}
		if seen.Header.Get("X-Api-Key") != "" {
			t.Errorf("the API key went upstream")
		}
		refused(t, h, h.Raw("GET", "/me", http.Header{"X-Api-Key": {key[:len(key)-2] + "xx"}}, ""), http.StatusUnauthorized, "unauthenticated")
	})
	t.Run("an attested visitor", func(t *testing.T) {
		origin := http.Header{"Origin": {"https://app.example.com"}, "Content-Type": {"application/json"}}
		res := h.Raw("POST", "/_keyward/visitor", origin, `{"turnstile":"good-1"}`)
		if res.Status != http.StatusOK {
			t.Fatalf("exchange: %d %s", res.Status, res.Body)
		}
		if res.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
			t.Errorf("exchange without CORS headers")
		}
		var grant struct {
			Token     string `json:"token"`
			ExpiresIn int    `json:"expires_in"`
		}
		if err := json.Unmarshal([]byte(res.Body), &grant); err != nil || grant.Token == "" || grant.ExpiresIn <= 0 {
			t.Fatalf("exchange answer %s", res.Body)
		}
		seen := ok(t, h, h.Raw("GET", "/me", bearerOf(grant.Token), ""))
		if !strings.HasPrefix(seen.Header.Get("X-User"), "visitors/") {
			t.Errorf("X-User %q", seen.Header.Get("X-User"))
		}
		// The same Turnstile token twice: refused.
		res = h.Raw("POST", "/_keyward/visitor", origin, `{"turnstile":"good-1"}`)
		if res.Status != http.StatusUnauthorized {
			t.Errorf("replayed proof: %d %s", res.Status, res.Body)
		}
		// Another site cannot get tokens.
		res = h.Raw("POST", "/_keyward/visitor", http.Header{"Origin": {"https://evil.example"}, "Content-Type": {"application/json"}}, `{"turnstile":"good-2"}`)
		if res.Status != http.StatusForbidden {
			t.Errorf("exchange from another origin: %d", res.Status)
		}
		h.Up.Take()
	})
	t.Run("fallback: no credential under a small shared budget, a bad one refused", func(t *testing.T) {
		for range 2 {
			ok(t, h, h.Raw("GET", "/open-ish", nil, ""))
		}
		refused(t, h, h.Raw("GET", "/open-ish", nil, ""), http.StatusTooManyRequests, "budget_exhausted")
		refused(t, h, h.Raw("GET", "/open-ish", bearerOf("not-a-token"), ""), http.StatusUnauthorized, "unauthenticated")
		ok(t, h, h.Raw("GET", "/open-ish", bearerOf(is.token(t, "dave", map[string]any{"role": "member"})), ""))
	})
	t.Run("failures are counted by reason", func(t *testing.T) {
		m := grepLines(metricsText(h), "keyward_auth_failures_total")
		for _, want := range []string{`reason="missing"`, `reason="expired"`, `reason="claim_failed"`} {
			if !strings.Contains(m, want) {
				t.Errorf("no %s in\n%s", want, m)
			}
		}
	})
	if b, err := os.ReadFile(keys); err != nil || strings.Contains(string(b), key) {
		t.Errorf("the keys file holds the key itself (or cannot be read: %v)", err)
	}
}

// TestForgedTokenFloodHeldOff: every forged token costs a signature check,
// so an address that keeps presenting bad credentials is refused with 429
// before its credential is looked at, and no upstream call is made.
func TestForgedTokenFloodHeldOff(t *testing.T) {
	is := newIssuer(t)
	ts, _ := turnstileStandIn(t)
	h := newHarness(t, callersConfig(is, filepath.Join(t.TempDir(), "keys.yaml"), ts.URL), nil)
	forged := is.token(t, "x", map[string]any{"role": "member"})
	forged = forged[:len(forged)-4] + "AAAA"
	var codes []int
	for range 25 {
		res := h.Raw("GET", "/me", http.Header{"Authorization": {"Bearer " + forged}}, "")
		codes = append(codes, res.Status)
	}
	if codes[19] != http.StatusUnauthorized || codes[24] != http.StatusTooManyRequests {
		t.Errorf("statuses %v: want 401 for the first 20 failures, then 429", codes)
	}
	res := h.Raw("GET", "/me", http.Header{"Authorization": {"Bearer " + is.token(t, "alice", map[string]any{"role": "member"})}}, "")
	if res.Status != http.StatusTooManyRequests || res.Header.Get("Retry-After") == "" {
		t.Errorf("while held off: %d, Retry-After %q", res.Status, res.Header.Get("Retry-After"))
	}
	if got := h.Up.Take(); len(got) != 0 {
		t.Errorf("the upstream got %d requests", len(got))
	}
}
