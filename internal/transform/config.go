package transform

import (
	"fmt"
	"strings"
	"time"
)

// DefaultTimeout bounds an evaluation when config.Transform.Timeout is
// zero. A body mapping runs in microseconds; a tenth of a second only ever
// stops a loop.
const DefaultTimeout = 100 * time.Millisecond

// DefaultMaxBytes bounds input, output and intermediate values when
// config.Transform.MaxBytes is zero.
const DefaultMaxBytes = 1 << 20

// Error is one problem found while compiling a config.Transform. Path is
// relative to the transform block (`request`, `response`, `method`), so the
// config loader can prefix it with `FILE:LINE: routes[3].transform.`.
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

// Errors is every problem found in one config.Transform, reported together.
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
