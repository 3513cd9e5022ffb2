// Package scrub removes secret values from everything the gateway sends
// back or writes down: response headers and bodies, error texts, logs.
//
// # Spellings
//
// An upstream that echoes a secret may spell each of its characters in
// any way an encoder writes it, and encoders differ (Go escapes "<>&" in
// JSON, Gson also "=", .NET also "+", PHP writes "\/", Python's quote
// keeps "/"). So a secret is matched one character at a time, each
// character in any of its spellings, rather than as a list of whole
// encoded forms, which would have to hold every mix:
//
//   - raw, and an ASCII letter in either case in a header name;
//   - percent-encoded, "%3D" or "%3d", and "+" for a space;
//   - JSON: "\u003d" or "\u003D" (a surrogate pair above U+FFFF), and
//     "\/", "\"", "\\", "\n" and the other short escapes;
//   - JSON escaped twice, as an echo service quotes a JSON body inside a
//     JSON string: "\\u003d", "\\/", "\\\"", "\\\\";
//   - HTML character references: "&#61;", "&#x3D;", "&#X3d;", with
//     leading zeros up to 7 decimal or 6 hex digits, and "&amp;", "&lt;",
//     "&gt;", "&quot;", "&apos;".
//
// A character outside ASCII is also matched byte by byte, raw or
// percent-encoded. Base64 is searched for through the secret's cores: the
// characters of base64(x + secret + y) that depend on the secret alone,
// at the three alignments and in the standard and URL alphabets, each
// core matched like a secret (so "\/" and "\u002B" in a JSON-quoted
// base64 are found). That covers a Basic credential "user:secret" and a
// base64 document holding the secret; the one or two characters at each
// end of a core, which mix in bits of x or y, stay visible. Cores are
// searched for secrets of at least 7 bytes, whose cores are all at least
// 8 characters (48 bits) long: a shorter core would match base64 blobs
// (images in JSON) by chance, and a secret that short is searched for in
// all its spellings but not through base64. Secrets shorter than MinLen
// (4 bytes) are not scrubbed at all. Other transformations (hashes, base64
// with a line break inside a core, percent-encoding applied twice) are out
// of scope: no scanner can recognise every encoding of a value.
//
// # Cost
//
// A body is scanned once. A table of the bytes a spelling may start with
// (a pattern's first byte, and the escape introducers % \ & +) skips
// eight bytes per branch; where one is found, a set of byte pairs (the
// first two bytes of a spelling: "\u" and "%3" may start one, "\"" only
// if a pattern starts with a quote) rejects most places; only at the rest
// is the first character decoded and the patterns that begin with it
// tried, unit by unit. A unit's spellings differ in their first byte,
// except where the unit is itself "\", "%" or "&" ("\\" is one escaped
// backslash or two raw ones); there every reading is tried and memoised,
// so a text of backslashes against a secret with a run of r backslashes
// costs O(r*r) steps per position, not exponential time.
//
// # Masking
//
// Every start position is tried, and a match is masked from its start to
// the end of its longest spelling, so a secret that begins inside another
// match (after an attacker's text that ends the way the secret begins) is
// masked whole. In a body the mask has the match's length ("[REDACTED]"
// padded with "*", or "*"s when shorter), so Content-Length stays right;
// where matches overlap, the later one's mask is written over the
// earlier's. String and Headers replace each run of overlapping matches
// with [REDACTED], Mask with [secret:NAME].
//
// # Streaming without an oracle
//
// A streamed body is scrubbed as it is written (Writer), so some bytes
// must be held until it is known whether a secret continues past them.
// Holding exactly the bytes that could start a secret, as keyward once
// did, leaks: a client that makes the upstream reflect a guess sees where
// the gateway splits its stream, and so whether the guess is a prefix of
// a secret; character by character, any secret was recovered in about
// 2,000 requests. So what is held never depends on what the bytes are,
// only on where line breaks are and on lengths:
//
//   - everything up to and including the last CR or LF is released at
//     once: no spelling of a secret contains a raw CR or LF, so no match
//     spans one. Server-sent events and NDJSON lines end with a line
//     break, so they are not delayed at all. (If a secret itself holds a
//     CR or LF, this rule is off, for every secret.)
//   - of the bytes after it, the last hold bytes are held: 10 (spellMax)
//     times the longest secret or base64 core, less one, a number fixed
//     by the config. A match that starts before them is complete in what
//     has arrived.
//   - held bytes go out with the next write (as far as the rule allows),
//     at the end of the body, or when the upstream has been silent for
//     ReleaseDelay after a flush; one write per release, so the chunks on
//     the wire follow the same rule.
//
// A tail released by the timer may end with the start of a secret that
// the next write completes. The bytes whose matches are undecided are
// kept, and the continuation is masked; the start already sent cannot be
// recalled, and ReleaseDelay bounds how long a stream waits for it. The
// time spent matching does depend on the text (a partial match costs a
// few nanoseconds per matched character, like any comparison), far below
// what a client can measure through the network.
package scrub

