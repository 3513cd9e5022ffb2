package apikey

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/ratelimit"
)

// Record is one stored key: everything about it but the key itself.
type Record struct {
	// Kind is the caller kind the key belongs to ("partners").
	Kind string
	// Name names the key within its kind (a partner, an app); it is the
	// caller id in limits and logs. Names are never reused, even after a
	// revocation, so that a new key never inherits an old one's counts.
	Name string
	// Hash is the key's SHA-256.
	Hash Hash
	// Created is when the key was made.
	Created time.Time
	// Expires is when the key stops working; zero means never.
	Expires time.Time
	// Revoked is when the key was revoked; zero means it was not. A key
	// with any Revoked time is refused, even one ahead of the verifying
	// host's clock.
	Revoked time.Time
	// LastUsed is the last use a store knows of; zero means none. It is
	// recorded at most once a minute, so it lags.
	LastUsed time.Time
	// Limits is the key's own plan; nil means the route's limits.
	Limits *Limits
}

// NameRE is what a kind or key name may be: it appears in limit keys,
// logs and metric-free text, so it is short and plain.
var NameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Validate reports what is wrong with r as a record to store: its kind
// and name, its creation time and its plan. Every store checks a record
// with it before adding it.
func (r Record) Validate() error {
	if !NameRE.MatchString(r.Kind) {
		return fmt.Errorf("kind %q: want letters, digits, '.', '_' or '-' (at most 64)", r.Kind)
	}
	if !NameRE.MatchString(r.Name) {
		return fmt.Errorf("name %q: want letters, digits, '.', '_' or '-' (at most 64)", r.Name)
	}
	if r.Created.IsZero() {
		return errors.New("created is required")
	}
	if _, err := r.Limits.Plan(); err != nil {
		return fmt.Errorf("limits: %w", err)
	}
	return nil
}

// Limits is a key's plan as written: it replaces the route's per-caller
// limits for this key. An empty field keeps the route's value.
type Limits struct {
	// Rate is the key's sustained rate, e.g. "600/m".
	Rate string `yaml:"rate,omitempty"`
	// Burst is how many requests the key may send at once.
	Burst int64 `yaml:"burst,omitempty"`
	// Budget caps the key's requests per calendar window, e.g.
	// "100000/month".
	Budget string `yaml:"budget,omitempty"`
}

// Plan compiles l; nil stays nil.
func (l *Limits) Plan() (*caller.Plan, error) {
	if l == nil {
		return nil, nil
	}
	var p caller.Plan
	var err error
	if l.Rate != "" {
		if p.Rate, err = ratelimit.ParseRate(l.Rate); err != nil {
			return nil, err
		}
	}
	if l.Burst < 0 {
		return nil, fmt.Errorf("burst %d: want a positive number", l.Burst)
	}
	p.Burst = l.Burst
	if l.Budget != "" {
		if p.Budget, err = ratelimit.ParseBudget(l.Budget); err != nil {
			return nil, err
		}
	}
	return &p, nil
}

// Store is where a Verifier finds keys.
type Store interface {
	// Lookup returns the record whose hash is h, and whether there is one.
	// An error means the store could not be read; the Verifier then
	// refuses the key (StoreFailed), never lets it in. An answer may come
	// from a cache, but never one older than a second, so that a
	// revocation reaches every instance within a second.
	Lookup(ctx context.Context, h Hash) (Stored, bool, error)
	// Used notes that the key with hash h was used at t. It is best
	// effort and must not block the request.
	Used(h Hash, t time.Time)
}

// Stored is what a lookup returns: the record, with its plan compiled.
type Stored struct {
	Record
	// Plan is Record.Limits compiled; nil when the key has none.
	Plan *caller.Plan
}

// Admin is how `keyward keys` manages keys.
type Admin interface {
	// Add stores a new record. A name already used in the kind, even by a
	// revoked key, is refused with ErrNameTaken.
	Add(ctx context.Context, r Record) error
	// List returns the records of kind ("" for every kind), oldest first.
	List(ctx context.Context, kind string) ([]Record, error)
	// Revoke marks the key kind/name revoked at t. A key that does not
	// exist, or is already revoked, is ErrNotFound.
	Revoke(ctx context.Context, kind, name string, t time.Time) error
}

// Errors of Admin.
var (
	ErrNameTaken = errors.New("a key of that kind already has that name (names are never reused, even after a revocation)")
	ErrNotFound  = errors.New("no active key of that kind has that name")
)

// NoStore is the Store of a config whose keys are in a store that was not
// opened: `keyward check` and `keyward test` compile a config with
// `store: redis://…` without connecting to Redis. Every lookup fails with
// ErrNoStore, so no key is let in, and none is called unknown.
type NoStore struct{}

var _ Store = NoStore{}

// ErrNoStore is the error of every NoStore lookup.
var ErrNoStore = errors.New("the API keys are in a store this command does not open")

// Lookup fails with ErrNoStore.
func (NoStore) Lookup(context.Context, Hash) (Stored, bool, error) {
	return Stored{}, false, ErrNoStore
}

// Used does nothing.
func (NoStore) Used(Hash, time.Time) {}
