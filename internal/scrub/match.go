package scrub

import (
	"encoding/base64"
	"strings"
	"unicode/utf8"
)

// A pattern is one string searched for in every spelling: a secret, or
// one of its base64 cores. It is matched one character (unit) at a time,
// each unit in any of its spellings, so the number of spelled forms of a
// secret never has to be listed: it is the product of its units'.
type pattern struct {
	units []unit
	name  string // the secret's config name, for Mask
	size  int    // the raw length in bytes, which bounds the spelled length
}

// A unit is one character of a pattern: an ASCII byte, a UTF-8 encoded
// rune, or a byte that is not UTF-8 (raw or percent-encoded only).
type unit struct {
	r     rune // the code point, or -1 for a byte that is not UTF-8
	raw   [utf8.UTFMax]byte
	n     uint8 // len(raw)
	other byte  // an ASCII letter in the other case, else the byte itself
}

// spellMax is the most bytes one raw byte of a pattern can take in any
// spelling: "=" as "&#x00003D;" or "&#0000061;" (10), a four-byte rune
// as a doubled surrogate pair "\\uD83D\\uDE00" (14, 3.5 per byte). The
// hold of a streamed body is computed from it and the lengths of the
// secrets alone.
const spellMax = 10

// Numeric HTML character references are matched with at most this many
// digits: enough for every code point (U+10FFFF is 7 decimal, 6 hex
// digits), so "&#061;" and "&#x003d;" are found, while the bound keeps
// the longest spelling, and so the hold, finite.
const (
	decDigits = 7
	hexDigits = 6
)

// newPattern compiles s into a pattern.
func newPattern(s, name string) pattern {
	p := pattern{name: name, size: len(s), units: make([]unit, 0, len(s))}
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			r = -1
		}
		u := unit{r: r, n: uint8(n)}
		copy(u.raw[:], s[i:i+n])
		u.other = s[i]
		if c := s[i]; n == 1 && ('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			u.other = c ^ 0x20
		}
		p.units = append(p.units, u)
		i += n
	}
	return p
}

// minBase64 is the shortest base64 core that is searched for: 8
// characters are 48 bits, which random text and base64 blobs (images in
// JSON) match by chance about once in 2^48 positions. Every core of a
// secret of 7 bytes or more is at least that long, so base64 is searched
// for those secrets only, at all three alignments or not at all.
const minBase64 = 8

// base64MinSecret is the shortest secret whose three cores are all at
// least minBase64 characters.
const base64MinSecret = 7

// base64Cores returns the parts of base64(x + s + y) that depend on s
// alone, for the three lengths of x modulo 3, in the standard and the
// URL alphabet: whatever an upstream base64-encodes around a secret (a
// Basic credential "user:secret", a JSON document), one of them is in the
// output. The one or two characters at each end that mix in bits of x or
// y are not part of a core.
func base64Cores(s string) []string {
	if len(s) < base64MinSecret {
		return nil
	}
	var cores []string
	for align := range 3 {
		enc := base64.StdEncoding.EncodeToString(append(make([]byte, align), s...))
		// The secret's bits are [8*align, 8*(align+len(s))); a character
		// holds bits [6k, 6k+6).
		from, to := (8*align+5)/6, 8*(align+len(s))/6
		core := enc[from:to]
		cores = append(cores, core)
		if url := strings.NewReplacer("+", "-", "/", "_").Replace(core); url != core {
			cores = append(cores, url)
		}
	}
	return cores
}

// maxAlts is the most spellings of one unit that can start at one place:
// "\\\\" read as "\\" (2) or "\\\\" (4), or raw "\" (1).
const maxAlts = 6

// spell reports the spellings of u that start at t[i], as the offsets
// where each ends; fold lets a raw ASCII letter match in either case.
//
// A raw byte and the escape introducers (%, \, &) differ, so for most
// units at most one spelling fits; only a unit that is itself an
// introducer ("\" in "\\", "%" in "%25", "&" in "&amp;") can have several.
func (u *unit) spell(t []byte, i int, fold bool, ends *[maxAlts]int) int {
	if i >= len(t) {
		return 0
	}
	k := 0
	c := t[i]
	if u.n != 1 || u.r < 0 {
		return u.spellWide(t, i, ends)
	}
	b := byte(u.r)
	if c == b || fold && c == u.other {
		ends[k] = i + 1
		k++
	}
	switch c {
	case '%':
		if v, ok := hex2(t, i+1); ok && v == b {
			ends[k] = i + 3
			k++
		}
	case '+':
		if b == ' ' { // application/x-www-form-urlencoded
			ends[k] = i + 1
			k++
		}
	case '\\':
		k = backslash(b, t, i, ends, k)
	case '&':
		if r, n := entity(t, i); n > 0 && r == rune(b) {
			ends[k] = i + n
			k++
		}
	}
	return k
}

