// Package jwt verifies callers that present a JSON Web Token (RFC 7519):
// users of Supabase, Firebase Auth, Auth0, Clerk, Cognito or any OIDC
// issuer, and Firebase App Check tokens. Signatures are checked by
// github.com/golang-jwt/jwt/v5 against keys this package fetches from the
// issuer's JWKS, or against a configured HS256 secret.
//
// What it refuses, after RFC 8725 (JWT best current practices): alg
// "none"; HS256 unless a secret is configured, so an HMAC is never keyed
// with a published key; a key used by an algorithm other than its own;
// tokens over 8 KiB; duplicate members in the header or the claims; a
// "crit" header; tokens without exp. The jku, x5u and jwk headers are
// never read: the keys come from the config alone.
package jwt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/secret"
)

// MaxTokenBytes is the longest token accepted. Real ID tokens are 1-2 KiB;
// the bound keeps parsing and hashing cheap for anyone who sends junk.
const MaxTokenBytes = 8 << 10

// Defaults of Options' zero values.
const (
	DefaultLeeway       = 30 * time.Second
	DefaultMaxJWKSBytes = 1 << 20
	DefaultFetchTimeout = 5 * time.Second
	DefaultRefreshEvery = 15 * time.Minute
	DefaultRefetchGap   = 5 * time.Second
	DefaultCacheSize    = 10000
	DefaultCacheFor     = 5 * time.Minute
)

