// Package visitor lets anonymous people on a static site or in an app
// become known callers without an account: a page proves once that it
// runs in a real browser (Cloudflare Turnstile) or an app proves it is
// genuine (Firebase App Check), and gets in exchange a short-lived
// visitor token carrying a random visitor id, which per-caller limits key
// on. The exchange is Exchange, mounted at POST /_keyward/visitor; the
// tokens are checked by Verifier.
//
// A visitor token is keyward's own, not a JWT: "kwv_" and 55 base64url
// characters holding how the visitor proved itself (1 byte), the visitor
// id (16 random bytes), the expiry (8 bytes, Unix seconds) and an
// HMAC-SHA256 over them truncated to 16 bytes (128 bits, as NIST SP
// 800-107 allows). Every instance that shares the signing key mints and
// checks the same tokens, with no store.
package visitor

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"sync"
	"time"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/secret"
)

// Prefix starts every visitor token.
const Prefix = "kwv_"

// How a visitor proved itself, byte 0 of a token.
const (
	viaTurnstile byte = 1
	viaAppCheck  byte = 2
)

const (
	idBytes   = 16
	macBytes  = 16
	bodyBytes = 1 + idBytes + 8
	rawBytes  = bodyBytes + macBytes
	// TokenLen is the length of every visitor token.
	TokenLen = len(Prefix) + (rawBytes*8+5)/6
)

// MinKeyBytes is the shortest signing key accepted.
const MinKeyBytes = 32

// signer mints and checks tokens with a key derived from the signing
// key, so the configured secret itself never keys anything but the
// derivation. The key lives only inside the pool's closure: nothing
// that prints a signer can print it.
type signer struct {
	macs sync.Pool // of hash.Hash
	ttl  time.Duration
}

// newSigner derives the token key from key.
func newSigner(key secret.Value, ttl time.Duration) (*signer, error) {
	if len(key.Reveal()) < MinKeyBytes {
		return nil, fmt.Errorf("signing key %q is shorter than %d bytes", key.Name(), MinKeyBytes)
	}
	d := hmac.New(sha256.New, []byte(key.Reveal()))
	d.Write([]byte("keyward visitor token v1"))
	derived := d.Sum(nil)
	s := &signer{ttl: ttl}
	s.macs.New = func() any { return hmac.New(sha256.New, derived) }
	return s, nil
}

func (s *signer) mac(dst []byte, parts ...[]byte) []byte {
	m := s.macs.Get().(hash.Hash)
	m.Reset()
	for _, p := range parts {
		m.Write(p)
	}
	dst = m.Sum(dst)
	s.macs.Put(m)
	return dst
}

// mint returns a token for visitor id, proven by via, expiring at exp.
func (s *signer) mint(via byte, id [idBytes]byte, exp time.Time) string {
	var raw [rawBytes + sha256.Size]byte
	raw[0] = via
	copy(raw[1:], id[:])
	binary.BigEndian.PutUint64(raw[1+idBytes:], uint64(exp.Unix()))
	s.mac(raw[bodyBytes:bodyBytes], raw[:bodyBytes])
	return Prefix + base64.RawURLEncoding.EncodeToString(raw[:rawBytes])
}

// Verifier checks visitor tokens, sent as `Authorization: Bearer TOKEN`.
type Verifier struct {
	kind   string
	signer *signer
	now    func() time.Time
	claims [3]map[string]any // by via, shared and read-only
}

var _ caller.Verifier = (*Verifier)(nil)

// Source returns where the token is read: always Bearer.
func (v *Verifier) Source() caller.Source { return caller.Bearer }

// Verify checks the request's visitor token.
func (v *Verifier) Verify(_ context.Context, r *http.Request) (caller.Identity, error) {
	tok, ok := caller.Bearer.Token(r)
	if !ok {
		return caller.Identity{}, caller.Errorf(caller.Missing, nil)
	}
	return v.VerifyToken(tok)
}

var errNotVisitor = errors.New("not a visitor token")

// VerifyToken checks a token already read from a request.
func (v *Verifier) VerifyToken(tok string) (caller.Identity, error) {
	if len(tok) != TokenLen || tok[:len(Prefix)] != Prefix {
		// Another kind's token (a JWT) on a route that takes several.
		return caller.Identity{}, caller.Errorf(caller.Malformed, errNotVisitor)
	}
	var raw [rawBytes + 2]byte // DecodedLen rounds up
	n, err := base64.RawURLEncoding.Decode(raw[:], []byte(tok[len(Prefix):]))
	if err != nil || n != rawBytes {
		return caller.Identity{}, caller.Errorf(caller.Malformed, errNotVisitor)
	}
	var sum [sha256.Size]byte
	if !hmac.Equal(v.signer.mac(sum[:0], raw[:bodyBytes])[:macBytes], raw[bodyBytes:rawBytes]) {
		return caller.Identity{}, caller.Errorf(caller.BadSignature, nil)
	}
	via := raw[0]
	if via != viaTurnstile && via != viaAppCheck {
		return caller.Identity{}, caller.Errorf(caller.Malformed, errors.New("unknown proof"))
	}
	exp := int64(binary.BigEndian.Uint64(raw[1+idBytes:]))
	if v.now().Unix() >= exp {
		return caller.Identity{}, caller.Errorf(caller.Expired, nil)
	}
	return caller.Identity{Kind: v.kind, ID: hex.EncodeToString(raw[1 : 1+idBytes]), Claims: v.claims[via]}, nil
}

func claimsFor(via string) map[string]any { return map[string]any{"via": via} }
