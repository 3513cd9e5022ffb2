// Package cors answers CORS for the gateway: preflights without touching
// the upstream, and the Access-Control-* headers on every other response,
// errors included, so a page can read why a call failed.
//
// Unlike permissive libraries, nothing is allowed by default, an origin is
// never reflected unless it matched the configuration, and a wildcard is
// anchored to whole subdomain labels.
package cors

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Options is a CORS policy in user terms; New compiles it.
type Options struct {
	// AllowOrigins are exact origins, "https://*.example.com" wildcards or
	// "*" (any origin, never with credentials).
	AllowOrigins []string
	// AllowMethods are the methods a preflight may ask for.
	AllowMethods []string
	// AllowHeaders are request headers a preflight may ask for; "*" allows
	// any (without credentials).
	AllowHeaders []string
	// ExposeHeaders are response headers a page may read.
	ExposeHeaders []string
	// AllowCredentials sends Access-Control-Allow-Credentials: true.
	AllowCredentials bool
	// MaxAge is how long a browser may cache a preflight; 0 omits it.
	MaxAge time.Duration
	// RejectOtherOrigins refuses requests whose Origin is not allowed.
	RejectOtherOrigins bool
}

// Policy is a compiled CORS policy. A nil *Policy means CORS is off: no
// headers are added and preflights are refused.
type Policy struct {
	exact      map[string][]string // origin -> prebuilt header value
	wildcards  []wildcard
	any        bool
	methods    []string
	headers    map[string]bool
	anyHeader  bool
	allowMeth  []string // prebuilt header values
	expose     []string
	maxAge     []string
	credential bool
	reject     bool
}

type wildcard struct{ scheme, suffix string } // suffix like ".example.com:8443"