// Asymmetric are the algorithms accepted with a JWKS.
var Asymmetric = []string{"EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}

// Options configure a Verifier.
type Options struct {
	// Kind is the caller kind's name, copied into every Identity.
	Kind string
	// Issuer is the exact iss a token must carry. Required.
	Issuer string
	// Audience lists accepted aud values; a token must carry one of them.
	// Empty means aud is not checked.
	Audience []string
	// JWKS is the URL of the issuer's key set: https://, or http:// on a
	// loopback address. Exactly one of JWKS and Secret is set.
	JWKS string
	// Secret is an HS256 key of at least 32 bytes (RFC 7518, section 3.2).
	Secret secret.Value
	// Algorithms restricts the accepted algorithms further (App Check:
	// RS256). Empty means Asymmetric with a JWKS, HS256 with a Secret.
	Algorithms []string
	// Require lists claims that must hold: a scalar must equal the claim
	// or be a member of it when the claim is a list; a list means any of
	// its members. Values are strings, numbers or booleans as YAML
	// decodes them.
	Require map[string]any
	// IDClaim names the claim that identifies the caller. Empty means "sub".
	IDClaim string
	// From is where the token is read. The zero Source means Bearer.
	From caller.Source
	// Leeway tolerates clock skew on exp, nbf and iat. Zero means
	// DefaultLeeway; negative means none.
	Leeway time.Duration
	// Transport fetches the JWKS; the gateway passes its outbound policy.
	// Nil means http.DefaultTransport.
	Transport http.RoundTripper
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// MaxJWKSBytes bounds a JWKS response. Zero means DefaultMaxJWKSBytes.
	MaxJWKSBytes int64
	// FetchTimeout bounds one JWKS fetch. Zero means DefaultFetchTimeout.
	FetchTimeout time.Duration
	// RefreshEvery is the age at which the JWKS is fetched again in the
	// background. Zero means DefaultRefreshEvery.
	RefreshEvery time.Duration
	// RefetchGap is the least time between two fetches started by
	// requests (an unknown kid, a failed fetch). Zero means
	// DefaultRefetchGap.
	RefetchGap time.Duration
	// CacheSize bounds the verified-token cache. Zero means
	// DefaultCacheSize; negative turns the cache off.
	CacheSize int
	// CacheFor bounds how long a verified token is trusted without being
	// checked again, so that a key removed from the JWKS stops working
	// soon even for tokens that expire later. Zero means DefaultCacheFor.
	CacheFor time.Duration
}

// Verifier checks JWT callers. It is safe for concurrent use. It starts
// no goroutine of its own beyond one bounded JWKS fetch at a time, so a
// Verifier that is dropped (a reload) needs no closing.
type Verifier struct {
	kind     string
	idClaim  string
	require  map[string]any
	from     caller.Source
	secret   secret.Value
	keys     *keySet // nil with a secret
	parser   *gojwt.Parser
	now      func() time.Time
	cacheFor time.Duration
	cache    *tokenCache
}

var _ caller.Verifier = (*Verifier)(nil)

// New checks o and returns a Verifier. It opens no connection: the JWKS
// is fetched on first use.
func New(o Options) (*Verifier, error) {
	if o.Issuer == "" {
		return nil, errors.New("issuer is required")
	}
	hasSecret := o.Secret.Reveal() != ""
	if (o.JWKS == "") == !hasSecret {
		return nil, errors.New("set exactly one of jwks and secret")
	}
	algs := o.Algorithms
	if hasSecret {
		if len(o.Secret.Reveal()) < 32 {
			return nil, fmt.Errorf("secret %q is shorter than 32 bytes, too short for HS256 (RFC 7518, section 3.2)", o.Secret.Name())
		}
		if len(algs) == 0 {
			algs = []string{"HS256"}
		}
		if !slices.Equal(algs, []string{"HS256"}) {
			return nil, errors.New("with a secret, HS256 is the only algorithm")
		}
	} else {
		if err := CheckURL(o.JWKS); err != nil {
			return nil, fmt.Errorf("jwks: %w", err)
		}
		if len(algs) == 0 {
			algs = Asymmetric
		}
		for _, a := range algs {
			if !slices.Contains(Asymmetric, a) {
				return nil, fmt.Errorf("algorithm %q is not accepted with a JWKS (want one of %s)", a, strings.Join(Asymmetric, ", "))
			}
		}
	}
	for name, want := range o.Require {
		if err := checkRequired(want); err != nil {
			return nil, fmt.Errorf("require.%s: %w", name, err)
		}
	}
	v := &Verifier{
		kind:     o.Kind,
		idClaim:  o.IDClaim,
		require:  o.Require,
		from:     o.From,
		secret:   o.Secret,
		now:      o.Now,
		cacheFor: o.CacheFor,
	}
	if v.idClaim == "" {
		v.idClaim = "sub"
	}
	if v.from == (caller.Source{}) {
		v.from = caller.Bearer
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.cacheFor == 0 {
		v.cacheFor = DefaultCacheFor
	}
	leeway := o.Leeway
	switch {
	case leeway == 0:
		leeway = DefaultLeeway
	case leeway < 0:
		leeway = 0
	}
	popts := []gojwt.ParserOption{
		gojwt.WithValidMethods(algs),
		gojwt.WithIssuer(o.Issuer),
		gojwt.WithLeeway(leeway),
		gojwt.WithTimeFunc(v.now),
		gojwt.WithExpirationRequired(),
		gojwt.WithIssuedAt(),
		gojwt.WithJSONNumber(),
	}
	if len(o.Audience) > 0 {
		popts = append(popts, gojwt.WithAudience(o.Audience...))
	}
	v.parser = gojwt.NewParser(popts...)
	if !hasSecret {
		transport := o.Transport
		if transport == nil {
			transport = http.DefaultTransport
		}
		v.keys = &keySet{
			url: o.JWKS,
			client: &http.Client{
				Transport: transport,
				// A redirect would take the fetch somewhere the config
				// did not name.
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			},
			maxBytes:   orDefault(o.MaxJWKSBytes, DefaultMaxJWKSBytes),
			timeout:    orDefault(o.FetchTimeout, DefaultFetchTimeout),
			refresh:    orDefault(o.RefreshEvery, DefaultRefreshEvery),
			refetchGap: orDefault(o.RefetchGap, DefaultRefetchGap),
			now:        v.now,
		}
	}
	if size := orDefault(o.CacheSize, DefaultCacheSize); size > 0 {
		v.cache = &tokenCache{max: size, m: map[[32]byte]cached{}}
	}
	return v, nil
}

func orDefault[T int | int64 | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// CheckURL checks a JWKS or verify URL: https://, or http:// on a
// loopback address (local stand-ins and sidecars), because keys fetched
// in the clear could be swapped by anyone on the path.
func CheckURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not an absolute URL", s)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		h := u.Hostname()
		if h == "localhost" {
			return nil
		}
		if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
			return nil
		}
		return fmt.Errorf("%q must be https:// (http:// only on a loopback address)", s)
	}
	return fmt.Errorf("%q must be https://", s)
}

// Source returns where the token is read, so the gateway can keep it from
// going upstream (a query parameter is never forwarded).
func (v *Verifier) Source() caller.Source { return v.from }

// Verify checks the request's token.
func (v *Verifier) Verify(ctx context.Context, r *http.Request) (caller.Identity, error) {
	tok, ok := v.from.Token(r)
	if !ok {
		return caller.Identity{}, caller.Errorf(caller.Missing, nil)
	}
	return v.VerifyToken(ctx, tok)
}