import (
	"bytes"
	"net/http"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/keyward/keyward/internal/secret"
)

// Redacted replaces a secret in headers, logs and error texts.
const Redacted = secret.Redacted

// MinLen is the shortest secret that is scrubbed: replacing every "ab" in
// a response would corrupt it, and such a value is no secret.
const MinLen = 4

// ReleaseDelay is how long a streamed body's held bytes wait for the
// upstream to send more before they are released anyway. It delays only
// a stream whose writes do not end with a line break, by this much per
// pause of the upstream. (A stream that trickles without line breaks and
// never pauses that long lags by the held bytes until it does.)
const ReleaseDelay = 50 * time.Millisecond

// Scrubber finds and masks secret values. The zero value and nil scrub
// nothing. It is immutable and safe for concurrent use.
type Scrubber struct {
	pats []pattern
	// byFirst lists the patterns by the first byte of their first
	// character, raw: the decoded first character of a spelling picks
	// the patterns to try.
	byFirst [256][]int32
	// plain and folded find where patterns may start in a text, folded
	// with letters in either case (header names).
	plain, folded filter
	// hold is how many bytes after the last line break a stream holds.
	hold int
	// lines reports that no secret holds a CR or LF, so a match never
	// spans one and everything before the last one can be released.
	lines bool
	// after starts the release timer; tests replace it with a fake clock.
	after func(time.Duration, func()) stopper
}

// pairSet is a set of byte pairs.
type pairSet [1 << 16 / 64]uint64

func (ps *pairSet) add(a, b byte) {
	i := uint(a)<<8 | uint(b)
	ps[i/64] |= 1 << (i % 64)
}

func (ps *pairSet) has(a, b byte) bool {
	i := uint(a)<<8 | uint(b)
	return ps[i/64]&(1<<(i%64)) != 0
}

// allBytes is every byte value.
var allBytes = func() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}()

// stopper is the part of *time.Timer a Writer uses.
type stopper interface{ Stop() bool }

