// Package httpsyntax holds the RFC 9110 syntax checks that the upstream
// client, the HTTP/1.x server, the gateway and the cache share: tokens
// (methods, header names), comma-separated token lists (Connection, TE)
// and Host values.
package httpsyntax

import "strings"

// IsToken reports whether s is an RFC 9110 §5.6.2 token: what a method
// and a header name must be.
func IsToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenChar[s[i]] {
			return false
		}
	}
	return true
}

var tokenChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// HasToken reports whether a comma-separated list, over one or more header
// values, holds token (compared without regard to case), as in
// "Connection: keep-alive, close".
func HasToken(values []string, token string) bool {
	for _, v := range values {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.Trim(f, " \t"), token) {
				return true
			}
		}
	}
	return false
}

// ValidHost reports whether s may be the value of a Host header: it uses
// only the bytes of an RFC 3986 §3.2.2 host and port (letters, digits,
// unreserved and sub-delims, ":" and the brackets of an IP literal, "%"
// of an escape or an IPv6 zone), the set net/http allows (httpguts's
// ValidHostHeader), so the server and the client agree with it and with
// each other. Anything else would let a Host value end its line early
// (CR, LF, NUL), split differently in another parser (space, "\\") or name
// another target ("/", "?", "#", "@"). The empty string is valid: HTTP/1.0
// requests may omit Host, and a caller that needs one checks for it.
func ValidHost(s string) bool {
	for i := 0; i < len(s); i++ {
		if !hostChar[s[i]] {
			return false
		}
	}
	return true
}

var hostChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "-._~!$&'()*+,;=:[]%" {
		t[c] = true
	}
	return t
}()
