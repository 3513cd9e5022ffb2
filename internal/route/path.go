// Package route matches request paths against route patterns and builds
// upstream URLs from templates.
//
// Patterns use the syntax of Go's ServeMux ({name} is one segment, a final
// {name...} is the rest), but matching is keyward's own: ServeMux answers
// unclean paths and missing trailing slashes with redirects and writes
// plain-text 404/405 bodies, while a gateway must answer JSON and must
// refuse, not reinterpret, an ambiguous path.
package route

import (
	"errors"
	"strings"
)

// ErrBadPath is wrapped by every error CheckPath returns.
var ErrBadPath = errors.New("ambiguous or malformed path")

// maxDecode is how many rounds of percent-decoding CheckPath looks through.
// An upstream or a framework behind it may decode again, so a segment that
// becomes a dot segment or a slash after any round is refused.
const maxDecode = 3

// CheckPath enforces keyward's path policy on an escaped request path:
//
//   - it starts with "/" and has no empty segment except a trailing one;
//   - no segment is, or decodes in up to three rounds to, "." or "..";
//   - no segment contains, or decodes to something containing, "/", "\",
//     a control character, or an invalid percent escape.
//
// Everything else is matched as written (case-sensitive; ";" is an
// ordinary character). Refusing is safer than normalising: a normalisation
// that differs from the upstream's is how path-confusion bypasses happen.
func CheckPath(escaped string) error {
	if escaped == "" || escaped[0] != '/' {
		return errors.Join(ErrBadPath, errors.New("path must start with /"))
	}
	rest := escaped[1:]
	for rest != "" {
		seg := rest
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			seg, rest = rest[:i], rest[i+1:]
			if seg == "" {
				return errors.Join(ErrBadPath, errors.New("empty path segment"))
			}
		} else {
			rest = ""
		}
		if err := checkSegment(seg); err != nil {
			return err
		}
	}
	return nil
}

func checkSegment(seg string) error {
	for round := 0; ; round++ {
		if seg == "." || seg == ".." {
			return errors.Join(ErrBadPath, errors.New("dot segment"))
		}
		hasPct := false
		for i := 0; i < len(seg); i++ {
			switch c := seg[i]; {
			case c == '\\':
				return errors.Join(ErrBadPath, errors.New("backslash in path"))
			case c < 0x20 || c == 0x7f:
				return errors.Join(ErrBadPath, errors.New("control character in path"))
			case c == '/' && round > 0:
				return errors.Join(ErrBadPath, errors.New("encoded slash in path"))
			case c == '%':
				hasPct = true
			}
		}
		if !hasPct || round == maxDecode {
			return nil
		}
		dec, ok := unescape(seg)
		if !ok {
			if round == 0 {
				return errors.Join(ErrBadPath, errors.New("invalid percent escape"))
			}
			return nil // literal '%' text after a decode: fine, it is data
		}
		seg = dec
	}
}

// unescape percent-decodes s; ok is false for an invalid escape.
func unescape(s string) (string, bool) {
	n := strings.Count(s, "%")
	if n == 0 {
		return s, true
	}
	// An invalid escape ("%", "%%") can make len(s)-2*n negative.
	b := make([]byte, 0, max(len(s)-2*n, 0))
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b = append(b, s[i])
			continue
		}
		if i+2 >= len(s) || !ishex(s[i+1]) || !ishex(s[i+2]) {
			return "", false
		}
		b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
		i += 2
	}
	return string(b), true
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}
