package route

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/keyward/keyward/internal/placeholder"
)

// Upstream is a compiled upstream URL template. Scheme and host are fixed
// at compile time; only the path has placeholders, and every expansion is
// checked to stay under the static path prefix.
type Upstream struct {
	// Scheme and Host are the target, fixed when the config is compiled.
	Scheme, Host string
	// RawQuery is the template's literal query, if any.
	RawQuery string
	path     placeholder.Template
	prefix   string // escaped static path prefix, ending in "/" if it has one
	static   string // the whole escaped path when it has no parameters
	staticD  string // static, decoded
	src      string
}

// ErrEscape is returned when an expansion would leave the upstream prefix.
// CheckPath already refuses such input, so this is a second wall.
var ErrEscape = errors.New("expanded upstream path leaves the configured prefix")

// CompileUpstream compiles s with stage variables resolved by r. Path
// parameters and secrets may appear only in the path: the scheme, host and
// port can never depend on a request.
func CompileUpstream(s string, r placeholder.Resolver) (*Upstream, error) {
	parts, err := placeholder.Parse(s)
	if err != nil {
		return nil, err
	}
	// Resolve stage variables first: they may supply the scheme and host.
	var flat strings.Builder
	for _, p := range parts {
		switch p.Kind {
		case placeholder.Stage:
			if r.Stage == nil {
				return nil, fmt.Errorf("{stage.%s} is not allowed here", p.Text)
			}
			v, ok := r.Stage(p.Text)
			if !ok {
				return nil, fmt.Errorf("unknown stage variable {stage.%s}", p.Text)
			}
			if strings.ContainsAny(v, "{}") {
				return nil, fmt.Errorf("stage variable %s may not contain braces", p.Text)
			}
			flat.WriteString(v)
		case placeholder.Literal:
			flat.WriteString(p.Text)
		case placeholder.Param:
			flat.WriteString("{" + p.Text + "}")
		case placeholder.Secret:
			flat.WriteString("{secret." + p.Text + "}")
		}
	}
	full := flat.String()
	scheme, afterScheme, ok := strings.Cut(full, "://")
	if !ok {
		return nil, fmt.Errorf("upstream %q must be an absolute http:// or https:// URL", full)
	}
	authority, pathAndQuery := afterScheme, ""
	if i := strings.IndexAny(afterScheme, "/?#"); i >= 0 {
		authority, pathAndQuery = afterScheme[:i], afterScheme[i:]
	}
	if strings.ContainsAny(scheme+authority, "{}") {
		return nil, fmt.Errorf("upstream %q: placeholders may only appear in the path; the scheme and host are fixed", full)
	}
	u, err := url.Parse(scheme + "://" + authority)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %v", full, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("upstream %q: scheme must be http or https", full)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("upstream %q has no host", full)
	case u.User != nil:
		return nil, fmt.Errorf("upstream %q: credentials in the URL are not allowed; use headers.set", full)
	}
	if strings.Contains(pathAndQuery, "#") {
		return nil, fmt.Errorf("upstream %q: a fragment is never sent; remove it", full)
	}
	path, query, _ := strings.Cut(pathAndQuery, "?")
	if strings.ContainsAny(query, "{}") {
		return nil, fmt.Errorf("upstream %q: put placeholders in query.set, not in the URL's query", full)
	}
	if path == "" {
		path = "/"
	}
	if _, err := url.ParseQuery(query); err != nil {
		return nil, fmt.Errorf("upstream %q: bad query: %v", full, err)
	}
	tpl, err := placeholder.Compile(path, placeholder.Resolver{Secret: r.Secret, Param: r.Param})
	if err != nil {
		return nil, err
	}
	// src shows stage variables resolved and secrets by name only.
	up := &Upstream{Scheme: u.Scheme, Host: u.Host, RawQuery: query, path: tpl, src: strings.TrimSuffix(full, "?")}
	up.prefix = staticPrefix(path)
	if tpl.Static() && !tpl.HasSecret() {
		up.static = path
		if up.staticD, err = url.PathUnescape(path); err != nil {
			return nil, fmt.Errorf("upstream %q: bad path: %v", full, err)
		}
	}
	if err := CheckPath(up.prefix); err != nil && up.prefix != "" {
		return nil, fmt.Errorf("upstream %q: %v", full, err)
	}
	return up, nil
}

// staticPrefix is the path up to the segment holding the first
// placeholder: the part no request can change.
func staticPrefix(path string) string {
	i := strings.IndexByte(path, '{')
	if i < 0 {
		return path
	}
	return path[:strings.LastIndexByte(path[:i], '/')+1]
}

// String returns the template with stage variables resolved; secrets and
// parameters show as placeholders.
func (u *Upstream) String() string { return u.src }

// Template returns the compiled path template.
func (u *Upstream) Template() placeholder.Template { return u.path }

// Path expands the path for params, returning the escaped form (for
// URL.RawPath) and the decoded form (for URL.Path).
func (u *Upstream) Path(ps *Params) (escaped, decoded string, err error) {
	if u.static != "" {
		return u.static, u.staticD, nil
	}
	get := ps.Get
	esc := string(u.path.Expand(nil, get, escapeParam))
	dec, derr := url.PathUnescape(esc)
	if derr != nil {
		return "", "", fmt.Errorf("%w: %v", ErrEscape, derr)
	}
	if !strings.HasPrefix(esc, u.prefix) {
		return "", "", ErrEscape
	}
	if err := CheckPath(esc); err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrEscape, err)
	}
	return esc, dec, nil
}

// escapeParam escapes one value for a URL path. A rest value keeps its "/"
// separators; each of its segments was checked by CheckPath.
func escapeParam(v string) string {
	if !strings.Contains(v, "/") {
		return url.PathEscape(v)
	}
	segs := strings.Split(v, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}
