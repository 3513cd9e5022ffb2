// Package secret holds credential values so that they cannot be printed by
// accident: every formatting path (fmt verbs, slog, JSON) shows [REDACTED].
// The raw bytes are reachable only through Reveal, which the gateway calls
// where it builds the upstream request.
package secret

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// Redacted is what every formatting of a Value prints.
const Redacted = "[REDACTED]"

// Value is a loaded credential. Its zero value is an empty secret.
//
// The raw value is held by a closure because fmt prints unexported struct
// fields by reflection, without calling their methods: a Value inside
// another struct's unexported field would otherwise print in full, and a
// pointer to it is followed when fmt reports a bad verb. A func prints as
// an address, always.
type Value struct {
	name string
	raw  func() string
}

// New returns a Value named name holding raw. Tests and loaders use it; the
// name is used only for masking ("[secret:NAME]") and error messages.
func New(name, value string) Value { return Value{name: name, raw: func() string { return value }} }

// Name returns the secret's config name, which is not itself secret.
func (v Value) Name() string { return v.name }

// Reveal returns the raw credential. Call it only where the outbound request
// is built or where outbound output is scrubbed.
func (v Value) Reveal() string {
	if v.raw == nil {
		return ""
	}
	return v.raw()
}

// Len returns the length of the raw value in bytes. It says whether the
// value is long enough to be scrubbed (internal/scrub.MinLen) without
// revealing it.
func (v Value) Len() int { return len(v.Reveal()) }

// String returns [REDACTED].
func (v Value) String() string { return Redacted }

// GoString returns [REDACTED], so %#v does not leak either.
func (v Value) GoString() string { return Redacted }

// Format makes every fmt verb print [REDACTED].
func (v Value) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(Redacted)) }

// LogValue makes slog print [REDACTED].
func (v Value) LogValue() slog.Value { return slog.StringValue(Redacted) }

// MarshalJSON encodes [REDACTED].
func (v Value) MarshalJSON() ([]byte, error) { return []byte(`"` + Redacted + `"`), nil }

// MarshalText encodes [REDACTED].
func (v Value) MarshalText() ([]byte, error) { return []byte(Redacted), nil }

// Source says where a secret's value comes from. Exactly one of Env and File
// is set; the config loader checks that.
type Source struct {
	// Env names an environment variable holding the value.
	Env string
	// File names a file holding the value; one trailing newline is trimmed,
	// because `echo token > file` is how most people write one.
	File string
}

// ErrEmpty reports a source that resolved to an empty value: an empty
// credential is never what the user meant and would send "Bearer " upstream.
var ErrEmpty = errors.New("value is empty")

// ErrTrailingSpace reports a file whose value ends in white space once its
// one trailing newline is trimmed: a blank line after the token, or a
// space. An upstream would get it as part of the credential and refuse
// it, with nothing in the request that looks wrong.
var ErrTrailingSpace = errors.New("the value ends with a blank line or white space; remove it (one trailing newline is trimmed)")

// Load resolves src into a Value named name. getenv is injected so that
// loading stays pure in tests; nil means os.Getenv.
func Load(name string, src Source, getenv func(string) string) (Value, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	var value string
	switch {
	case src.Env != "":
		value = getenv(src.Env)
		if value == "" {
			return Value{}, fmt.Errorf("environment variable %s is unset or empty", src.Env)
		}
	case src.File != "":
		b, err := os.ReadFile(src.File)
		if err != nil {
			// The path is config, not secret; the OS error names only the path.
			return Value{}, fmt.Errorf("reading secret file: %w", err)
		}
		value = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if strings.TrimSpace(value) == "" {
			return Value{}, fmt.Errorf("file %s: %w", src.File, ErrEmpty)
		}
		if strings.TrimRight(value, " \t\r\n") != value {
			return Value{}, fmt.Errorf("file %s: %w", src.File, ErrTrailingSpace)
		}
	default:
		return Value{}, errors.New("no source: set env or file")
	}
	return New(name, value), nil
}
