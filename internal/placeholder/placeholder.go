// Package placeholder parses and expands the {param}, {secret.NAME},
// {stage.NAME} and {caller.id}, {caller.kind}, {caller.claim.NAME}
// placeholders used in upstream URLs, query values and header values. Stage variables are resolved when a config is compiled; secrets
// and path parameters stay as parts until a request is built, so a compiled
// template never prints a secret's value.
package placeholder

import (
	"fmt"
	"strings"

	"github.com/keyward/keyward/internal/secret"
)

// Kind is what a Part stands for.
type Kind uint8

// The kinds of Part.
const (
	Literal Kind = iota
	Param        // a path parameter, by name
	Secret       // a secret, by name
	Stage        // a stage variable, by name
	Caller       // the verified caller: "caller.id", "caller.kind", "caller.claim.NAME"
)

// Part is a piece of a parsed string.
type Part struct {
	Kind Kind
	// Text is the literal text, or the name the placeholder refers to.
	Text string
}

// Parse splits s into literal text and placeholders. Braces have no other
// meaning in keyward's config, so an unmatched one is an error rather than
// text: it is almost always a typo.
func Parse(s string) ([]Part, error) {
	var parts []Part
	for s != "" {
		i := strings.IndexAny(s, "{}")
		if i < 0 {
			parts = append(parts, Part{Kind: Literal, Text: s})
			break
		}
		if s[i] == '}' {
			return nil, fmt.Errorf("unmatched %q", "}")
		}
		if i > 0 {
			parts = append(parts, Part{Kind: Literal, Text: s[:i]})
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return nil, fmt.Errorf("unclosed %q", "{")
		}
		name := s[i+1 : i+end]
		p, err := parseName(name)
		if err != nil {
			return nil, err
		}
		parts = append(parts, p)
		s = s[i+end+1:]
	}
	return parts, nil
}

func parseName(name string) (Part, error) {
	ns, rest, dotted := strings.Cut(name, ".")
	switch {
	case !dotted:
		if !ValidName(name) {
			return Part{}, fmt.Errorf("bad placeholder {%s}: want {param}, {secret.NAME}, {stage.NAME} or {caller.id}", name)
		}
		return Part{Kind: Param, Text: name}, nil
	case ns == "secret" && ValidName(rest):
		return Part{Kind: Secret, Text: rest}, nil
	case ns == "stage" && ValidName(rest):
		return Part{Kind: Stage, Text: rest}, nil
	case ns == "caller" && (rest == "id" || rest == "kind"):
		return Part{Kind: Caller, Text: name}, nil
	case ns == "caller" && strings.HasPrefix(rest, "claim.") && ValidName(strings.TrimPrefix(rest, "claim.")):
		return Part{Kind: Caller, Text: name}, nil
	}
	return Part{}, fmt.Errorf("bad placeholder {%s}: want {param}, {secret.NAME}, {stage.NAME}, {caller.id}, {caller.kind} or {caller.claim.NAME}", name)
}

