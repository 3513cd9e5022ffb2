package caller

import (
	"fmt"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/keyward/keyward/internal/httpsyntax"
)

// Source is where a credential is read from a request: a header (the
// Bearer scheme when it is Authorization), a cookie or a query parameter.
type Source struct {
	kind string // "header", "cookie" or "query"
	name string // canonical for headers
}

// Bearer is the default source: `Authorization: Bearer TOKEN`.
var Bearer = Source{kind: "header", name: "Authorization"}

// ParseSource parses "header:NAME", "cookie:NAME" or "query:NAME". An
// empty string is Bearer.
func ParseSource(s string) (Source, error) {
	if s == "" {
		return Bearer, nil
	}
	kind, name, ok := strings.Cut(s, ":")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return Source{}, fmt.Errorf("%q: want header:NAME, cookie:NAME or query:NAME", s)
	}
	switch kind {
	case "header":
		if !httpsyntax.IsToken(name) {
			return Source{}, fmt.Errorf("%q: %q is not a header name", s, name)
		}
		return Header(name), nil
	case "cookie", "query":
		return Source{kind: kind, name: name}, nil
	}
	return Source{}, fmt.Errorf("%q: want header:NAME, cookie:NAME or query:NAME", s)
}

// Header returns the source that reads the header name; Authorization
// means the Bearer scheme, any other header its whole value.
func Header(name string) Source {
	return Source{kind: "header", name: textproto.CanonicalMIMEHeaderKey(name)}
}

// String returns the source in its config form, e.g. "header:Authorization".
func (s Source) String() string { return s.kind + ":" + s.name }

// IsHeader reports whether the source is the header name (any case), so
// the gateway can tell whether a credential header would be forwarded.
func (s Source) IsHeader(name string) bool {
	return s.kind == "header" && strings.EqualFold(s.name, name)
}

// HeaderName returns the header the source reads (canonical), or "" when
// it reads none: a page's CORS preflight must be allowed to send it.
func (s Source) HeaderName() string {
	if s.kind == "header" {
		return s.name
	}
	return ""
}

// Query returns the query parameter the source reads, or "" when it reads
// none: the gateway never forwards it upstream.
func (s Source) Query() string {
	if s.kind == "query" {
		return s.name
	}
	return ""
}

// Token returns the credential in r, and whether there is one. A header
// sent twice, or a query parameter given twice, is ambiguous: ok is true
// and the token empty, so that the verifier refuses it as malformed
// rather than picking one (the gateway and a log reader could disagree
// on which one was checked).
func (s Source) Token(r *http.Request) (token string, ok bool) {
	switch s.kind {
	case "header":
		vs := r.Header[s.name]
		if len(vs) == 0 {
			return "", false
		}
		if len(vs) > 1 {
			return "", true
		}
		v := vs[0]
		if s.name != "Authorization" {
			return strings.TrimSpace(v), true
		}
		// RFC 6750, section 2.1: the scheme is case-insensitive.
		if len(v) < 7 || !strings.EqualFold(v[:7], "Bearer ") {
			return "", true
		}
		return strings.TrimSpace(v[7:]), true
	case "cookie":
		var found string
		n := 0
		for _, c := range r.CookiesNamed(s.name) {
			found = c.Value
			n++
		}
		switch n {
		case 0:
			return "", false
		case 1:
			return found, true
		}
		return "", true
	case "query":
		vs, present := r.URL.Query()[s.name]
		if !present {
			return "", false
		}
		if len(vs) != 1 {
			return "", true
		}
		return vs[0], true
	}
	return "", false
}
