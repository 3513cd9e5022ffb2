package config

import (
	"errors"
	"fmt"
	"strings"
)

// syntaxError turns the YAML parser's error into problems that say what
// to do, on the line to fix. The parser reports where it gave up, which
// is often after the mistake: a quote or a brace left open lines above, a
// line indented too far reported on the line before it. A few mistakes
// are common enough to look for by line; anything else is the parser's
// own message at its line.
func (f *File) syntaxError(data []byte, err error) error {
	perr := f.yamlError(err).(*Error)
	lines := strings.Split(string(data), "\n")
	for i := range lines {
		lines[i] = strings.TrimSuffix(lines[i], "\r")
	}
	at := func(line int, format string, args ...any) *Error {
		return &Error{File: f.Name, Line: line, Msg: fmt.Sprintf(format, args...)}
	}

	// Tabs: YAML indents with spaces only. Every such line is reported,
	// since the parser stops at the first.
	var tabs []error
	for i, l := range lines {
		indent := l[:len(l)-len(strings.TrimLeft(l, " \t"))]
		if strings.Contains(indent, "\t") && strings.TrimSpace(l) != "" {
			tabs = append(tabs, at(i+1, "a tab in the indentation: YAML indents with spaces only; replace the tab with spaces"))
		}
	}
	if len(tabs) > 0 && (strings.Contains(perr.Msg, "'\t'") || strings.Contains(perr.Msg, "tab") || tabLine(lines, perr.Line)) {
		return errors.Join(tabs...)
	}

	last := perr.Line
	if last <= 0 || last > len(lines) {
		last = len(lines)
	}
	for i := 0; i < last; i++ {
		key, value, ok := keyValue(lines[i])
		if !ok || value == "" {
			continue
		}
		switch value[0] {
		case '{':
			end := closing(value)
			if end < 0 {
				if i+1 < last {
					return at(i+1, "the { opened here is not closed on this line: close it with }, or quote the value if it is text")
				}
				continue
			}
			if rest := strings.TrimSpace(stripComment(value[end+1:])); rest != "" {
				// X-Api-Key: {secret.gh}/x
				return at(i+1, "a value that starts with { is read as a YAML mapping: quote it: %s: %q", key, strings.TrimSpace(stripComment(value)))
			}
		case '[':
			if closing(value) < 0 && i+1 < last {
				return at(i+1, "the [ opened here is not closed on this line: close it with ]")
			}
		case '"', '\'':
			if !closedQuote(value) && i+1 < last {
				return at(i+1, "the quote opened here is not closed: end the value with %c", value[0])
			}
		}
	}

	if strings.Contains(perr.Msg, "value is not allowed in this context") || strings.Contains(perr.Msg, "could not find expected ':'") {
		return f.indentError(lines, perr)
	}
	return perr
}

// tabLine reports whether line n (1-based) is indented with a tab.
func tabLine(lines []string, n int) bool {
	if n < 1 || n > len(lines) {
		return false
	}
	l := lines[n-1]
	return strings.Contains(l[:len(l)-len(strings.TrimLeft(l, " \t"))], "\t")
}

// indentError explains a line whose indentation does not fit the lines
// above it. The parser reports "mapping value is not allowed" on a key
// whose value is followed by a line indented further (it reads both as
// one multi-line value): the line to fix is that next one.
func (f *File) indentError(lines []string, perr *Error) error {
	n := perr.Line // 1-based
	if n < 1 || n > len(lines) {
		return perr
	}
	if next := nextContent(lines, n); next > 0 {
		if _, v, ok := keyValue(lines[n-1]); ok && v != "" && indentOf(lines[next-1]) > indentOf(lines[n-1]) && strings.Contains(lines[next-1], ":") {
			k, _, _ := keyValue(lines[n-1])
			return &Error{File: f.Name, Line: next, Msg: fmt.Sprintf(
				"this line is indented more than %q on line %d: keys of one mapping start in the same column (%d spaces)", k+":", n, keyColumn(lines[n-1]))}
		}
	}
	prev := prevContent(lines, n)
	if prev == 0 {
		return perr
	}
	k, _, _ := keyValue(lines[prev-1])
	if k == "" {
		return perr
	}
	return &Error{File: f.Name, Line: n, Msg: fmt.Sprintf(
		"this line's indentation (%d spaces) does not line up with %q on line %d (%d spaces): keys of one mapping start in the same column",
		indentOf(lines[n-1]), k+":", prev, keyColumn(lines[prev-1]))}
}

func nextContent(lines []string, n int) int {
	for i := n; i < len(lines); i++ {
		if t := strings.TrimSpace(lines[i]); t != "" && !strings.HasPrefix(t, "#") {
			return i + 1
		}
	}
	return 0
}

func prevContent(lines []string, n int) int {
	for i := n - 2; i >= 0; i-- {
		if t := strings.TrimSpace(lines[i]); t != "" && !strings.HasPrefix(t, "#") {
			return i + 1
		}
	}
	return 0
}

func indentOf(l string) int { return len(l) - len(strings.TrimLeft(l, " ")) }

// keyColumn is where a line's key starts: after "- " for a list item.
func keyColumn(l string) int {
	c := indentOf(l)
	rest := l[c:]
	for strings.HasPrefix(rest, "- ") {
		trimmed := strings.TrimLeft(rest[2:], " ")
		c += len(rest) - len(trimmed)
		rest = trimmed
	}
	return c
}

// keyValue splits a block mapping line "  - key: value # c" into key and
// value (without the comment). ok is false for lines that are not a
// plain "key: value".
func keyValue(l string) (key, value string, ok bool) {
	t := strings.TrimSpace(l)
	for strings.HasPrefix(t, "- ") {
		t = strings.TrimSpace(t[2:])
	}
	if t == "" || strings.ContainsAny(t[:1], "#{[\"'&*!|>") {
		return "", "", false
	}
	i := strings.Index(t, ": ")
	if i < 0 {
		if strings.HasSuffix(t, ":") {
			return strings.TrimSuffix(t, ":"), "", true
		}
		return "", "", false
	}
	return t[:i], strings.TrimSpace(t[i+2:]), true
}

// closing returns the index of the bracket that closes s[0] ('{' or
// '['), skipping quoted text, or -1.
func closing(s string) int {
	depth := 0
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote == '"' && c == '\\':
			i++
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			depth--
			if depth == 0 {
				return i
			}
		case c == '#' && i > 0 && s[i-1] == ' ':
			return -1
		}
	}
	return -1
}

// closedQuote reports whether a value starting with a quote ends it on
// the same line.
func closedQuote(s string) bool {
	q := s[0]
	for i := 1; i < len(s); i++ {
		switch {
		case q == '"' && s[i] == '\\':
			i++
		case s[i] == q:
			if q == '\'' && i+1 < len(s) && s[i+1] == '\'' {
				i++ // '' is a quote inside single quotes
				continue
			}
			return true
		}
	}
	return false
}

func stripComment(s string) string {
	if i := strings.Index(s, " #"); i >= 0 {
		return s[:i]
	}
	return s
}
