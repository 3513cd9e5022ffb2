package transform

import (
	"fmt"
	"strings"
	"time"
)

// Config is a route's `transform:` block as written in keyward.yaml:
//
//	transform:
//	  request:  '{to: "team@example.com", from: .email, text: .message, api_key: $secret.mailer}'
//	  response: '{sent: (.status == "queued")}'
//	  method: POST                     # upstream method; default: the client's
//	  content_type: application/json   # upstream Content-Type; default below
//	  non_json: pass                   # or reject
//	  timeout: 100ms
//	  max_bytes: 1048576
//
// The config loader decodes it; [Compile] turns it into a [Transform].
type Config struct {
	// Request is a jq expression mapping the client's JSON body to the
	// upstream's. It may read $params (path parameters), $query (allowed
	// query parameters, first value each), $stage (stage variables) and
	// $secret.NAME. Empty means the body is forwarded unchanged.
	Request string `yaml:"request" json:"request,omitempty"`

	// Response is a jq expression mapping the upstream's JSON body to the
	// client's. It may read $params, $query and $stage but never $secret:
	// its output goes to the client. Empty means no response transform.
	Response string `yaml:"response" json:"response,omitempty"`

	// Method overrides the upstream request method (a GET route that POSTs
	// a JSON body upstream). Empty keeps the client's method.
	Method string `yaml:"method" json:"method,omitempty"`

	// ContentType overrides the upstream request's Content-Type. Empty
	// means "application/json" when Request is set, else unchanged.
	ContentType string `yaml:"content_type" json:"content_type,omitempty"`

	// NonJSON says what happens to a body that is not JSON (by Content-Type
	// or by content): "pass" (the default) forwards it untouched, "reject"
	// refuses it with a typed error.
	NonJSON string `yaml:"non_json" json:"non_json,omitempty"`

	// Timeout bounds one evaluation. Zero means DefaultTimeout.
	Timeout time.Duration `yaml:"timeout" json:"timeout,omitempty"`

	// MaxBytes bounds the JSON input and output of one evaluation, and the
	// size of any string, array or value the expression builds on the way.
	// Zero means DefaultMaxBytes.
	MaxBytes int64 `yaml:"max_bytes" json:"max_bytes,omitempty"`
}

// DefaultTimeout bounds an evaluation when Config.Timeout is zero. A body
// mapping runs in microseconds; a tenth of a second only ever stops a loop.
const DefaultTimeout = 100 * time.Millisecond

// DefaultMaxBytes bounds input, output and intermediate values when
// Config.MaxBytes is zero.
const DefaultMaxBytes = 1 << 20

// Error is one problem found while compiling a Config. Path is relative to
// the transform block (`request`, `response`, `method`), so the config
// loader can prefix it with `FILE:LINE: routes[3].transform.`.
type Error struct {
	Path string
	// Offset is the byte offset in the expression where a syntax error was
	// found, or -1 when the problem has no position.
	Offset int
	Msg    string
}

// Error formats the problem as "path: message", with the offset of a syntax
// error when known.
func (e *Error) Error() string {
	if e.Offset >= 0 {
		return fmt.Sprintf("%s: at offset %d: %s", e.Path, e.Offset, e.Msg)
	}
	return e.Path + ": " + e.Msg
}

// Errors is every problem found in one Config, reported together.
type Errors []*Error

// Error joins the problems, one per line.
func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

func (es *Errors) add(path string, offset int, format string, args ...any) {
	*es = append(*es, &Error{Path: path, Offset: offset, Msg: fmt.Sprintf(format, args...)})
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