// spellWide is spell for a multi-byte rune or a byte that is not UTF-8:
// its bytes one by one, raw or percent-encoded (in any mix), or the whole
// rune as a JSON \u escape (a surrogate pair above U+FFFF) or an HTML
// character reference.
func (u *unit) spellWide(t []byte, i int, ends *[maxAlts]int) int {
	j := i
	for _, x := range u.raw[:u.n] {
		if j < len(t) && t[j] == x {
			j++
		} else if v, ok := hex2(t, j+1); ok && t[j] == '%' && v == x {
			j += 3
		} else {
			j = -1
			break
		}
	}
	k := 0
	if j > 0 {
		ends[k] = j
		k++
	}
	if u.r < 0 {
		return k
	}
	switch t[i] {
	case '\\':
		for _, level := range [2]int{1, 2} {
			if r, n := jsonU(t, i, level); n > 0 && r == u.r {
				ends[k] = i + n
				k++
			}
		}
	case '&':
		if r, n := entity(t, i); n > 0 && r == u.r {
			ends[k] = i + n
			k++
		}
	}
	return k
}

// backslash appends the ends of the backslash spellings of the ASCII
// byte b at t[i] (which is '\'): JSON's \uXXXX and short escapes, once
// or twice escaped (a JSON body quoted inside a JSON string, as an echo
// service returns it, doubles every backslash).
func backslash(b byte, t []byte, i int, ends *[maxAlts]int, k int) int {
	for _, level := range [2]int{1, 2} {
		if r, n := jsonU(t, i, level); n > 0 && r == rune(b) {
			ends[k] = i + n
			k++
		}
	}
	var short byte
	switch b {
	case '/', '"':
		short = b
	case '\\':
		// "\\" and "\\\\"; the raw "\" is matched by the caller.
		if at(t, i+1) == '\\' {
			ends[k] = i + 2
			k++
			if at(t, i+2) == '\\' && at(t, i+3) == '\\' {
				ends[k] = i + 4
				k++
			}
		}
		return k
	case '\b':
		short = 'b'
	case '\f':
		short = 'f'
	case '\n':
		short = 'n'
	case '\r':
		short = 'r'
	case '\t':
		short = 't'
	default:
		return k
	}
	if at(t, i+1) == short {
		ends[k] = i + 2
		k++
		return k
	}
	// Twice escaped: the backslash doubles, and a quote gains its own.
	if at(t, i+1) != '\\' {
		return k
	}
	if b == '"' {
		if at(t, i+2) == '\\' && at(t, i+3) == '"' {
			ends[k] = i + 4
			k++
		}
		return k
	}
	if at(t, i+2) == short {
		ends[k] = i + 3
		k++
	}
	return k
}

// at returns t[i], or 0 past the end.
func at(t []byte, i int) byte {
	if i < len(t) {
		return t[i]
	}
	return 0
}

// jsonU decodes the JSON escape \uXXXX at t[i] with level backslashes
// (1, or 2 for a twice-escaped text), and a following low surrogate
// escaped the same way. It returns the rune and the escape's length, or
// n == 0.
func jsonU(t []byte, i, level int) (r rune, n int) {
	hi, ok := u4(t, i, level)
	if !ok {
		return 0, 0
	}
	n = level + 5
	if hi < 0xD800 || hi > 0xDBFF {
		return hi, n
	}
	lo, ok := u4(t, i+n, level)
	if !ok || lo < 0xDC00 || lo > 0xDFFF {
		return 0, 0
	}
	return 0x10000 + (hi-0xD800)<<10 + (lo - 0xDC00), 2 * n
}

// u4 parses level backslashes, "u" and four hex digits at t[i].
func u4(t []byte, i, level int) (rune, bool) {
	if i+level+5 > len(t) {
		return 0, false
	}
	for j := range level {
		if t[i+j] != '\\' {
			return 0, false
		}
	}
	i += level
	if t[i] != 'u' {
		return 0, false
	}
	hi, ok1 := hex2(t, i+1)
	lo, ok2 := hex2(t, i+3)
	return rune(hi)<<8 | rune(lo), ok1 && ok2
}

