package llm

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// A request body is rewritten by splicing: the policy edits a handful of
// values (or appends members) at byte offsets found by one strict parse,
// and every other byte reaches the upstream exactly as the client sent
// it: numbers keep their spelling, keys their order, strings their
// escapes. Re-encoding the whole object would change all of that and
// cost a decode and an encode of a body that can be a megabyte of
// base64; splicing costs one scan and one copy.
//
// The parse is strict where parsers disagree, because the upstream must
// read the model and limits the policy read: invalid UTF-8 (Go replaces
// it, others keep the bytes or fail), duplicate keys (Go keeps the last,
// some parsers the first, so {"model":"cheap","model":"expensive"} could
// pass an allowlist of cheap models), lone UTF-16 surrogates in escapes
// (replaced by some, kept by others) and nesting deeper than maxDepth.

// maxDepth bounds nesting. Python's json module, behind many model APIs,
// gives up near 1000 levels; no request needs more.
const maxDepth = 512

// recordDepth is how deep members are recorded: the root object's
// members and those of objects directly inside it (stream_options,
// generationConfig).
const recordDepth = 2

// object is a JSON object of the body, with its members when recorded.
type object struct {
	open, close int // offsets of '{' and '}'
	members     []member
}

// member is one key and its value.
type member struct {
	key        string // decoded
	start, end int    // the value's bytes
	obj        *object
}

// get returns the member named key, or nil.
func (o *object) get(key string) *member {
	if o == nil {
		return nil
	}
	for i := range o.members {
		if o.members[i].key == key {
			return &o.members[i]
		}
	}
	return nil
}

// errAmbiguous marks JSON that parsers read differently.
var errAmbiguous = errors.New("ambiguous JSON")

// parseBody parses a request body that must be one JSON object.
func parseBody(b []byte) (*object, error) {
	if !utf8.Valid(b) {
		return nil, fmt.Errorf("%w: invalid UTF-8", errAmbiguous)
	}
	p := parser{b: b}
	p.ws()
	if p.i >= len(b) || b[p.i] != '{' {
		return nil, errors.New("the body is not a JSON object")
	}
	root, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.i != len(b) {
		return nil, fmt.Errorf("unexpected data after the JSON object at offset %d", p.i)
	}
	return root, nil
}

type parser struct {
	b []byte
	i int
	// keys is scratch for duplicate detection, one set per open object,
	// reused across objects.
	keys []keySet
}

// keySet holds an object's keys: a slice while it is small (no
// allocation, fast to scan), a map once it is not, so that a body of a
// hundred thousand keys costs linear time, not quadratic.
type keySet struct {
	list []string
	set  map[string]struct{}
}

const keyListMax = 32

func (k *keySet) reset() {
	k.list = k.list[:0]
	k.set = nil
}

// add adds key and reports whether it was new.
func (k *keySet) add(key string) bool {
	if k.set != nil {
		if _, dup := k.set[key]; dup {
			return false
		}
		k.set[key] = struct{}{}
		return true
	}
	if slices.Contains(k.list, key) {
		return false
	}
	k.list = append(k.list, key)
	if len(k.list) > keyListMax {
		k.set = make(map[string]struct{}, 2*len(k.list))
		for _, s := range k.list {
			k.set[s] = struct{}{}
		}
	}
	return true
}

func (p *parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("invalid JSON at offset %d: "+format, append([]any{p.i}, args...)...)
}

// value parses the value at p.i, at nesting depth d (the root object is
// depth 0), and returns its object when it is one recorded.
func (p *parser) value(d int) (*object, error) {
	if p.i >= len(p.b) {
		return nil, p.errorf("unexpected end")
	}
	switch c := p.b[p.i]; {
	case c == '{':
		return p.object(d)
	case c == '[':
		return nil, p.array(d)
	case c == '"':
		_, err := p.str(false)
		return nil, err
	case c == '-' || ('0' <= c && c <= '9'):
		return nil, p.number()
	case c == 't':
		return nil, p.literal("true")
	case c == 'f':
		return nil, p.literal("false")
	case c == 'n':
		return nil, p.literal("null")
	}
	return nil, p.errorf("unexpected character %q", p.b[p.i])
}

func (p *parser) object(d int) (*object, error) {
	if d >= maxDepth {
		return nil, p.errorf("nesting deeper than %d", maxDepth)
	}
	var o *object
	if d < recordDepth {
		o = &object{open: p.i}
	}
	for len(p.keys) <= d {
		p.keys = append(p.keys, keySet{})
	}
	p.keys[d].reset()
	p.i++ // '{'
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		if o != nil {
			o.close = p.i
		}
		p.i++
		return o, nil
	}
	for {
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != '"' {
			return nil, p.errorf("want a key")
		}
		key, err := p.str(true)
		if err != nil {
			return nil, err
		}
		if !p.keys[d].add(key) {
			return nil, fmt.Errorf("%w: duplicate key %q", errAmbiguous, truncate(key))
		}
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			return nil, p.errorf("want ':'")
		}
		p.i++
		p.ws()
		start := p.i
		sub, err := p.value(d + 1)
		if err != nil {
			return nil, err
		}
		if o != nil {
			o.members = append(o.members, member{key: key, start: start, end: p.i, obj: sub})
		}
		p.ws()
		if p.i >= len(p.b) {
			return nil, p.errorf("unexpected end")
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case '}':
			if o != nil {
				o.close = p.i
			}
			p.i++
			return o, nil
		default:
			return nil, p.errorf("want ',' or '}'")
		}
	}
}

