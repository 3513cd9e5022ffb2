// Package scrub removes secret values from everything the gateway sends
// back or writes down: response headers and bodies, error texts, logs.
//
// Each secret is searched for raw and in the forms it takes when an
// upstream quotes it: query-escaped, path-escaped and JSON-escaped. Other
// transformations (base64 inside a Basic credential, hashes) are out of
// scope: no scanner can recognise every encoding of a value.
package scrub

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/keyward/keyward/internal/secret"
)

// Redacted replaces a secret in headers, logs and error texts.
const Redacted = secret.Redacted

// MinLen is the shortest secret form that is scrubbed: replacing every
// "ab" in a response would corrupt it, and such a value is no secret.
const MinLen = 4

// Scrubber finds and replaces secret values. The zero value and nil scrub
// nothing. It is immutable and safe for concurrent use.
type Scrubber struct {
	needles  [][]byte // longest first
	groups   []group  // needles by first byte, for a fast scan
	strs     []string
	names    []string // secret name per needle
	first    [256]bool
	maxLen   int
	replacer *strings.Replacer
	masker   *strings.Replacer
}

// New returns a Scrubber for secrets.
func New(secrets []secret.Value) *Scrubber {
	s := &Scrubber{}
	seen := map[string]bool{}
	type needle struct{ form, name string }
	var ns []needle
	for _, v := range secrets {
		raw := v.Reveal()
		for _, form := range forms(raw) {
			if len(form) >= MinLen && !seen[form] {
				seen[form] = true
				ns = append(ns, needle{form, v.Name()})
			}
		}
	}
	// Longest first, so a secret containing another is replaced whole.
	sort.SliceStable(ns, func(i, j int) bool { return len(ns[i].form) > len(ns[j].form) })
	pairs := make([]string, 0, 2*len(ns))
	masks := make([]string, 0, 2*len(ns))
	for _, n := range ns {
		s.needles = append(s.needles, []byte(n.form))
		s.strs = append(s.strs, n.form)
		s.names = append(s.names, n.name)
		s.first[n.form[0]] = true
		s.maxLen = max(s.maxLen, len(n.form))
		pairs = append(pairs, n.form, Redacted)
		masks = append(masks, n.form, "[secret:"+n.name+"]")
	}
	s.replacer = strings.NewReplacer(pairs...)
	s.masker = strings.NewReplacer(masks...)
	for _, n := range s.needles { // longest first, so groups are too
		p := n[:min(len(n), groupPrefix)]
		i := slices.IndexFunc(s.groups, func(g group) bool { return bytes.Equal(g.prefix, p) })
		if i < 0 {
			s.groups = append(s.groups, group{prefix: p})
			i = len(s.groups) - 1
		}
		s.groups[i].needles = append(s.groups[i].needles, n)
	}
	return s
}

// group holds the needles that share a prefix (up to groupPrefix bytes).
// The forms of one secret differ only from its first escaped character
// on, so a body is scanned about once per secret with bytes.Index, which
// is vectorised, and only the rare positions that match the prefix are
// compared with each form.
type group struct {
	prefix  []byte
	needles [][]byte
}

// groupPrefix is long enough that ordinary text rarely matches it, and
// short enough that a secret's escaped forms usually share it.
const groupPrefix = 8

// forms are the spellings of raw an upstream may echo, or the gateway may
// log (an upstream URL with the secret in its path). JSON escaping is
// applied twice as well: an echo service that returns the request body as
// a JSON string (httpbin's "data") quotes a JSON body's escapes again.
func forms(raw string) []string {
	jsonForm, plainForm := jsonEscape(raw)
	json2, _ := jsonEscape(jsonForm)
	_, plain2 := jsonEscape(plainForm)
	// PHP's json_encode (and others) also escape "/" as "\/", a valid
	// JSON escape Go's encoder never writes.
	slashed := strings.ReplaceAll(jsonForm, "/", `\/`)
	slashedPlain := strings.ReplaceAll(plainForm, "/", `\/`)
	return []string{raw, url.QueryEscape(raw), url.PathEscape(raw), pathSegments(raw), jsonForm, plainForm, json2, plain2,
		slashed, slashedPlain}
}