// ValidName reports whether s can name a parameter, secret or stage
// variable: letters, digits, '_' and '-', starting with a letter or '_'.
func ValidName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case (c >= '0' && c <= '9' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// Resolver supplies what placeholders refer to at compile time. A nil
// func means that kind of placeholder is not allowed where it is used.
type Resolver struct {
	Stage  func(name string) (string, bool)
	Secret func(name string) (secret.Value, bool)
	// Param reports whether a path parameter exists.
	Param func(name string) bool
	// Caller, if set, allows {caller.*} placeholders: where the request's
	// verified caller may be written (headers.set, query.set). It reports
	// an error for one the route cannot fill (no callers).
	Caller func(name string) error
}

// Compile parses s and resolves stage variables into literal text, checking
// that every secret and parameter exists.
func Compile(s string, r Resolver) (Template, error) {
	parts, err := Parse(s)
	if err != nil {
		return Template{}, err
	}
	t := Template{src: s}
	for _, p := range parts {
		switch p.Kind {
		case Literal:
			t.add(piece{kind: Literal, text: p.Text})
		case Stage:
			if r.Stage == nil {
				return Template{}, fmt.Errorf("{stage.%s} is not allowed here", p.Text)
			}
			v, ok := r.Stage(p.Text)
			if !ok {
				return Template{}, fmt.Errorf("unknown stage variable {stage.%s}", p.Text)
			}
			t.add(piece{kind: Literal, text: v})
		case Secret:
			if r.Secret == nil {
				return Template{}, fmt.Errorf("{secret.%s} is not allowed here", p.Text)
			}
			v, ok := r.Secret(p.Text)
			if !ok {
				return Template{}, fmt.Errorf("unknown secret {secret.%s}", p.Text)
			}
			t.add(piece{kind: Secret, text: p.Text, secret: v})
		case Param:
			if r.Param == nil {
				return Template{}, fmt.Errorf("{%s} is not allowed here", p.Text)
			}
			if !r.Param(p.Text) {
				return Template{}, fmt.Errorf("unknown path parameter {%s}", p.Text)
			}
			t.add(piece{kind: Param, text: p.Text})
		case Caller:
			if r.Caller == nil {
				return Template{}, fmt.Errorf("{%s} is not allowed here: the caller goes only into headers.set and query.set", p.Text)
			}
			if err := r.Caller(p.Text); err != nil {
				return Template{}, err
			}
			// Expanded like a parameter: the request supplies the value.
			t.add(piece{kind: Param, text: p.Text})
		}
	}
	return t, nil
}

// Template is a compiled placeholder string. Printing it shows its source,
// never a secret's value.
type Template struct {
	src    string
	pieces []piece
}

type piece struct {
	kind   Kind
	text   string // literal text, or param/secret name
	secret secret.Value
}

func (t *Template) add(p piece) {
	if n := len(t.pieces); p.kind == Literal && n > 0 && t.pieces[n-1].kind == Literal {
		t.pieces[n-1].text += p.text
		return
	}
	t.pieces = append(t.pieces, p)
}

// String returns the template as written in the config.
func (t Template) String() string { return t.src }

// Static reports whether the template has no path parameters (nor caller
// placeholders), so that it can be expanded once per compiled config
// instead of once per request.
func (t Template) Static() bool {
	for _, p := range t.pieces {
		if p.kind == Param {
			return false
		}
	}
	return true
}

// CallerClaims returns the claim names the template writes
// ({caller.claim.NAME}).
func (t Template) CallerClaims() []string {
	var out []string
	for _, p := range t.pieces {
		if name, ok := strings.CutPrefix(p.text, "caller.claim."); ok && p.kind == Param {
			out = append(out, name)
		}
	}
	return out
}

// CallerNames returns the caller placeholders the template writes, as
// "caller.id", "caller.kind" or "caller.claim.NAME".
func (t Template) CallerNames() []string {
	var out []string
	for _, p := range t.pieces {
		if p.kind == Param && strings.HasPrefix(p.text, "caller.") {
			out = append(out, p.text)
		}
	}
	return out
}

// UsesCaller reports whether the template writes the caller.
func (t Template) UsesCaller() bool {
	for _, p := range t.pieces {
		if p.kind == Param && strings.HasPrefix(p.text, "caller.") {
			return true
		}
	}
	return false
}

// HasSecret reports whether the template contains a secret.
func (t Template) HasSecret() bool {
	for _, p := range t.pieces {
		if p.kind == Secret {
			return true
		}
	}
	return false
}

// Secrets returns the names of the secrets the template uses.
func (t Template) Secrets() []string {
	var out []string
	for _, p := range t.pieces {
		if p.kind == Secret {
			out = append(out, p.text)
		}
	}
	return out
}

// Expand appends the expansion to dst, secrets included: call it only to
// build the outbound request. param returns a path parameter's value (or
// the caller's, for a name that starts with "caller.");
// escape, if not nil, is applied to parameter and secret values (for
// example url.PathEscape inside a URL path).
func (t Template) Expand(dst []byte, param func(name string) string, escape func(string) string) []byte {
	for _, p := range t.pieces {
		switch p.kind {
		case Literal:
			dst = append(dst, p.text...)
		case Param:
			v := param(p.text)
			if escape != nil {
				v = escape(v)
			}
			dst = append(dst, v...)
		case Secret:
			v := p.secret.Reveal()
			if escape != nil {
				v = escape(v)
			}
			dst = append(dst, v...)
		}
	}
	return dst
}
