// Package caller says who a request comes from: a verified user (a JWT),
// a partner holding an API key, or an attested anonymous visitor. Each
// kind of caller has its own Verifier in a subpackage (caller/jwt,
// caller/apikey, caller/visitor); this package holds what they share: the
// Identity they answer, the fixed set of reasons they refuse with, and
// where a credential is read from a request.
//
// A Verifier's error never contains the credential it was shown, nor any
// key: its text is fit for logs, and Reason is fit for metric labels.
package caller

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/keyward/keyward/internal/ratelimit"
	"github.com/keyward/keyward/internal/secret"
)

// Identity is who a verified request comes from.
type Identity struct {
	// Kind is the key of the caller kind under `callers:`, e.g. "users".
	Kind string
	// ID names the caller within its kind: a JWT's id claim, an API key's
	// name, a visitor's random id. Limits key on Kind and ID together.
	ID string
	// Claims are the verified claims of a JWT, for {caller.claim.NAME};
	// nil for other kinds. Values are as decoded from JSON (string,
	// float64, bool, []any, map[string]any); callers treat them as read-only
	// because a cached Identity is shared by every request that presents
	// the same token.
	Claims map[string]any
	// Limits is an API key's own plan, which replaces the route's
	// per-caller limits; nil for other kinds and for keys without one.
	Limits *Plan
}

// Plan is an API key's own limits: they replace the route's per-caller
// rate and budget for that key. A zero field means "the route's value".
type Plan struct {
	// Rate is the key's sustained rate.
	Rate ratelimit.Rate
	// Burst is how many requests the key may send at once.
	Burst int64
	// Budget caps the key's requests per calendar window (the route's
	// client_budget, for this key).
	Budget ratelimit.Budget
}

// Verifier checks one kind of caller.
type Verifier interface {
	// Verify returns the identity a request proves, or an *Error that
	// says why it proves none. A request that carries no credential of
	// this kind gets an *Error with Reason Missing.
	Verify(ctx context.Context, r *http.Request) (Identity, error)
}

// Reason is why a request was refused, from a fixed set (metric labels).
type Reason string

// The reasons a Verifier refuses with. Missing means "no credential of
// this kind"; every other reason means a credential was sent and is bad.
const (
	Missing         Reason = "missing"          // no credential of this kind
	Malformed       Reason = "malformed"        // not a well-formed credential of this kind
	TooLarge        Reason = "too_large"        // longer than any real one
	Expired         Reason = "expired"          // exp (or a key's expiry) passed
	NotYetValid     Reason = "not_yet_valid"    // nbf or iat in the future
	BadSignature    Reason = "bad_signature"    // signature, MAC or algorithm refused
	WrongIssuer     Reason = "wrong_issuer"     // iss differs
	WrongAudience   Reason = "wrong_audience"   // no accepted aud
	ClaimFailed     Reason = "claim_failed"     // a required claim does not hold: 403
	UnknownKey      Reason = "unknown_key"      // kid not in the JWKS, API key not stored
	Revoked         Reason = "revoked"          // an API key revoked with `keyward keys revoke`
	JWKSUnavailable Reason = "jwks_unavailable" // no keys could be fetched yet
	StoreFailed     Reason = "store_failed"     // the key store could not be read
	Attestation     Reason = "attestation"      // Turnstile or App Check refused the proof
	Replayed        Reason = "replayed"         // a single-use proof was used again
)

// Error is a refusal: a Reason, and a cause for logs that never contains
// the credential or a key.
type Error struct {
	// Reason is the fixed-set reason.
	Reason Reason
	// Err is the cause, for logs; nil when Reason says it all.
	Err error
}

// Errorf is shorthand for an *Error with a cause.
func Errorf(reason Reason, cause error) *Error { return &Error{Reason: reason, Err: cause} }

// Error returns the reason and the cause.
func (e *Error) Error() string {
	if e.Err == nil {
		return "caller " + string(e.Reason)
	}
	return "caller " + string(e.Reason) + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Status is the HTTP status a refusal answers with: 403 when a valid
// credential lacks a required claim, 503 when the key store could not be
// read (the key may be good: the caller should retry, not discard it),
// 401 otherwise.
func (e *Error) Status() int {
	switch e.Reason {
	case ClaimFailed:
		return http.StatusForbidden
	case StoreFailed:
		return http.StatusServiceUnavailable
	}
	return http.StatusUnauthorized
}

// ReasonOf returns the Reason of err: "" for nil, Malformed for an error
// that is no *Error (a Verifier should not return one).
func ReasonOf(err error) Reason {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return Malformed
}

// Any verifies a request against several kinds and returns the first
// identity proven, in the order given. When none is proven, it returns
// the most telling refusal: a bad credential over a missing one, and a
// credential recognised by its kind (an expired JWT, a revoked key) over
// one that merely did not parse as that kind, because a route that takes
// users and visitors sees every Bearer token through both verifiers.
func Any(vs ...Verifier) Verifier {
	if len(vs) == 1 {
		return vs[0]
	}
	return anyOf(vs)
}

type anyOf []Verifier

func (a anyOf) Verify(ctx context.Context, r *http.Request) (Identity, error) {
	var best error
	bestRank := -1
	for _, v := range a {
		id, err := v.Verify(ctx, r)
		if err == nil {
			return id, nil
		}
		if rank := rankOf(ReasonOf(err)); rank > bestRank {
			best, bestRank = err, rank
		}
	}
	return Identity{}, best
}

func rankOf(r Reason) int {
	switch r {
	case Missing:
		return 0
	case Malformed, TooLarge:
		return 1
	case ClaimFailed:
		return 3 // the most specific answer: a valid token that is not allowed
	default:
		return 2
	}
}

// Env is what building a Verifier from config needs from outside.
type Env struct {
	// Secret returns the keyward secret named name.
	Secret func(name string) (secret.Value, bool)
	// Transport sends outbound requests (JWKS, siteverify); the gateway
	// passes its outbound policy, so these calls obey the same address
	// rules as upstream calls. Nil means http.DefaultTransport.
	Transport http.RoundTripper
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Dir is the config file's directory, against which relative paths
	// (the keys file) are resolved.
	Dir string
}

// Problem is a config mistake found while building a Verifier. Path is
// relative to the caller kind's block ("jwt.issuer"); the config compiler
// prefixes it with "callers.KIND." and looks up the line.
type Problem struct {
	Path string
	Msg  string
}

// Clock returns e.Now, or time.Now when it is nil.
func (e Env) Clock() func() time.Time {
	if e.Now == nil {
		return time.Now
	}
	return e.Now
}