// pathSegments escapes s as an upstream path template does with a value
// that holds "/": each segment path-escaped, the slashes kept.
func pathSegments(s string) string {
	segs := strings.Split(s, "/")
	for i, seg := range segs {
		segs[i] = url.PathEscape(seg)
	}
	return strings.Join(segs, "/")
}

// jsonEscape returns s as escaped inside a JSON string, by Go's encoder
// (which also escapes <, > and &) and by encoders that don't.
func jsonEscape(s string) (goForm, plainForm string) {
	j, _ := json.Marshal(s)
	var plain bytes.Buffer
	enc := json.NewEncoder(&plain)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	p := strings.TrimSuffix(plain.String(), "\n")
	return string(j[1 : len(j)-1]), p[1 : len(p)-1]
}

// Active reports whether there is anything to scrub.
func (s *Scrubber) Active() bool { return s != nil && len(s.needles) > 0 }

// Contains reports whether text holds any secret.
func (s *Scrubber) Contains(text string) bool {
	if !s.Active() {
		return false
	}
	for _, n := range s.strs {
		if strings.Contains(text, n) {
			return true
		}
	}
	return false
}

// String returns text with every secret replaced by [REDACTED].
func (s *Scrubber) String(text string) string {
	if !s.Contains(text) {
		return text
	}
	return s.replacer.Replace(text)
}

// Mask returns text with every secret replaced by [secret:NAME], for
// `keyward test`, which shows where each secret goes.
func (s *Scrubber) Mask(text string) string {
	if !s.Active() {
		return text
	}
	return s.masker.Replace(text)
}

// MaskBytes masks every secret in b in place, keeping its length, as the
// body Reader does: for a body the gateway holds whole (a transform's
// output).
func (s *Scrubber) MaskBytes(b []byte) {
	if s.Active() {
		s.maskInPlace(b)
	}
}

// Headers scrubs every header value in place, and deletes a header whose
// name holds a secret (in any letter case, since names are canonicalised
// on the way). A slice that changes is copied first: header slices may be
// shared.
func (s *Scrubber) Headers(h http.Header) {
	if !s.Active() {
		return
	}
	for name, vs := range h {
		if s.containsFold(name) {
			delete(h, name)
			continue
		}
		for i, v := range vs {
			if s.Contains(v) {
				vs = append([]string(nil), vs...)
				vs[i] = s.replacer.Replace(v)
				h[name] = vs
			}
		}
	}
}

// containsFold reports whether text holds a secret, ignoring ASCII case.
func (s *Scrubber) containsFold(text string) bool {
	if len(text) < MinLen {
		return false
	}
	for _, n := range s.strs {
		for i := 0; i+len(n) <= len(text); i++ {
			if strings.EqualFold(text[i:i+len(n)], n) {
				return true
			}
		}
	}
	return false
}

// maskInPlace overwrites every secret in b with a mask of the same length,
// so a body keeps its Content-Length and needs no buffering.
func (s *Scrubber) maskInPlace(b []byte) {
	for _, g := range s.groups {
		for off := 0; off < len(b); {
			i := bytes.Index(b[off:], g.prefix)
			if i < 0 {
				break
			}
			off += i
			step := 1
			for _, n := range g.needles {
				if bytes.HasPrefix(b[off:], n) {
					copy(b[off:], mask(len(n)))
					step = len(n)
					break
				}
			}
			off += step
		}
	}
}

// masks[n] is the same-length replacement for an n-byte secret:
// "[REDACTED]" padded with '*', or '*'s when shorter than that.
var masks sync.Map

func mask(n int) []byte {
	if v, ok := masks.Load(n); ok {
		return v.([]byte)
	}
	m := bytes.Repeat([]byte{'*'}, n)
	if n >= len(Redacted) {
		copy(m, Redacted)
	}
	masks.Store(n, m)
	return m
}

// heldPrefix returns the length of the longest suffix of b that is a
// proper prefix of some secret: those bytes must wait for the next read,
// because the secret may continue there. For ordinary text this is 0, so
// streamed events are not delayed.
func (s *Scrubber) heldPrefix(b []byte) int {
	start := max(0, len(b)-(s.maxLen-1))
	for i := start; i < len(b); i++ {
		if !s.first[b[i]] {
			continue
		}
		tail := b[i:]
		for _, n := range s.needles {
			if len(n) > len(tail) && bytes.HasPrefix(n, tail) {
				return len(tail)
			}
		}
	}
	return 0
}
