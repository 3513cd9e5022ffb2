// Package httpsyntax holds the RFC 9110 syntax checks that the upstream
// client, the HTTP/1.x server, the gateway and the cache share: tokens
// (methods, header names) and comma-separated token lists (Connection,
// TE).
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