// entity decodes the HTML character reference at t[i] (which is '&'):
// a numeric one, decimal or hex in either case with at most decDigits or
// hexDigits digits, or one of the five named ones XML and every HTML
// escaper use. It returns the rune and the reference's length, or n == 0.
func entity(t []byte, i int) (r rune, n int) {
	rest := t[i+1:]
	if len(rest) > 0 && rest[0] == '#' {
		j, base, limit := 1, rune(10), decDigits
		if len(rest) > 1 && rest[1]|0x20 == 'x' {
			j, base, limit = 2, 16, hexDigits
		}
		start := j
		for j < len(rest) && j-start < limit {
			d := unhex[rest[j]]
			if d < 0 || rune(d) >= base {
				break
			}
			r = r*base + rune(d)
			j++
		}
		if j == start || j >= len(rest) || rest[j] != ';' {
			return 0, 0
		}
		return r, j + 2
	}
	for _, e := range named {
		if len(rest) >= len(e.name) && string(rest[:len(e.name)]) == e.name {
			return e.r, len(e.name) + 1
		}
	}
	return 0, 0
}

// named are the character references every escaper uses, without "&".
var named = [...]struct {
	name string
	r    rune
}{{"amp;", '&'}, {"lt;", '<'}, {"gt;", '>'}, {"quot;", '"'}, {"apos;", '\''}}

// hex2 parses two hex digits, in either case, at t[i].
func hex2(t []byte, i int) (byte, bool) {
	if i+1 >= len(t) {
		return 0, false
	}
	h, l := unhex[t[i]], unhex[t[i+1]]
	if h < 0 || l < 0 {
		return 0, false
	}
	return byte(h<<4 | l), true
}

// unhex maps a hex digit to its value, anything else to -1.
var unhex = func() (u [256]int8) {
	for i := range u {
		u[i] = -1
	}
	for i := range 10 {
		u['0'+i] = int8(i)
	}
	for i := range 6 {
		u['a'+i], u['A'+i] = int8(10+i), int8(10+i)
	}
	return u
}()

// longest returns where the longest spelling of p that starts at t[i]
// ends, or -1. The text decides between spellings only at units that have
// several (see spell); there every choice is tried, and the results are
// remembered, so a text built to branch at every unit costs time
// proportional to its length times the pattern's, never exponential.
func (p *pattern) longest(t []byte, i int, fold bool) int {
	var memo map[int]int
	return p.from(t, 0, i, fold, &memo)
}

func (p *pattern) from(t []byte, j, i int, fold bool, memo *map[int]int) int {
	var ends [maxAlts]int
	for ; j < len(p.units); j++ {
		k := p.units[j].spell(t, i, fold, &ends)
		switch k {
		case 0:
			return -1
		case 1:
			i = ends[0]
			continue
		}
		key := i*len(p.units) + j
		if r, ok := (*memo)[key]; ok {
			return r
		}
		if *memo == nil {
			*memo = map[int]int{}
		}
		best := -1
		for _, e := range ends[:k] {
			best = max(best, p.from(t, j+1, e, fold, memo))
		}
		(*memo)[key] = best
		return best
	}
	return i
}

// match is a spelled occurrence of pattern pat at t[start:end].
type match struct {
	start, end int
	pat        int
}

// firstBytes adds to keys the first raw byte of every character a
// spelling that starts at t[i] can stand for, so that only the patterns
// beginning with those are tried there.
func firstBytes(t []byte, i int, fold bool, keys []byte) []byte {
	c := t[i]
	keys = append(keys, c)
	if fold && ('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
		keys = append(keys, c^0x20)
	}
	var r rune = -1
	switch c {
	case '%':
		if v, ok := hex2(t, i+1); ok {
			keys = append(keys, v)
		}
	case '+':
		keys = append(keys, ' ')
	case '\\':
		if r1, n := jsonU(t, i, 1); n > 0 {
			keys = appendFirst(keys, r1)
		}
		if r2, n := jsonU(t, i, 2); n > 0 {
			keys = appendFirst(keys, r2)
		}
		switch d := at(t, i+1); d {
		case '/', '"':
			keys = append(keys, d)
		case 'b', 'f', 'n', 'r', 't':
			keys = append(keys, shortEscape[d])
		case '\\':
			switch e := at(t, i+2); e {
			case '/':
				keys = append(keys, '/')
			case 'b', 'f', 'n', 'r', 't':
				keys = append(keys, shortEscape[e])
			case '\\':
				if at(t, i+3) == '"' {
					keys = append(keys, '"')
				}
			}
		}
	case '&':
		if rr, n := entity(t, i); n > 0 {
			r = rr
		}
	}
	if r >= 0 {
		keys = appendFirst(keys, r)
	}
	return keys
}

