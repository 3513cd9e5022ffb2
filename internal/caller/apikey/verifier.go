package apikey

import (
	"context"
	"crypto/subtle"
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/config"
)

// DefaultHeader carries the key when the config names none.
const DefaultHeader = "X-Api-Key"

// DefaultFile is the keys file when the config names none.
const DefaultFile = "keys.yaml"

// Verifier checks API-key callers of one kind.
type Verifier struct {
	kind  string
	from  caller.Source
	store Store
	now   func() time.Time
}

var _ caller.Verifier = (*Verifier)(nil)

// Options configure a Verifier.
type Options struct {
	// Kind is the caller kind; a key of another kind is unknown here.
	Kind string
	// Header carries the key. Empty means DefaultHeader; "Authorization"
	// means the Bearer scheme.
	Header string
	// Store holds the keys. Required.
	Store Store
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

// New returns a Verifier.
func New(o Options) *Verifier {
	v := &Verifier{kind: o.Kind, from: caller.Header(o.Header), store: o.Store, now: o.Now}
	if o.Header == "" {
		v.from = caller.Header(DefaultHeader)
	}
	if v.now == nil {
		v.now = time.Now
	}
	return v
}

// Source returns where the key is read, so the gateway can keep the key
// from going upstream.
func (v *Verifier) Source() caller.Source { return v.from }

// Verify checks the request's key.
func (v *Verifier) Verify(ctx context.Context, r *http.Request) (caller.Identity, error) {
	key, ok := v.from.Token(r)
	if !ok {
		return caller.Identity{}, caller.Errorf(caller.Missing, nil)
	}
	return v.VerifyKey(ctx, key)
}

// VerifyKey checks a key already read from a request.
func (v *Verifier) VerifyKey(ctx context.Context, key string) (caller.Identity, error) {
	if len(key) > 4*KeyLen {
		return caller.Identity{}, caller.Errorf(caller.TooLarge, nil)
	}
	if err := Check(key); err != nil {
		return caller.Identity{}, caller.Errorf(caller.Malformed, err)
	}
	h := HashOf(key)
	s, found, err := v.store.Lookup(ctx, h)
	if err != nil {
		return caller.Identity{}, caller.Errorf(caller.StoreFailed, fmt.Errorf("looking up an API key: %w", err))
	}
	// The store finds the record by hash; comparing the whole hash again
	// in constant time keeps a store that matched on less (a prefix
	// index) from being a timing oracle.
	if !found || subtle.ConstantTimeCompare(s.Hash[:], h[:]) != 1 || s.Kind != v.kind {
		return caller.Identity{}, caller.Errorf(caller.UnknownKey, nil)
	}
	now := v.now()
	// Any revocation time revokes, even one ahead of this clock: the time
	// comes from the clock of the host that ran `keyward keys revoke`, and
	// a skew between hosts must not delay a revocation.
	if !s.Revoked.IsZero() {
		return caller.Identity{}, caller.Errorf(caller.Revoked, fmt.Errorf("key %s/%s was revoked", s.Kind, s.Name))
	}
	if !s.Expires.IsZero() && !now.Before(s.Expires) {
		return caller.Identity{}, caller.Errorf(caller.Expired, fmt.Errorf("key %s/%s expired", s.Kind, s.Name))
	}
	v.store.Used(h, now)
	return caller.Identity{Kind: v.kind, ID: s.Name, Limits: s.Plan}, nil
}

// Compile builds the Verifier of the `api_keys:` block of caller kind
// kind, with its keys file. The file is read once here, so that a bad
// file is a config problem; a missing file holds no keys yet. onError is
// told of later reload failures (the last good keys stay in force).
func Compile(kind string, c config.APIKeys, env caller.Env, onError func(error)) (*Verifier, *File, []caller.Problem) {
	probs := checkConfig(kind, c)
	f := OpenFile(KeysPath(c, env.Dir), FileOptions{Now: env.Now, OnError: onError})
	if err := f.Load(); err != nil {
		for _, e := range unjoin(err) {
			probs = append(probs, caller.Problem{Path: "api_keys.keys", Msg: e.Error()})
		}
	}
	if len(probs) > 0 {
		return nil, nil, probs
	}
	return New(Options{Kind: kind, Header: headerOf(c), Store: f, Now: env.Now}), f, nil
}

// CompileStore builds the Verifier of the `api_keys:` block of caller
// kind kind over store, the shared store (Redis) that holds the keys
// when the config's `store:` names one. The keys file is not read: the
// keys live in the store only (see docs/CALLERS.md for why), and
// `keyward keys import` copies a file's keys into it. Nothing is read
// from store here, so that compiling opens no sockets.
func CompileStore(kind string, c config.APIKeys, env caller.Env, store Store) (*Verifier, []caller.Problem) {
	if probs := checkConfig(kind, c); len(probs) > 0 {
		return nil, probs
	}
	return New(Options{Kind: kind, Header: headerOf(c), Store: store, Now: env.Now}), nil
}

// checkConfig reports the problems of an `api_keys:` block that do not
// depend on where the keys are stored.
func checkConfig(kind string, c config.APIKeys) []caller.Problem {
	var probs []caller.Problem
	if _, err := caller.ParseSource("header:" + headerOf(c)); err != nil {
		probs = append(probs, caller.Problem{Path: "api_keys.header", Msg: fmt.Sprintf("%q is not a header name", headerOf(c))})
	}
	if !NameRE.MatchString(kind) {
		probs = append(probs, caller.Problem{Path: "api_keys", Msg: fmt.Sprintf("kind %q: an API-key kind is letters, digits, '.', '_' or '-' (at most 64)", kind)})
	}
	return probs
}

// headerOf is the header c reads the key from.
func headerOf(c config.APIKeys) string {
	if c.Header == "" {
		return DefaultHeader
	}
	return c.Header
}

// KeysPath is the keys file of c, resolved against the config's
// directory dir.
func KeysPath(c config.APIKeys, dir string) string {
	p := c.Keys
	if p == "" {
		p = DefaultFile
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	return p
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