// VerifyToken checks a token already read from a request.
func (v *Verifier) VerifyToken(ctx context.Context, tok string) (caller.Identity, error) {
	if tok == "" {
		return caller.Identity{}, caller.Errorf(caller.Malformed, errors.New("empty or ambiguous credential"))
	}
	if len(tok) > MaxTokenBytes {
		return caller.Identity{}, caller.Errorf(caller.TooLarge, fmt.Errorf("token of %d bytes, over %d", len(tok), MaxTokenBytes))
	}
	var sum [32]byte
	if v.cache != nil {
		sum = sha256.Sum256([]byte(tok))
		if id, ok := v.cache.get(sum, v.now()); ok {
			return id, nil
		}
	}
	if err := precheck(tok); err != nil {
		return caller.Identity{}, err
	}
	claims := gojwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(tok, claims, func(t *gojwt.Token) (any, error) {
		return v.key(ctx, t)
	})
	if err != nil {
		return caller.Identity{}, refusal(err, claims)
	}
	if err := v.checkRequired(claims); err != nil {
		return caller.Identity{}, err
	}
	id, err := idOf(claims, v.idClaim)
	if err != nil {
		return caller.Identity{}, err
	}
	ident := caller.Identity{Kind: v.kind, ID: id, Claims: claims}
	if v.cache != nil {
		// exp is present: the parser requires it.
		exp, _ := claims.GetExpirationTime()
		until := v.now().Add(v.cacheFor)
		if exp.Time.Before(until) {
			until = exp.Time
		}
		v.cache.put(sum, cached{id: ident, until: until}, v.now())
	}
	return ident, nil
}

// key returns the key (or keys) that may verify t.
func (v *Verifier) key(ctx context.Context, t *gojwt.Token) (any, error) {
	alg := t.Method.Alg()
	if v.keys == nil {
		// Only HS256 reaches here (WithValidMethods).
		return []byte(v.secret.Reveal()), nil
	}
	kid, _ := t.Header["kid"].(string)
	if _, present := t.Header["kid"]; present && (kid == "" || len(kid) > 256) {
		return nil, caller.Errorf(caller.Malformed, errors.New("bad kid header"))
	}
	ks, err := v.keys.lookup(ctx, alg, kid)
	if err != nil {
		return nil, err
	}
	if len(ks) == 1 {
		return ks[0].key, nil
	}
	set := gojwt.VerificationKeySet{Keys: make([]gojwt.VerificationKey, len(ks))}
	for i, k := range ks {
		set.Keys[i] = k.key
	}
	return set, nil
}

// refusal maps golang-jwt's errors to reasons. Its error texts quote no
// token material, but they are replaced anyway by fixed causes, so that a
// future version that does cannot leak one into a log.
func refusal(err error, claims gojwt.MapClaims) error {
	var ce *caller.Error
	if errors.As(err, &ce) {
		return ce
	}
	reason := caller.Malformed
	switch {
	case errors.Is(err, gojwt.ErrTokenSignatureInvalid), errors.Is(err, gojwt.ErrTokenUnverifiable):
		// Unverifiable: an algorithm golang-jwt does not know ("None").
		reason = caller.BadSignature
	case errors.Is(err, gojwt.ErrTokenExpired):
		reason = caller.Expired
	case errors.Is(err, gojwt.ErrTokenNotValidYet), errors.Is(err, gojwt.ErrTokenUsedBeforeIssued):
		reason = caller.NotYetValid
	case errors.Is(err, gojwt.ErrTokenInvalidIssuer):
		reason = caller.WrongIssuer
	case errors.Is(err, gojwt.ErrTokenInvalidAudience):
		reason = caller.WrongAudience
	case errors.Is(err, gojwt.ErrTokenRequiredClaimMissing):
		// exp or, with an audience configured, aud.
		if _, ok := claims["exp"]; !ok {
			return caller.Errorf(caller.Malformed, errors.New("no exp claim"))
		}
		reason = caller.WrongAudience
	}
	return caller.Errorf(reason, nil)
}

// precheck refuses what golang-jwt would accept but keyward does not: a
// member given twice in the header or the claims (encoding/json keeps the
// last, another parser the first: RFC 7515, section 4, and RFC 8725,
// section 3.9) and a "crit" header, whose extensions keyward does not
// understand (RFC 7515, section 4.1.11).
func precheck(tok string) error {
	head, rest, ok1 := strings.Cut(tok, ".")
	payload, _, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 {
		return caller.Errorf(caller.Malformed, errors.New("not three segments"))
	}
	for i, seg := range [2]string{head, payload} {
		b, err := base64.RawURLEncoding.DecodeString(seg)
		if err != nil {
			return caller.Errorf(caller.Malformed, errors.New("bad base64url"))
		}
		keys, err := topKeys(b)
		if err != nil {
			return caller.Errorf(caller.Malformed, err)
		}
		if i == 0 && slices.Contains(keys, "crit") {
			return caller.Errorf(caller.Malformed, errors.New("crit header not understood"))
		}
	}
	return nil
}