// shortEscape maps the letter of a JSON short escape to its byte.
var shortEscape = [256]byte{'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}

// appendFirst appends the first byte of r's UTF-8 encoding.
func appendFirst(keys []byte, r rune) []byte {
	var b [utf8.UTFMax]byte
	if utf8.EncodeRune(b[:], r) == 0 {
		return keys
	}
	return append(keys, b[0])
}

// scan appends to ms every match that starts in t[from:to], in order of
// start, each the longest at its start; a match may extend past to (it
// ends within t). Matches may overlap: every start is tried, so a
// secret that begins inside another's match (an attacker's guess written
// just before it) is found too. With first set, scan stops at the first.
func (s *Scrubber) scan(t []byte, from, to int, fold, first bool, ms []match) []match {
	f := &s.plain
	if fold {
		f = &s.folded
	}
	var keybuf [8]byte
	for i := from; ; i++ {
		if i = f.next(t, i, to); i >= to {
			break
		}
		keys := firstBytes(t, i, fold, keybuf[:0])
		best, pat := -1, -1
		for ki, key := range keys {
			if dup(keys[:ki], key) {
				continue
			}
			for _, pi := range s.byFirst[key] {
				if e := s.pats[pi].longest(t, i, fold); e > best {
					best, pat = e, int(pi)
				}
			}
		}
		if best > i {
			ms = append(ms, match{start: i, end: best, pat: pat})
			if first {
				return ms
			}
		}
	}
	return ms
}

// A filter picks the places in a text where a spelling of some pattern
// may start, by its first two bytes, so that the patterns are tried at
// few of them.
type filter struct {
	// first marks the bytes a spelling may start with: a pattern's first
	// byte, raw, or an escape introducer (% \ & +).
	first [256]byte
	// pairs holds the two-byte starts of the spellings. In text, most
	// places whose byte is in first fail here: "\"" does not start a
	// spelling of a pattern that begins with a letter, "&p" none at all.
	pairs pairSet
}

// add lets spellings start with a then b.
func (f *filter) add(a, b byte) {
	f.first[a] = 1
	f.pairs.add(a, b)
}

// escapes adds the starts of the escaped spellings of the patterns' first
// characters, byFirst being the patterns by their first byte.
func (f *filter) escapes(byFirst *[256][]int32) {
	for _, h := range []byte("0123456789abcdefABCDEF") {
		f.add('%', h) // %XX
	}
	f.add('\\', 'u')  // \uXXXX
	f.add('\\', '\\') // \\uXXXX, \\/, \\\", \\\\ and the like
	for letter, b := range shortEscape {
		if b != 0 && byFirst[b] != nil {
			f.add('\\', byte(letter))
		}
	}
	for _, b := range []byte(`/"`) {
		if byFirst[b] != nil {
			f.add('\\', b)
		}
	}
	f.add('&', '#') // &#61; &#x3D;
	for _, e := range named {
		if byFirst[e.r] != nil {
			f.add('&', e.name[0])
		}
	}
	if byFirst[' '] != nil {
		for _, b := range allBytes {
			f.add('+', b)
		}
	}
}

// next returns the first i' in [i, to) where a spelling may start, or to.
// It reads t past to: a spelling that starts before to may end after it.
func (f *filter) next(t []byte, i, to int) int {
	for i < to {
		// Eight bytes per branch where no pattern starts, which is most
		// of a body.
		if i+8 <= to {
			w := t[i : i+8 : i+8]
			if f.first[w[0]]|f.first[w[1]]|f.first[w[2]]|f.first[w[3]]|f.first[w[4]]|f.first[w[5]]|f.first[w[6]]|f.first[w[7]] == 0 {
				i += 8
				continue
			}
		}
		for end := min(i+8, to); i < end; i++ {
			if f.first[t[i]] != 0 && (i+1 >= len(t) || f.pairs.has(t[i], t[i+1])) {
				return i
			}
		}
	}
	return to
}

func dup(keys []byte, k byte) bool {
	for _, x := range keys {
		if x == k {
			return true
		}
	}
	return false
}
