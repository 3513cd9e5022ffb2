package validate

import (
	"fmt"
	"strings"
)

// Config is a route's `validate:` block as written in keyward.yaml. It is
// decoded by the config loader and compiled once by [Compile]; the request
// path only ever sees the compiled [Validator].
//
//	validate:
//	  query:
//	    page:  { type: integer, min: 1, max: 100 }
//	    sort:  { enum: [created, updated] }
//	  headers:
//	    X-Request-Id: { pattern: "^[a-f0-9-]{36}$" }
//	  body: schemas/contact.json      # or an inline schema mapping
//	  content_types: [application/json]
//	  max_body_bytes: 65536
type Config struct {
	// Query holds one rule per query parameter name. Parameters without a
	// rule are not checked here (the route's query allowlist decides whether
	// they reach the upstream).
	Query map[string]Param `yaml:"query" json:"query,omitempty"`

	// Headers holds one rule per request header name; names are
	// case-insensitive (RFC 9110, section 5.1).
	Headers map[string]Param `yaml:"headers" json:"headers,omitempty"`

	// Body is a JSON Schema for the request body: either a string, the path
	// of a schema file relative to the config file's directory, or an inline
	// schema (a YAML mapping). Nil means the body is not checked against a
	// schema. Drafts 2020-12 (the default when `$schema` is absent) and 7
	// are supported; `$ref` may only point at local files.
	Body any `yaml:"body" json:"body,omitempty"`

	// ContentTypes lists the media types a request body may have, without
	// parameters ("application/json", "text/*"). Empty means: when Body is
	// set, application/json and any "+json" type; otherwise any type.
	ContentTypes []string `yaml:"content_types" json:"content_types,omitempty"`

	// MaxBodyBytes bounds the request body. Zero means DefaultMaxBodyBytes;
	// a negative value is a config error. It is not a YAML field: the
	// gateway sets it from the route's max_body, so one knob bounds bodies.
	MaxBodyBytes int64 `yaml:"-" json:"-"`
}

// DefaultMaxBodyBytes is the body bound used when Config.MaxBodyBytes is
// zero: enough for any form, small enough that schema validation stays cheap.
const DefaultMaxBodyBytes = 1 << 20

// Param is the rule for one query parameter or header.
type Param struct {
	// Type is "string" (the default), "integer", "number" or "boolean".
	// Booleans accept exactly "true" and "false".
	Type string `yaml:"type" json:"type,omitempty"`

	// Pattern is a Go (RE2) regular expression the raw value must match. It
	// is not anchored implicitly, as in JSON Schema; write ^ and $.
	Pattern string `yaml:"pattern" json:"pattern,omitempty"`

	// Enum lists the accepted values; empty means any value. Entries are
	// compared as the parameter's Type (so 1 and "1" are the same integer).
	Enum []any `yaml:"enum" json:"enum,omitempty"`

	// Required makes a missing parameter a violation. The default is false.
	Required bool `yaml:"required" json:"required,omitempty"`

	// Min and Max bound the length in characters of a string, or the value
	// of an integer or number. Nil means unbounded.
	Min *float64 `yaml:"min" json:"min,omitempty"`
	Max *float64 `yaml:"max" json:"max,omitempty"`

	// Multiple allows the parameter to be given more than once
	// (`?tag=a&tag=b`); each value is checked. The default is false because
	// a repeated parameter is a classic way to make the gateway and the
	// upstream read different values (HTTP parameter pollution).
	Multiple bool `yaml:"multiple" json:"multiple,omitempty"`
}

// Error is one problem found while compiling a Config. Path is relative to
// the validate block (`query.page.pattern`, `body`), so the config loader can
// prefix it with `FILE:LINE: routes[3].validate.`.
type Error struct {
	Path string
	Msg  string
}

// Error formats the problem as "path: message".
func (e *Error) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Errors is every problem found in one Config, reported together so a user
// fixes them in one pass rather than one per run of `keyward check`.
type Errors []*Error

// Error joins the problems, one per line.
func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

func (es *Errors) add(path, format string, args ...any) {
	*es = append(*es, &Error{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Unwrap lists the problems, so errors.As and callers that walk joined
// errors see each one.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}