func (p *parser) array(d int) error {
	if d >= maxDepth {
		return p.errorf("nesting deeper than %d", maxDepth)
	}
	p.i++ // '['
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == ']' {
		p.i++
		return nil
	}
	for {
		p.ws()
		if _, err := p.value(d + 1); err != nil {
			return err
		}
		p.ws()
		if p.i >= len(p.b) {
			return p.errorf("unexpected end")
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			return nil
		default:
			return p.errorf("want ',' or ']'")
		}
	}
}

// str parses a string and returns its decoded value when decode is set.
// The body is valid UTF-8 (checked once up front), so only escapes and
// control characters are checked here.
func (p *parser) str(decode bool) (string, error) {
	p.i++ // '"'
	start := p.i
	escaped := false
	for {
		j := bytes.IndexAny(p.b[p.i:], "\"\\")
		if j < 0 {
			return "", p.errorf("unterminated string")
		}
		if k := controlIndex(p.b[p.i : p.i+j]); k >= 0 {
			p.i += k
			return "", p.errorf("control character in a string")
		}
		p.i += j
		if p.b[p.i] == '"' {
			raw := p.b[start:p.i]
			p.i++
			if !decode {
				return "", nil
			}
			if !escaped {
				return string(raw), nil
			}
			return unescape(raw)
		}
		escaped = true
		if err := p.escape(); err != nil {
			return "", err
		}
	}
}

func controlIndex(b []byte) int {
	for i, c := range b {
		if c < 0x20 {
			return i
		}
	}
	return -1
}

// escape checks the escape at p.i ('\\') and moves past it.
func (p *parser) escape() error {
	if p.i+1 >= len(p.b) {
		return p.errorf("unterminated escape")
	}
	switch p.b[p.i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		p.i += 2
		return nil
	case 'u':
		r, ok := hex4(p.b, p.i+2)
		if !ok {
			return p.errorf("bad \\u escape")
		}
		p.i += 6
		switch {
		case utf16.IsSurrogate(r) && r < 0xdc00:
			// A high surrogate must be followed by a low one.
			if p.i+1 < len(p.b) && p.b[p.i] == '\\' && p.b[p.i+1] == 'u' {
				if r2, ok := hex4(p.b, p.i+2); ok && 0xdc00 <= r2 && r2 < 0xe000 {
					p.i += 6
					return nil
				}
			}
			return fmt.Errorf("%w: lone UTF-16 surrogate in an escape", errAmbiguous)
		case utf16.IsSurrogate(r):
			return fmt.Errorf("%w: lone UTF-16 surrogate in an escape", errAmbiguous)
		}
		return nil
	}
	return p.errorf("bad escape")
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(b[i:i+4]), 16, 32)
	return rune(v), err == nil
}

// unescape decodes a string's content, already checked by str.
func unescape(raw []byte) (string, error) {
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		switch raw[i] {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, _ := hex4(raw, i+1)
			i += 4
			if utf16.IsSurrogate(r) {
				r2, _ := hex4(raw, i+3)
				r = utf16.DecodeRune(r, r2)
				i += 6
			}
			out = utf8.AppendRune(out, r)
		default: // '"', '\\', '/'
			out = append(out, raw[i])
		}
	}
	return string(out), nil
}

func (p *parser) number() error {
	b, i := p.b, p.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	default:
		return p.errorf("bad number")
	}
	if i < len(b) && b[i] == '.' {
		i++
		n := i
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
		if i == n {
			return p.errorf("bad number")
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		n := i
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
		if i == n {
			return p.errorf("bad number")
		}
	}
	p.i = i
	return nil
}

func (p *parser) literal(lit string) error {
	if !bytes.HasPrefix(p.b[p.i:], []byte(lit)) {
		return p.errorf("bad literal")
	}
	p.i += len(lit)
	return nil
}

// truncate shortens a client-supplied string for an error message.
func truncate(s string) string {
	if len(s) > 64 {
		return strings.ToValidUTF8(s[:64], "") + "..."
	}
	return s
}

// edit replaces b[start:end] with text; start == end inserts.
type edit struct {
	start, end int
	text       []byte
}

// splice applies edits, which must not overlap; edits at the same offset
// apply in the order given.
func splice(b []byte, edits []edit) []byte {
	if len(edits) == 0 {
		return b
	}
	slices.SortStableFunc(edits, func(x, y edit) int { return x.start - y.start })
	n := len(b)
	for _, e := range edits {
		n += len(e.text) - (e.end - e.start)
	}
	out := make([]byte, 0, n)
	at := 0
	for _, e := range edits {
		out = append(out, b[at:e.start]...)
		out = append(out, e.text...)
		at = e.end
	}
	return append(out, b[at:]...)
}

// insertMember returns the edit that appends "key":value to o.
func insertMember(o *object, key string, value []byte) edit {
	var t []byte
	at := o.open + 1
	if n := len(o.members); n > 0 {
		at = o.members[n-1].end
		t = append(t, ',')
	}
	t = strconv.AppendQuote(t, key) // keys here are plain ASCII names
	t = append(t, ':')
	t = append(t, value...)
	return edit{start: at, end: at, text: t}
}
