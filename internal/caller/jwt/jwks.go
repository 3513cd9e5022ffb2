package jwt

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyward/keyward/internal/caller"
)

// keyfunc/v3 (with jwkset) was the chosen JWKS client; it is not used
// because (1) a refresh on an unknown kid waits on a rate limiter, so a
// flood of forged kids makes every such request block instead of failing
// fast; (2) it reads the JWKS response without a size bound; (3) its
// refresh goroutine runs on a real ticker that a test cannot drive, and
// lives until a context is cancelled, which a reload would have to
// remember. keySet below is the small part keyward needs, with golang-jwt
// doing the signature checks.

// keySet is a JWKS fetched over HTTP: cached, refreshed in the background
// when it gets old, re-fetched on an unknown kid at most once per
// refetchGap, and kept while the endpoint is down.
type keySet struct {
	url        string
	client     *http.Client
	maxBytes   int64
	timeout    time.Duration
	refresh    time.Duration
	refetchGap time.Duration
	now        func() time.Time

	keys    atomic.Pointer[keyMap] // nil until the first successful fetch
	fetches atomic.Int64           // fetches started, for tests

	mu        sync.Mutex
	fetchedAt time.Time     // last successful fetch
	triedAt   time.Time     // last fetch started
	inflight  chan struct{} // closed when the fetch under way ends; nil when none
	lastErr   error         // of the last failed fetch
}

// keyMap is one fetched set, immutable once published.
type keyMap struct {
	byKid map[string]*jwk
	all   []*jwk
}

// jwk is one usable public key.
type jwk struct {
	kid string
	alg string // "" when the JWK does not restrict it
	key any    // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// maxKeys bounds a set: a token without a kid is tried against every
// key that fits its algorithm, and a hostile or broken endpoint must not
// make that unbounded. Real sets hold two or three keys.
const maxKeys = 32

// errNoKeys is the cause when no set was ever fetched and none can be
// fetched now.
var errNoKeys = errors.New("no JWKS fetched yet")

// lookup returns the keys that may verify a token with alg and kid
// ("" when the token has none).
func (s *keySet) lookup(ctx context.Context, alg, kid string) ([]*jwk, error) {
	m := s.keys.Load()
	if m == nil {
		if err := s.wait(ctx); err != nil {
			return nil, caller.Errorf(caller.JWKSUnavailable, err)
		}
		if m = s.keys.Load(); m == nil {
			return nil, caller.Errorf(caller.JWKSUnavailable, errNoKeys)
		}
	} else if s.stale() {
		s.start() // background: this request goes on with the keys it has
	}
	if ks := m.find(alg, kid); len(ks) > 0 {
		return ks, nil
	}
	// An unknown kid may be a key the issuer just rotated in. Fetch again,
	// but only when the last attempt is older than refetchGap: a flood of
	// forged kids then costs one fetch per gap, and fails fast meanwhile.
	if err := s.wait(ctx); err == nil {
		if ks := s.keys.Load().find(alg, kid); len(ks) > 0 {
			return ks, nil
		}
	}
	return nil, caller.Errorf(caller.UnknownKey, nil)
}

func (m *keyMap) find(alg, kid string) []*jwk {
	if m == nil {
		return nil
	}
	if kid != "" {
		if k, ok := m.byKid[kid]; ok && k.fits(alg) {
			return []*jwk{k}
		}
		return nil
	}
	var out []*jwk
	for _, k := range m.all {
		if k.fits(alg) {
			out = append(out, k)
		}
	}
	return out
}

// fits reports whether k may verify a token signed with alg: the key type
// and curve must be the algorithm's, so that no key is ever used by an
// algorithm it was not made for (RFC 8725, section 3.1).
func (k *jwk) fits(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	switch key := k.key.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return key.Curve == elliptic.P256()
		case "ES384":
			return key.Curve == elliptic.P384()
		}
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

func (s *keySet) stale() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now().Sub(s.fetchedAt) >= s.refresh
}