// New returns a Scrubber for secrets.
func New(secrets []secret.Value) *Scrubber {
	s := &Scrubber{lines: true, after: func(d time.Duration, f func()) stopper { return time.AfterFunc(d, f) }}
	seen := map[string]bool{}
	add := func(str, name string) {
		if seen[str] {
			return
		}
		seen[str] = true
		p := newPattern(str, name)
		s.hold = max(s.hold, spellMax*p.size-1)
		s.pats = append(s.pats, p)
	}
	for _, v := range secrets {
		raw := v.Reveal()
		if len(raw) < MinLen {
			continue
		}
		if strings.ContainsAny(raw, "\r\n") {
			s.lines = false
		}
		add(raw, v.Name())
		for _, core := range base64Cores(raw) {
			add(core, v.Name())
		}
	}
	for pi := range s.pats {
		p := &s.pats[pi]
		u := p.units[0]
		first := u.raw[0]
		s.byFirst[first] = append(s.byFirst[first], int32(pi))
		s.plain.first[first] = max(s.plain.first[first], 1)
		s.folded.first[first] = max(s.folded.first[first], 1)
		s.folded.first[u.other] = max(s.folded.first[u.other], 1)
		// The bytes that may follow a raw first byte: the next unit's
		// first, raw (or in the other case, folded), or an introducer.
		next := allBytes
		other := first
		switch {
		case u.n > 1:
			next = []byte{u.raw[1], '%'}
		case len(p.units) > 1:
			v := p.units[1]
			next, other = []byte{v.raw[0], '%', '\\', '&', '+'}, v.other
		}
		for _, b := range next {
			s.plain.pairs.add(first, b)
			for _, a := range [2]byte{first, u.other} {
				s.folded.pairs.add(a, b)
				s.folded.pairs.add(a, other)
			}
		}
	}
	if len(s.pats) > 0 {
		s.plain.escapes(&s.byFirst)
		s.folded.escapes(&s.byFirst)
	}
	return s
}

// Active reports whether there is anything to scrub.
func (s *Scrubber) Active() bool { return s != nil && len(s.pats) > 0 }

// Contains reports whether text holds any secret, in any spelling.
func (s *Scrubber) Contains(text string) bool {
	if !s.Active() {
		return false
	}
	return len(s.scan(bytesOf(text), 0, len(text), false, true, nil)) > 0
}

// String returns text with every secret replaced by [REDACTED].
func (s *Scrubber) String(text string) string {
	return s.replace(text, false, func(match) string { return Redacted })
}

// Mask returns text with every secret replaced by [secret:NAME], for
// `keyward test`, which shows where each secret goes.
func (s *Scrubber) Mask(text string) string {
	return s.replace(text, false, func(m match) string { return "[secret:" + s.pats[m.pat].name + "]" })
}

// replace returns text with each run of overlapping matches replaced by
// what with returns for the run's first match.
func (s *Scrubber) replace(text string, fold bool, with func(match) string) string {
	if !s.Active() {
		return text
	}
	var buf [8]match
	ms := s.scan(bytesOf(text), 0, len(text), fold, false, buf[:0])
	if len(ms) == 0 {
		return text
	}
	var b strings.Builder
	b.Grow(len(text))
	done := 0
	for i := 0; i < len(ms); {
		m, end := ms[i], ms[i].end
		for i++; i < len(ms) && ms[i].start < end; i++ {
			end = max(end, ms[i].end)
		}
		b.WriteString(text[done:m.start])
		b.WriteString(with(m))
		done = end
	}
	b.WriteString(text[done:])
	return b.String()
}

// bytesOf views s as bytes without copying: the scanner only reads it,
// and a copy per header value and log line would be the scrubber's main
// cost for short texts.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// MaskBytes masks every secret in b in place, keeping its length, as a
// Writer does: for a body the gateway holds whole (a transform's output).
func (s *Scrubber) MaskBytes(b []byte) {
	if !s.Active() {
		return
	}
	var buf [8]match
	ms := s.scan(b, 0, len(b), false, false, buf[:0])
	// Each mask is applied after the whole text was scanned: a later
	// match may start inside an earlier one and must see the original.
	for _, m := range ms {
		copy(b[m.start:m.end], maskOf(m.end-m.start))
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
		if len(s.scan(bytesOf(name), 0, len(name), true, true, nil)) > 0 {
			delete(h, name)
			continue
		}
		for i, v := range vs {
			if r := s.String(v); r != v {
				vs = append([]string(nil), vs...)
				vs[i] = r
				h[name] = vs
			}
		}
	}
}

// masks[n] is the same-length mask of an n-byte match: "[REDACTED]"
// padded with '*', or '*'s when shorter than that.
var masks sync.Map

func maskOf(n int) []byte {
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