// topKeys returns the member names of a JSON object, or an error when one
// repeats.
func topKeys(b []byte) ([]string, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	if t, err := d.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var keys []string
	for d.More() {
		t, err := d.Token()
		if err != nil {
			return nil, errors.New("bad JSON")
		}
		k, _ := t.(string)
		if slices.Contains(keys, k) {
			return nil, errors.New("duplicate member " + strconvQuote(k))
		}
		keys = append(keys, k)
		var skip json.RawMessage
		if err := d.Decode(&skip); err != nil {
			return nil, errors.New("bad JSON")
		}
	}
	return keys, nil
}

// strconvQuote quotes a member name for a log, bounded: names are chosen
// by whoever made the token.
func strconvQuote(s string) string {
	if len(s) > 32 {
		s = s[:32] + "..."
	}
	return fmt.Sprintf("%q", s)
}

// checkRequired checks a `require` value's shape at construction.
func checkRequired(want any) error {
	switch w := want.(type) {
	case string, bool, int, int64, uint64, float64:
		return nil
	case []any:
		if len(w) == 0 {
			return errors.New("an empty list matches nothing")
		}
		for _, x := range w {
			if err := checkRequired(x); err != nil {
				return err
			}
			if _, nested := x.([]any); nested {
				return errors.New("lists of lists are not supported")
			}
		}
		return nil
	}
	return fmt.Errorf("want a string, number, boolean or list of them, got %T", want)
}

func (v *Verifier) checkRequired(claims gojwt.MapClaims) error {
	for name, want := range v.require {
		got, ok := claims[name]
		if !ok || !holds(got, want) {
			return caller.Errorf(caller.ClaimFailed, fmt.Errorf("required claim %q does not hold", name))
		}
	}
	return nil
}

// holds reports whether claim value got satisfies want: equality, or
// membership when got is a list; a list want means any of its members.
func holds(got, want any) bool {
	if ws, ok := want.([]any); ok {
		for _, w := range ws {
			if holds(got, w) {
				return true
			}
		}
		return false
	}
	if gs, ok := got.([]any); ok {
		for _, g := range gs {
			if scalarEqual(g, want) {
				return true
			}
		}
		return false
	}
	return scalarEqual(got, want)
}

// scalarEqual compares a claim (json.Number for numbers) with a YAML
// value (int, uint64 or float64 for numbers) as text, so 1 and 1.0 differ
// only if written differently in both.
func scalarEqual(got, want any) bool {
	switch w := want.(type) {
	case string:
		g, ok := got.(string)
		return ok && g == w
	case bool:
		g, ok := got.(bool)
		return ok && g == w
	}
	g, ok := got.(json.Number)
	if !ok {
		return false
	}
	gf, err := g.Float64()
	if err != nil {
		return false
	}
	switch w := want.(type) {
	case int:
		return gf == float64(w)
	case int64:
		return gf == float64(w)
	case uint64:
		return gf == float64(w)
	case float64:
		return gf == w
	}
	return false
}

// MaxIDBytes bounds a caller id: it keys limits and appears in logs.
const MaxIDBytes = 256

// idOf returns the id claim as text: a non-empty string (or a number) of
// printable characters, at most MaxIDBytes long.
func idOf(claims gojwt.MapClaims, name string) (string, error) {
	var id string
	switch c := claims[name].(type) {
	case string:
		id = c
	case json.Number:
		id = c.String()
	}
	if id == "" || len(id) > MaxIDBytes || !utf8.ValidString(id) || strings.ContainsFunc(id, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", caller.Errorf(caller.ClaimFailed, fmt.Errorf("id claim %q is missing or not a short printable string", name))
	}
	return id, nil
}

// tokenCache remembers verified tokens by SHA-256 until they expire, so a
// repeated token costs a hash and a map read instead of a signature check.
type tokenCache struct {
	max int
	mu  sync.RWMutex
	m   map[[32]byte]cached
}

type cached struct {
	id    caller.Identity
	until time.Time
}

func (c *tokenCache) get(sum [32]byte, now time.Time) (caller.Identity, bool) {
	c.mu.RLock()
	e, ok := c.m[sum]
	c.mu.RUnlock()
	if !ok || !now.Before(e.until) {
		return caller.Identity{}, false
	}
	return e.id, true
}

func (c *tokenCache) put(sum [32]byte, e cached, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		for k, old := range c.m {
			if !now.Before(old.until) {
				delete(c.m, k)
			}
		}
		// Still full: drop an eighth, chosen by map order (random), so a
		// stream of distinct valid tokens cannot grow memory.
		for k := range c.m {
			if len(c.m) < c.max-c.max/8 {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[sum] = e
}