// wait waits for a fetch: the one under way, or a new one when the last
// attempt is older than refetchGap (or there was none). It returns the
// error of that fetch, or an error when no fetch may start now.
func (s *keySet) wait(ctx context.Context) error {
	done := s.start()
	if done == nil {
		s.mu.Lock()
		err := s.lastErr
		s.mu.Unlock()
		if err == nil {
			err = errors.New("JWKS fetched moments ago")
		}
		return err
	}
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("waiting for the JWKS: %w", ctx.Err())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// start starts a fetch unless one is under way or the last one started
// less than refetchGap ago, and returns the channel closed when the fetch
// under way ends (nil when none is).
func (s *keySet) start() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight != nil {
		return s.inflight
	}
	now := s.now()
	if !s.triedAt.IsZero() && now.Sub(s.triedAt) < s.refetchGap {
		return nil
	}
	s.triedAt = now
	done := make(chan struct{})
	s.inflight = done
	s.fetches.Add(1)
	go func() {
		// Not the request's context: other requests wait on this fetch, and
		// one client hanging up must not fail it for all of them.
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		m, err := s.fetch(ctx)
		cancel()
		s.mu.Lock()
		if err == nil {
			s.keys.Store(m)
			s.fetchedAt = s.now()
		}
		s.lastErr = err // the last good keys stay in s.keys on failure
		s.inflight = nil
		s.mu.Unlock()
		close(done)
	}()
	return done
}

// fetch gets and parses the set. Its errors name the URL (config, not
// secret) and never quote the body.
func (s *keySet) fetch(ctx context.Context) (*keyMap, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, fmt.Errorf("fetching JWKS %s: %w", s.url, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching JWKS %s: %w", s.url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching JWKS %s: status %d", s.url, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, s.maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading JWKS %s: %w", s.url, err)
	}
	if int64(len(body)) > s.maxBytes {
		return nil, fmt.Errorf("reading JWKS %s: larger than %d bytes", s.url, s.maxBytes)
	}
	m, err := parseSet(body)
	if err != nil {
		return nil, fmt.Errorf("parsing JWKS %s: %w", s.url, err)
	}
	return m, nil
}

// rawKey is a JWK as sent (RFC 7517), public members only.
type rawKey struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// parseSet keeps the signature keys keyward can use and skips the rest:
// "oct" (symmetric) keys above all, since a shared secret published in a
// key set would let anyone sign, and an HMAC check must never be keyed
// with a published key.
func parseSet(body []byte) (*keyMap, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, errors.New("not a JSON key set")
	}
	m := &keyMap{byKid: map[string]*jwk{}}
	for _, raw := range set.Keys {
		var rk rawKey
		if json.Unmarshal(raw, &rk) != nil || (rk.Use != "" && rk.Use != "sig") {
			continue
		}
		key, err := rk.publicKey()
		if err != nil {
			continue
		}
		k := &jwk{kid: rk.Kid, alg: rk.Alg, key: key}
		if k.kid != "" {
			if _, dup := m.byKid[k.kid]; dup {
				continue // the first wins; a set should not repeat a kid
			}
			m.byKid[k.kid] = k
		}
		m.all = append(m.all, k)
		if len(m.all) == maxKeys {
			break
		}
	}
	if len(m.all) == 0 {
		return nil, errors.New("no usable signature key (RSA of 2048 bits or more, EC P-256 or P-384, Ed25519)")
	}
	return m, nil
}

func (rk rawKey) publicKey() (any, error) {
	switch rk.Kty {
	case "RSA":
		n, err := b64int(rk.N)
		if err != nil {
			return nil, err
		}
		e, err := b64int(rk.E)
		if err != nil {
			return nil, err
		}
		// Keys under 2048 bits are refused (RFC 7518, section 3.3), and the
		// exponent must be a sane odd number.
		if n.BitLen() < 2048 || n.BitLen() > 8192 || !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 || e.Bit(0) == 0 {
			return nil, errors.New("unusable RSA key")
		}
		return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
	case "EC":
		var c elliptic.Curve
		switch rk.Crv {
		case "P-256":
			c = elliptic.P256()
		case "P-384":
			c = elliptic.P384()
		default:
			return nil, errors.New("unsupported curve")
		}
		size := (c.Params().BitSize + 7) / 8
		x, err1 := base64.RawURLEncoding.DecodeString(rk.X)
		y, err2 := base64.RawURLEncoding.DecodeString(rk.Y)
		if err1 != nil || err2 != nil || len(x) != size || len(y) != size {
			return nil, errors.New("bad EC coordinates")
		}
		point := append(append([]byte{4}, x...), y...)
		// ParseUncompressedPublicKey refuses points off the curve.
		return ecdsa.ParseUncompressedPublicKey(c, point)
	case "OKP":
		x, err := base64.RawURLEncoding.DecodeString(rk.X)
		if rk.Crv != "Ed25519" || err != nil || len(x) != ed25519.PublicKeySize {
			return nil, errors.New("unusable OKP key")
		}
		return ed25519.PublicKey(x), nil
	}
	return nil, errors.New("unsupported key type")
}

func b64int(s string) (*big.Int, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		return nil, errors.New("bad base64url integer")
	}
	return new(big.Int).SetBytes(b), nil
}
