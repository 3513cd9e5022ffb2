package config

import (
	"fmt"
	"strings"
)

// BlockError is one problem found while compiling a block of a route
// that a package of its own checks (validate, llm). Path is relative to
// the block ("query.page.pattern", "prices.gpt-4o.input"), so the
// gateway can prefix it with "FILE:LINE: routes[3].validate.".
type BlockError struct {
	// Path is the field's path inside the block.
	Path string
	// Msg says what is wrong with it.
	Msg string
}

// Error formats the problem as "path: message".
func (e *BlockError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// BlockErrors is every problem found in one block, reported together so
// that a user fixes them in one pass rather than one per run of
// `keyward check`.
type BlockErrors []*BlockError

// Add appends a problem at path.
func (es *BlockErrors) Add(path, format string, args ...any) {
	*es = append(*es, &BlockError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Error joins the problems, one per line.
func (es BlockErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Unwrap lists the problems, so errors.As and callers that walk joined
// errors see each one.
func (es BlockErrors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}
