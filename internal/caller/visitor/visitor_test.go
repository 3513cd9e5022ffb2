package visitor

import (
	"context"
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
	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/secret"
)

const (
	signingCanary   = "visitor-signing-key-CANARY-0123456789abcdef"
	turnstileCanary = "0x4AAAA-turnstile-secret-CANARY"
	projectNumber   = "123456789"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// siteverify is a stand-in for Cloudflare's endpoint: it knows a few
// tokens, enforces single use itself, and counts calls.
type siteverify struct {
	srv   *httptest.Server
	calls atomic.Int64
	down  atomic.Bool
	mu    sync.Mutex
	spent map[string]bool
	clk   *clock
}

func newSiteverify(t *testing.T, clk *clock) *siteverify {
	s := &siteverify{spent: map[string]bool{}, clk: clk}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		if s.down.Load() {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		if r.Method != http.MethodPost || r.FormValue("secret") != turnstileCanary {
			_ = json.NewEncoder(w).Encode(map[string]any{"success": false, "error-codes": []string{"invalid-input-secret"}})
			return
		}
		tok := r.FormValue("response")
		s.mu.Lock()
		dup := s.spent[tok]
		s.spent[tok] = true
		s.mu.Unlock()
		ans := map[string]any{"success": true, "hostname": "app.example.com", "action": "chat",
			"challenge_ts": s.clk.Now().Add(-10 * time.Second).Format(time.RFC3339)}
		switch {
		case dup:
			ans = map[string]any{"success": false, "error-codes": []string{"timeout-or-duplicate"}}
		case strings.HasPrefix(tok, "bad"):
			ans = map[string]any{"success": false, "error-codes": []string{"invalid-input-response"}}
		case strings.HasPrefix(tok, "elsewhere"):
			ans["hostname"] = "evil.example"
		case strings.HasPrefix(tok, "wrong-action"):
			ans["action"] = "login"
		case strings.HasPrefix(tok, "old"):
			ans["challenge_ts"] = s.clk.Now().Add(-6 * time.Minute).Format(time.RFC3339)
		}
		_ = json.NewEncoder(w).Encode(ans)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// appCheck is a stand-in for App Check's JWKS, with a key to mint tokens.
type appCheck struct {
	srv  *httptest.Server
	key  *rsa.PrivateKey
	down atomic.Bool
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

func newAppCheck(t *testing.T) *appCheck {
	rsaOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	a := &appCheck{key: rsaKey}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.down.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		b := base64.RawURLEncoding.EncodeToString
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []any{map[string]any{
			"kty": "RSA", "kid": "ac1", "alg": "RS256", "use": "sig",
			"n": b(a.key.N.Bytes()), "e": b(big.NewInt(int64(a.key.E)).Bytes())}}})
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *appCheck) mint(t testing.TB, now time.Time, mod func(gojwt.MapClaims)) string {
	c := gojwt.MapClaims{
		"iss": "https://firebaseappcheck.googleapis.com/" + projectNumber,
		"aud": []string{"projects/" + projectNumber, "projects/my-app"},
		"sub": "1:123456789:web:abc",
		"iat": now.Unix(),
		"exp": now.Add(time.Hour).Unix(),
	}
	if mod != nil {
		mod(c)
	}
	tok := gojwt.NewWithClaims(gojwt.SigningMethodRS256, c)
	tok.Header["kid"] = "ac1"
	s, err := tok.SignedString(a.key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type fixture struct {
	clk      *clock
	sv       *siteverify
	ac       *appCheck
	v        *Verifier
	x        *Exchange
	failures map[string]int
	results  []error
	mu       sync.Mutex
}

func newFixture(t *testing.T, mod func(*Options)) *fixture {
	t.Helper()
	f := &fixture{clk: &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}, failures: map[string]int{}}
	f.sv = newSiteverify(t, f.clk)
	f.ac = newAppCheck(t)
	o, probs := Compile("visitors", config.Visitor{
		Turnstile:  &config.Turnstile{Secret: "ts", Hostnames: []string{"app.example.com"}, Action: "chat", VerifyURL: f.sv.srv.URL},
		AppCheck:   &config.AppCheck{ProjectNumber: projectNumber, AppIDs: []string{"1:123456789:web:abc", "1:123456789:ios:def"}, JWKS: f.ac.srv.URL},
		SigningKey: "vk",
	}, caller.Env{Secret: secrets, Now: f.clk.Now})
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	o.FailureLimit = func(_ context.Context, key string) (bool, time.Duration) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.failures[key]++
		return f.failures[key] <= 3, time.Minute
	}
	o.OnResult = func(_ *http.Request, _ string, err error) {
		f.mu.Lock()
		f.results = append(f.results, err)
		f.mu.Unlock()
	}
	if mod != nil {
		mod(&o)
	}
	var err error
	if f.v, f.x, err = New(o); err != nil {
		t.Fatal(err)
	}
	return f
}

func secrets(name string) (secret.Value, bool) {
	switch name {
	case "vk":
		return secret.New(name, signingCanary), true
	case "ts":
		return secret.New(name, turnstileCanary), true
	case "short":
		return secret.New(name, "short"), true
	}
	return secret.Value{}, false
}

type answer struct {
	status int
	code   string
	grant  Grant
	body   string
}

func (f *fixture) exchange(t *testing.T, body string, h http.Header) answer {
	t.Helper()
	r := httptest.NewRequest("POST", Path, strings.NewReader(body))
	r.RemoteAddr = "203.0.113.7:5555"
	r.Header.Set("Content-Type", "application/json")
	for k, vs := range h {
		for _, v := range vs {
			r.Header.Add(k, v)
		}
	}
	w := httptest.NewRecorder()
	f.x.ServeHTTP(w, r)
	a := answer{status: w.Code, body: w.Body.String()}
	if w.Code == http.StatusOK {
		if err := json.Unmarshal(w.Body.Bytes(), &a.grant); err != nil {
			t.Fatal(err)
		}
		if w.Header().Get("Cache-Control") != "no-store" {
			t.Error("a visitor token must not be cached")
		}
	} else {
		var e struct{ Error struct{ Code string } }
		_ = json.Unmarshal(w.Body.Bytes(), &e)
		a.code = e.Error.Code
	}
	for _, c := range []string{signingCanary, turnstileCanary} {
		if strings.Contains(a.body, c) {
			t.Errorf("answer quotes a secret: %s", a.body)
		}
	}
	return a
}

func (f *fixture) verify(tok string) (caller.Identity, error) {
	r := httptest.NewRequest("GET", "/chat", nil)
	if tok != "" {
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	return f.v.Verify(context.Background(), r)
}

func TestTurnstile(t *testing.T) {
	f := newFixture(t, nil)
	a := f.exchange(t, `{"turnstile":"good-1"}`, nil)
	if a.status != 200 || a.grant.ExpiresIn != 900 || len(a.grant.Token) != TokenLen {
		t.Fatalf("exchange: %+v", a)
	}
	id, err := f.verify(a.grant.Token)
	if err != nil {
		t.Fatal(err)
	}
	if id.Kind != "visitors" || len(id.ID) != 32 || id.Claims["via"] != "turnstile" {
		t.Errorf("identity %+v", id)
	}
	b := f.exchange(t, `{"turnstile":"good-2"}`, nil)
	if id2, _ := f.verify(b.grant.Token); id2.ID == id.ID {
		t.Error("two exchanges gave the same visitor id")
	}

	for _, tc := range []struct {
		name, body string
		status     int
		code       string
		reason     caller.Reason
	}{
		{"used again", `{"turnstile":"good-1"}`, 401, "unauthenticated", caller.Replayed},
		{"refused by Cloudflare", `{"turnstile":"bad-1"}`, 401, "unauthenticated", caller.Attestation},
		{"solved on another site", `{"turnstile":"elsewhere-1"}`, 401, "unauthenticated", caller.Attestation},
		{"another action", `{"turnstile":"wrong-action-1"}`, 401, "unauthenticated", caller.Attestation},
		{"older than five minutes", `{"turnstile":"old-1"}`, 401, "unauthenticated", caller.Expired},
		{"no body", ``, 401, "unauthenticated", caller.Missing},
		{"no token", `{"other":1}`, 401, "unauthenticated", caller.Missing},
		{"not JSON", `turnstile=x`, 401, "unauthenticated", caller.Malformed},
		{"token too long", `{"turnstile":"` + strings.Repeat("t", MaxTurnstileToken+1) + `"}`, 401, "unauthenticated", caller.TooLarge},
		{"body too large", `{"turnstile":"good-9","pad":"` + strings.Repeat("p", maxBody) + `"}`, 401, "unauthenticated", caller.TooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.mu.Lock()
			f.failures = map[string]int{}
			f.results = nil
			f.mu.Unlock()
			a := f.exchange(t, tc.body, nil)
			if a.status != tc.status || a.code != tc.code {
				t.Fatalf("answer %d %s, want %d %s: %s", a.status, a.code, tc.status, tc.code, a.body)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.results) != 1 || caller.ReasonOf(f.results[0]) != tc.reason {
				t.Errorf("reported %v, want %s", f.results, tc.reason)
			}
			if f.failures["203.0.113.7"] != 1 {
				t.Errorf("failures counted: %v", f.failures)
			}
		})
	}
	// Cloudflare saw good-1 once: the replay was refused before asking it.
	if n := f.sv.calls.Load(); n != 6 {
		t.Errorf("siteverify calls = %d, want 6 (good-1, good-2, bad, elsewhere, wrong-action, old, and none for the replay)", n)
	}

	// Another instance, which has not seen good-2: Cloudflare's own
	// single use refuses it.
	g := newFixture(t, func(o *Options) { o.Turnstile.VerifyURL = f.sv.srv.URL })
	if a := g.exchange(t, `{"turnstile":"good-2"}`, nil); a.status != 401 {
		t.Errorf("a token spent on another instance: %+v", a)
	}
	g.mu.Lock()
	if r := caller.ReasonOf(g.results[0]); r != caller.Replayed {
		t.Errorf("reason %s, want replayed", r)
	}
	g.mu.Unlock()

	w := httptest.NewRecorder()
	f.x.ServeHTTP(w, httptest.NewRequest("GET", Path, nil))
	if w.Code != 405 || w.Header().Get("Allow") != "POST" {
		t.Errorf("GET: %d %v", w.Code, w.Header())
	}
}

// TestFailureLimitAndOutage: an address over the failure limit is
// refused, and its next attempts are refused without a siteverify call
// until the limit's Retry-After has passed; an outage of siteverify is not
// the visitor's failure.
func TestFailureLimitAndOutage(t *testing.T) {
	f := newFixture(t, nil)
	for i, want := range []int{401, 401, 401, 429, 429, 429} {
		if a := f.exchange(t, `{"turnstile":"bad-`+string(rune('a'+i))+`"}`, nil); a.status != want {
			t.Errorf("failure %d: %d, want %d", i+1, a.status, want)
		}
	}
	if n := f.sv.calls.Load(); n != 4 {
		t.Errorf("siteverify called %d times, want 4: an address over the limit must cost no more calls", n)
	}
	f.clk.Advance(time.Minute)
	if a := f.exchange(t, `{"turnstile":"bad-z"}`, nil); a.status != 429 || f.sv.calls.Load() != 5 {
		t.Errorf("after Retry-After: %d with %d siteverify calls, want 429 after a fifth call (the limit still counts it)", a.status, f.sv.calls.Load())
	}
	// Cloudflare down: 503, not the visitor's fault, not counted.
	g := newFixture(t, nil)
	g.sv.down.Store(true)
	if a := g.exchange(t, `{"turnstile":"good-1"}`, nil); a.status != 503 || a.code != "attestation_unavailable" {
		t.Errorf("siteverify down: %+v", a)
	}
	if len(g.failures) != 0 {
		t.Errorf("an outage counted as failures: %v", g.failures)
	}
}

func TestAppCheck(t *testing.T) {
	f := newFixture(t, nil)
	now := f.clk.Now()
	tok := f.ac.mint(t, now, nil)
	hdr := http.Header{AppCheckHeader: {tok}}
	a := f.exchange(t, "", hdr)
	if a.status != 200 {
		t.Fatalf("exchange: %+v", a)
	}
	id, err := f.verify(a.grant.Token)
	if err != nil || id.Claims["via"] != "app_check" {
		t.Fatalf("verify: %+v %v", id, err)
	}
	// The same attestation, exchanged again, is the same visitor.
	b := f.exchange(t, "", hdr)
	if id2, err := f.verify(b.grant.Token); err != nil || id2.ID != id.ID {
		t.Errorf("re-exchange: %v %v, want id %s", id2.ID, err, id.ID)
	}
	if c := f.exchange(t, "", http.Header{AppCheckHeader: {f.ac.mint(t, now, func(c gojwt.MapClaims) { c["jti"] = "2" })}}); c.status != 200 {
		t.Fatal(c)
	} else if id3, _ := f.verify(c.grant.Token); id3.ID == id.ID {
		t.Error("a new attestation gave the same visitor id")
	}
	for _, tc := range []struct {
		name   string
		mod    func(gojwt.MapClaims)
		status int
		reason caller.Reason
	}{
		{"another project", func(c gojwt.MapClaims) { c["aud"] = []string{"projects/999", "projects/other"} }, 401, caller.WrongAudience},
		{"another issuer", func(c gojwt.MapClaims) { c["iss"] = "https://firebaseappcheck.googleapis.com/999" }, 401, caller.WrongIssuer},
		{"expired", func(c gojwt.MapClaims) { c["exp"] = now.Add(-time.Hour).Unix() }, 401, caller.Expired},
		{"an app not listed", func(c gojwt.MapClaims) { c["sub"] = "1:123456789:android:zzz" }, 403, caller.ClaimFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.mu.Lock()
			f.results = nil
			f.failures = map[string]int{}
			f.mu.Unlock()
			a := f.exchange(t, "", http.Header{AppCheckHeader: {f.ac.mint(t, now, tc.mod)}})
			if a.status != tc.status {
				t.Fatalf("status %d, want %d: %s", a.status, tc.status, a.body)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if r := caller.ReasonOf(f.results[0]); r != tc.reason {
				t.Errorf("reason %s, want %s", r, tc.reason)
			}
		})
	}
	g := newFixture(t, nil)
	g.ac.down.Store(true)
	if a := g.exchange(t, "", hdr); a.status != 503 {
		t.Errorf("App Check keys down: %+v", a)
	}
}

func TestVisitorToken(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.exchange(t, `{"turnstile":"good-1"}`, nil).grant.Token
	// Every instance with the same signing key accepts it.
	g := newFixture(t, nil)
	if _, err := g.verify(tok); err != nil {
		t.Errorf("second instance: %v", err)
	}
	other := newFixture(t, func(o *Options) { o.SigningKey = secret.New("vk2", strings.Repeat("z", 40)) })
	// Another base64url character in the middle (flipping a bit could make
	// one outside the alphabet: malformed, not tampered).
	flipped := []byte(tok)
	flipped[10] = map[bool]byte{true: 'B', false: 'A'}[flipped[10] == 'A']
	for _, tc := range []struct {
		name string
		v    *fixture
		tok  string
		want caller.Reason
	}{
		{"missing", f, "", caller.Missing},
		{"a JWT", f, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", caller.Malformed},
		{"tampered", f, string(flipped), caller.BadSignature},
		{"truncated", f, tok[:len(tok)-1], caller.Malformed},
		{"another key", other, tok, caller.BadSignature},
		{"bad base64", f, Prefix + strings.Repeat("*", TokenLen-len(Prefix)), caller.Malformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.v.verify(tc.tok)
			if caller.ReasonOf(err) != tc.want {
				t.Errorf("reason %v, want %s", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), tok[len(Prefix):]) {
				t.Errorf("error quotes the token: %v", err)
			}
		})
	}
	f.clk.Advance(DefaultTTL - time.Second)
	if _, err := f.verify(tok); err != nil {
		t.Errorf("just before expiry: %v", err)
	}
	f.clk.Advance(time.Second)
	if _, err := f.verify(tok); caller.ReasonOf(err) != caller.Expired {
		t.Errorf("at expiry: %v", err)
	}
}

func TestCompileProblems(t *testing.T) {
	_, probs := Compile("visitors", config.Visitor{
		Turnstile:  &config.Turnstile{Secret: "nope", VerifyURL: "http://challenges.example/siteverify"},
		AppCheck:   &config.AppCheck{ProjectNumber: "my-app"},
		SigningKey: "short",
		TTL:        "48h",
	}, caller.Env{Secret: secrets})
	want := []caller.Problem{
		{Path: "visitor.signing_key", Msg: `secret "short" is shorter than 32 bytes (make one with: openssl rand -base64 48)`},
		{Path: "visitor.ttl", Msg: `"48h": want a duration between 1m and 24h`},
		{Path: "visitor.turnstile.secret", Msg: `unknown secret "nope"`},
		{Path: "visitor.turnstile.hostnames", Msg: "required: the sites your widget runs on (a token solved on another site must not pass)"},
		{Path: "visitor.turnstile.verify_url", Msg: `"http://challenges.example/siteverify" must be https:// (http:// only on a loopback address)`},
		{Path: "visitor.app_check.project_number", Msg: `"my-app": want the Firebase project number (digits, from the project settings), not the project id`},
	}
	if diff := cmp.Diff(want, probs); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if _, probs := Compile("v", config.Visitor{SigningKey: "vk"}, caller.Env{Secret: secrets}); len(probs) != 1 || probs[0].Path != "visitor" {
		t.Errorf("no proof: %+v", probs)
	}
}

// go test -run '^$' -bench . -benchmem ./internal/caller/visitor/
func BenchmarkVerify(b *testing.B) {
	v, x, err := New(Options{Kind: "visitors", SigningKey: secret.New("vk", signingCanary),
		Turnstile: &TurnstileOptions{Secret: secret.New("ts", "x"), Hostnames: []string{"a"}}})
	if err != nil {
		b.Fatal(err)
	}
	tok := x.grant(viaTurnstile, [idBytes]byte{1, 2, 3}).Token
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(context.Background(), r); err != nil {
			b.Fatal(err)
		}
	}
}

// TestNoSecretInErrors: whatever goes wrong, neither the answer nor the
// error handed to logs quotes a proof, a visitor token or a secret.
func TestNoSecretInErrors(t *testing.T) {
	// Every failure must be checked and reported: no failure limit here.
	f := newFixture(t, func(o *Options) { o.FailureLimit = nil })
	const canary = "CANARYTOK-5e1f"
	good := f.exchange(t, `{"turnstile":"good-`+canary+`"}`, nil)
	bodies := []string{good.body}
	for _, body := range []string{
		`{"turnstile":"good-` + canary + `"}`, // replay
		`{"turnstile":"bad-` + canary + `"}`,
		`{"turnstile":"elsewhere-` + canary + `"}`,
		`{"turnstile":"wrong-action-` + canary + `"}`,
		`{"turnstile":"old-` + canary + `"}`,
		`{"turnstile":"` + strings.Repeat(canary, 200) + `"}`,
		`{"turnstile":` + canary,
	} {
		bodies = append(bodies, f.exchange(t, body, nil).body)
	}
	f.sv.down.Store(true)
	bodies = append(bodies, f.exchange(t, `{"turnstile":"good2-`+canary+`"}`, nil).body)
	ac := f.ac.mint(t, f.clk.Now(), func(c gojwt.MapClaims) { c["aud"] = "projects/1" })
	bodies = append(bodies, f.exchange(t, "", http.Header{AppCheckHeader: {ac}}).body)
	_, err := f.verify(good.grant.Token[:len(good.grant.Token)-2] + "AA")
	f.mu.Lock()
	defer f.mu.Unlock()
	texts := append(bodies[1:], err.Error())
	for _, e := range f.results {
		if e != nil {
			texts = append(texts, e.Error())
		}
	}
	parts := strings.Split(ac, ".")
	for _, text := range texts {
		for _, c := range []string{canary, signingCanary, turnstileCanary, good.grant.Token[len(Prefix):], parts[1], parts[2]} {
			if strings.Contains(text, c) {
				t.Errorf("%q quotes a credential", text)
			}
		}
	}
	if len(f.results) != 10 {
		t.Errorf("%d results reported, want 10", len(f.results))
	}
}
