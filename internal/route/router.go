package route

import (
	"fmt"
	"strings"

	"github.com/keyward/keyward/internal/placeholder"
)

// Pattern is a parsed route path.
type Pattern struct {
	src  string
	segs []segment
	// Names lists the parameter names in order of appearance.
	Names []string
	// Rest is true when the last segment is {name...}.
	Rest bool
}

type segment struct {
	lit   string // literal text (unescaped), when !param
	param bool
}

// ParsePattern parses a path like "/repos/{owner}/{repo}/issues" or
// "/files/{path...}".
func ParsePattern(path string) (*Pattern, error) {
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("path %q must start with /", path)
	}
	p := &Pattern{src: path}
	segs := strings.Split(path[1:], "/")
	seen := map[string]bool{}
	for i, s := range segs {
		if s == "" && i != len(segs)-1 {
			return nil, fmt.Errorf("path %q has an empty segment", path)
		}
		if !strings.ContainsAny(s, "{}") {
			if err := checkSegment(s); err != nil {
				return nil, fmt.Errorf("path %q: %w", path, err)
			}
			lit, _ := unescape(s)
			p.segs = append(p.segs, segment{lit: lit})
			continue
		}
		if s[0] != '{' || s[len(s)-1] != '}' {
			return nil, fmt.Errorf("path %q: a parameter must be a whole segment, as in /{name}", path)
		}
		name := s[1 : len(s)-1]
		if n, ok := strings.CutSuffix(name, "..."); ok {
			if i != len(segs)-1 {
				return nil, fmt.Errorf("path %q: {%s} must be the last segment", path, name)
			}
			name = n
			p.Rest = true
		}
		if !placeholder.ValidName(name) || strings.Contains(name, ".") {
			return nil, fmt.Errorf("path %q: bad parameter name %q", path, name)
		}
		if seen[name] {
			return nil, fmt.Errorf("path %q: parameter {%s} appears twice", path, name)
		}
		seen[name] = true
		p.Names = append(p.Names, name)
		if !p.Rest {
			p.segs = append(p.segs, segment{param: true})
		}
	}
	return p, nil
}

// Prefixed returns the pattern mounted under prefix ("/dev").
func (p *Pattern) Prefixed(prefix string) (*Pattern, error) {
	if prefix == "" || prefix == "/" {
		return p, nil
	}
	pre, err := ParsePattern(strings.TrimSuffix(prefix, "/"))
	if err != nil {
		return nil, err
	}
	if len(pre.Names) > 0 {
		return nil, fmt.Errorf("prefix %q may not contain parameters", prefix)
	}
	q := *p
	q.src = strings.TrimSuffix(prefix, "/") + p.src
	q.segs = append(append([]segment(nil), pre.segs...), p.segs...)
	return &q, nil
}

// String returns the pattern as written.
func (p *Pattern) String() string { return p.src }

// MaxParams bounds the parameters in one pattern, so Params needs no
// allocation. Params lives inline in every request's state, whose size
// sets how often the garbage collector runs: 8 (no API path has more)
// keeps that state in a smaller size class than 16 did.
const MaxParams = 8

// Params holds the values of a match, in the order of Pattern.Names.
// Values are percent-decoded; a rest value joins its segments with "/".
type Params struct {
	names  []string
	values [MaxParams]string
	n      int
}

// Get returns the named value, or "".
func (ps *Params) Get(name string) string {
	for i, n := range ps.names {
		if n == name && i < ps.n {
			return ps.values[i]
		}
	}
	return ""
}

// Len returns the number of values.
func (ps *Params) Len() int { return ps.n }

// At returns the i-th name and value.
func (ps *Params) At(i int) (name, value string) { return ps.names[i], ps.values[i] }

// Router matches paths to values. Build it with Add, then only Match:
// it is read-only and safe for concurrent use after building.
type Router[V any] struct {
	root node[V]
}

type node[V any] struct {
	lits  map[string]*node[V]
	param *node[V]
	end   *leaf[V] // pattern ends here
	rest  *leaf[V] // {name...} at this position
}

type leaf[V any] struct {
	value V
	pat   *Pattern
}

// Add registers p. Two patterns conflict when they have the same shape:
// every request one matches, the other matches too. Otherwise the more
// specific wins per segment: literal, then {param}, then {rest...}.
func (r *Router[V]) Add(p *Pattern, v V) (conflict *Pattern, err error) {
	if len(p.Names) > MaxParams {
		return nil, fmt.Errorf("path %q has more than %d parameters", p.src, MaxParams)
	}
	n := &r.root
	for _, s := range p.segs {
		if s.param {
			if n.param == nil {
				n.param = &node[V]{}
			}
			n = n.param
			continue
		}
		if n.lits == nil {
			n.lits = map[string]*node[V]{}
		}
		c := n.lits[s.lit]
		if c == nil {
			c = &node[V]{}
			n.lits[s.lit] = c
		}
		n = c
	}
	slot := &n.end
	if p.Rest {
		slot = &n.rest
	}
	if *slot != nil {
		return (*slot).pat, fmt.Errorf("path %q conflicts with %q", p.src, (*slot).pat.src)
	}
	*slot = &leaf[V]{value: v, pat: p}
	return nil, nil
}

// Match finds the value for an escaped path that passed CheckPath, filling
// ps. ok is false when nothing matches. A trailing slash is a segment of
// its own: "/a/" matches "/a/" or "/a/{rest...}", never "/a".
func (r *Router[V]) Match(escaped string, ps *Params) (v V, ok bool) {
	ps.n = 0
	l := r.root.match(escaped[1:], false, ps)
	if l == nil {
		return v, false
	}
	ps.names = l.pat.Names
	return l.value, true
}

// match consumes the segments of rest; done means none is left.
func (n *node[V]) match(rest string, done bool, ps *Params) *leaf[V] {
	if done {
		return n.end
	}
	seg, tail, more := strings.Cut(rest, "/")
	dec, _ := unescape(seg)
	if c := n.lits[dec]; c != nil {
		if l := c.match(tail, !more, ps); l != nil {
			return l
		}
	}
	mark := ps.n
	if n.param != nil && seg != "" {
		ps.values[ps.n] = dec
		ps.n++
		if l := n.param.match(tail, !more, ps); l != nil {
			return l
		}
		ps.n = mark
	}
	if n.rest != nil {
		ps.values[ps.n] = decodeRest(rest)
		ps.n++
		return n.rest
	}
	return nil
}

func decodeRest(rest string) string {
	if !strings.Contains(rest, "%") {
		return rest
	}
	var b strings.Builder
	for i, seg := range strings.Split(rest, "/") {
		if i > 0 {
			b.WriteByte('/')
		}
		d, _ := unescape(seg)
		b.WriteString(d)
	}
	return b.String()
}
