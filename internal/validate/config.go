package validate

import (
	"fmt"
	"strings"
)

// DefaultMaxBodyBytes is the body bound used when
// config.Validate.MaxBodyBytes is zero: enough for any form, small enough
// that schema validation stays cheap.
const DefaultMaxBodyBytes = 1 << 20

// Error is one problem found while compiling a config.Validate. Path is
// relative to the validate block (`query.page.pattern`, `body`), so the
// config loader can prefix it with `FILE:LINE: routes[3].validate.`.
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

// Errors is every problem found in one config.Validate, reported together
// so a user fixes them in one pass rather than one per run of `keyward
// check`.
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