// Prebuilt header values; their slices have len == cap, so a later
// Header.Add copies instead of writing into them.
var (
	varyOrigin    = []string{"Origin"}
	varyPreflight = []string{"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}
	trueValue     = []string{"true"}
	starValue     = []string{"*"}
)

// safelisted are request headers a browser may send without asking; a
// preflight may still list them, so they are always allowed.
var safelisted = []string{"accept", "accept-language", "content-language", "content-type", "range"}

// New compiles o. Every problem is reported, joined.
func New(o Options) (*Policy, error) {
	p := &Policy{exact: map[string][]string{}, headers: map[string]bool{},
		credential: o.AllowCredentials, reject: o.RejectOtherOrigins}
	var errs []error
	for i, origin := range o.AllowOrigins {
		if err := p.addOrigin(origin); err != nil {
			errs = append(errs, fmt.Errorf("allow_origins[%d]: %w", i, err))
		}
	}
	for _, m := range o.AllowMethods {
		m = strings.ToUpper(strings.TrimSpace(m))
		if !slices.Contains(p.methods, m) {
			p.methods = append(p.methods, m)
		}
	}
	for _, h := range safelisted {
		p.headers[h] = true
	}
	for i, h := range o.AllowHeaders {
		h = strings.ToLower(strings.TrimSpace(h))
		switch {
		case h == "*":
			p.anyHeader = true
		case !validToken(h):
			errs = append(errs, fmt.Errorf("allow_headers[%d]: %q is not a header name", i, h))
		default:
			p.headers[h] = true
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	p.allowMeth = []string{strings.Join(p.methods, ", ")}
	if len(o.ExposeHeaders) > 0 {
		p.expose = []string{strings.Join(o.ExposeHeaders, ", ")}
	}
	if o.MaxAge > 0 {
		p.maxAge = []string{strconv.Itoa(int(o.MaxAge / time.Second))}
	}
	return p, nil
}

func (p *Policy) addOrigin(o string) error {
	if o == "*" {
		p.any = true
		return nil
	}
	if o == "null" {
		return errors.New(`"null" is the origin of sandboxed frames and local files; any page can claim it, so it cannot be allowed`)
	}
	wild := false
	probe := o
	if scheme, rest, ok := strings.Cut(o, "://*."); ok {
		wild = true
		probe = scheme + "://x." + rest
	}
	u, err := url.Parse(probe)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return fmt.Errorf("%q is not an origin like https://app.example.com", o)
	}
	if u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q: an origin is scheme://host[:port] with no path (remove the trailing part)", o)
	}
	if strings.Contains(u.Host, "*") {
		return fmt.Errorf("%q: a wildcard must be the whole leftmost label, as in https://*.example.com", o)
	}
	lower := strings.ToLower(o)
	if wild {
		scheme, rest, _ := strings.Cut(lower, "://*")
		p.wildcards = append(p.wildcards, wildcard{scheme: scheme + "://", suffix: rest})
		return nil
	}
	p.exact[lower] = []string{lower}
	return nil
}

// Allowed reports whether origin may read responses.
func (p *Policy) Allowed(origin string) bool {
	_, ok := p.match(origin)
	return ok
}

// match returns the Access-Control-Allow-Origin value for origin.
func (p *Policy) match(origin string) ([]string, bool) {
	if p == nil || origin == "" {
		return nil, false
	}
	if v, ok := p.exact[origin]; ok {
		return v, true
	}
	if p.any && !p.credential {
		return starValue, true
	}
	lower := strings.ToLower(origin)
	if v, ok := p.exact[lower]; ok {
		return v, true
	}
	for _, w := range p.wildcards {
		if sub, ok := strings.CutPrefix(lower, w.scheme); ok {
			if label, ok := strings.CutSuffix(sub, w.suffix); ok && validLabels(label) {
				return []string{origin}, true
			}
		}
	}
	return nil, false
}

// validLabels reports whether s is one or more DNS labels, so that
// "https://*.example.com" matches "https://a.b.example.com" but never
// "https://evil.com/.example.com" or "https://a:1@.example.com".
func validLabels(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// IsPreflight reports whether r is a CORS preflight.
func IsPreflight(r *http.Request) bool {
	return r.Method == http.MethodOptions && r.Header.Get("Origin") != "" &&
		r.Header.Get("Access-Control-Request-Method") != ""
}

// Refusal is why a request was refused; the gateway turns it into a JSON
// error with Code as the stable error code.
type Refusal struct {
	Code, Message string
}

// Preflight answers a preflight into h. On success the caller writes 204;
// otherwise it writes 403 with the Refusal. allowed are the route's
// methods, used when the policy lists none.
func (p *Policy) Preflight(h http.Header, r *http.Request, allowed []string) *Refusal {
	origin := r.Header.Get("Origin")
	h["Vary"] = varyPreflight
	acao, ok := p.match(origin)
	if !ok {
		return &Refusal{"cors_origin_not_allowed", "origin " + strconv.Quote(origin) + " is not allowed"}
	}
	methods, methodsValue := p.methods, p.allowMeth
	if len(methods) == 0 {
		methods, methodsValue = allowed, []string{strings.Join(allowed, ", ")}
	}
	want := r.Header.Get("Access-Control-Request-Method")
	if !slices.Contains(methods, want) || !slices.Contains(allowed, want) {
		return &Refusal{"cors_method_not_allowed", "method " + strconv.Quote(want) + " is not allowed"}
	}
	reqHeaders := r.Header.Values("Access-Control-Request-Headers")
	for _, line := range reqHeaders {
		for name := range strings.SplitSeq(line, ",") {
			name = strings.ToLower(strings.TrimSpace(name))
			if name == "" {
				continue
			}
			if !p.headers[name] && !(p.anyHeader && !p.credential) {
				return &Refusal{"cors_header_not_allowed", "request header " + strconv.Quote(name) + " is not allowed"}
			}
		}
	}
	h["Access-Control-Allow-Origin"] = acao
	h["Access-Control-Allow-Methods"] = methodsValue
	if len(reqHeaders) > 0 {
		h["Access-Control-Allow-Headers"] = []string{strings.Join(reqHeaders, ", ")}
	}
	if p.maxAge != nil {
		h["Access-Control-Max-Age"] = p.maxAge
	}
	if p.credential {
		h["Access-Control-Allow-Credentials"] = trueValue
	}
	return nil
}

// Actual adds the headers for a non-preflight response to h. It returns a
// Refusal when the origin is not allowed and the policy rejects such
// requests; the caller then answers 403 without calling the upstream.
func (p *Policy) Actual(h http.Header, origin string) *Refusal {
	if p == nil {
		return nil
	}
	h["Vary"] = varyOrigin
	if origin == "" {
		return nil
	}
	acao, ok := p.match(origin)
	if !ok {
		if p.reject {
			return &Refusal{"cors_origin_not_allowed", "origin " + strconv.Quote(origin) + " is not allowed"}
		}
		return nil
	}
	h["Access-Control-Allow-Origin"] = acao
	if p.expose != nil {
		h["Access-Control-Expose-Headers"] = p.expose
	}
	if p.credential {
		h["Access-Control-Allow-Credentials"] = trueValue
	}
	return nil
}

// AllowsAnyOrigin reports whether the policy contains "*".
func (p *Policy) AllowsAnyOrigin() bool { return p != nil && p.any }

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// SameOrigin reports whether origin is the gateway's own origin as r
// reached it: a page served from the gateway's host needs no CORS policy.
// The scheme is not compared: behind a TLS-terminating proxy a request
// arrives over http while the page's origin says https, and both name
// the same host.
func SameOrigin(origin string, r *http.Request) bool {
	if origin == "" || r.Host == "" {
		return false
	}
	rest, ok := strings.CutPrefix(origin, "https://")
	if !ok {
		if rest, ok = strings.CutPrefix(origin, "http://"); !ok {
			return false
		}
	}
	return strings.EqualFold(rest, r.Host)
}
