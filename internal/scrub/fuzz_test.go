package scrub

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/keyward/keyward/internal/secret"
)

// secretRunes are what fuzzed secrets are made of: letters, digits, the
// punctuation of base64 and URLs, every character an escaper touches, and
// characters outside ASCII. No CR or LF: the release rule for line breaks
// is what the oracle check exercises.
var secretRunes = []rune("AKIAbcxyz0189+/=-_.~!\"#$%&'()*,:;<>?@[\\]^`{|} é€😀\t")

// fuzzSecret makes a secret of 4 to 24 runes from seed.
func fuzzSecret(seed []byte) string {
	var b strings.Builder
	for i, c := range seed {
		if i >= 24 {
			break
		}
		b.WriteRune(secretRunes[int(c)%len(secretRunes)])
	}
	for b.Len() < MinLen {
		b.WriteByte('k')
	}
	return b.String()
}

// sameShape returns a secret of the same length in bytes as s, with
// different content, and no CR or LF: the configuration that differs
// from s's only in the secret's content.
func sameShape(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= 0x80:
			b[i] = 'Q'
		case c == 'Z':
			b[i] = 'z'
		default:
			b[i] = 'Z'
		}
	}
	return string(b)
}

// applicable returns the spellings that apply to r.
func applicable(r rune) []string {
	var out []string
	for _, sp := range spellings {
		if x := sp.of(r); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// spellWith spells each rune of s with the spelling picked by the next
// byte of pick (cycling), and returns the text.
func spellWith(s string, pick []byte) string {
	var b strings.Builder
	i := 0
	for _, r := range s {
		opts := applicable(r)
		k := 0
		if len(pick) > 0 {
			k = int(pick[i%len(pick)]) % len(opts)
		}
		i++
		b.WriteString(opts[k])
	}
	return b.String()
}

// span is where a spelled occurrence of the secret (or of a base64 core
// of it) was put in a fuzzed text.
type span struct{ start, end int }

// fuzzText builds a text from recipe: filler, spelled occurrences of raw,
// base64 of text holding raw (spelled too), raw's prefixes (the guesses
// of the attack) and line breaks. It returns the text and the spans of
// the occurrences, which must be masked.
func fuzzText(raw string, filler, recipe []byte) ([]byte, []span) {
	var t bytes.Buffer
	var spans []span
	for i, r := range recipe {
		if t.Len() > 4<<10 {
			break
		}
		arg := recipe[(i+1)%len(recipe):]
		switch r % 6 {
		case 0:
			n := min(len(filler), 1+int(r/6)%24)
			t.Write(filler[:n])
			filler = filler[n:]
		case 1:
			at := t.Len()
			t.WriteString(spellWith(raw, arg))
			spans = append(spans, span{at, t.Len()})
		case 2:
			if len(raw) < base64MinSecret {
				continue
			}
			prefix := strings.Repeat("p", int(r/6)%5)
			enc := base64.StdEncoding
			if r&0x80 != 0 {
				enc = base64.RawURLEncoding
			}
			b64 := enc.EncodeToString([]byte(prefix + raw + "\"}"))
			// The core: the characters that depend on raw alone.
			a := len(prefix) % 3
			from := 4*(len(prefix)/3) + (8*a+5)/6
			to := 4*(len(prefix)/3) + 8*(a+len(raw))/6
			// Each character spelled the same way, as an encoder would.
			pick := []byte{0}
			if len(arg) > 0 {
				pick[0] = arg[0]
			}
			var start, end int
			for j, c := range b64 {
				if j == from {
					start = t.Len()
				}
				t.WriteString(spellWith(string(c), pick))
				if j == to-1 {
					end = t.Len()
				}
			}
			spans = append(spans, span{start, end})
		case 3:
			t.WriteString(raw[:int(r/6)%len(raw)])
		case 4:
			t.WriteString("\n")
		case 5:
			t.WriteString(`\`)
		}
	}
	return t.Bytes(), spans
}

// isMask reports whether c can be a byte of a mask.
func isMask(c byte) bool { return strings.IndexByte("[REDACTED]*", c) >= 0 }

// FuzzScrubWriter checks, for fuzzed secrets and texts holding spelled
// occurrences of them, streamed through a Writer in fuzzed writes,
// flushes and timed releases:
//   - every occurrence is masked (by MaskBytes; by the Writer unless a
//     timed release fell inside it), and nothing else changes;
//   - the output has the input's length;
//   - the writes and flushes the client sees, and the timers armed, are
//     the same for a secret of the same length with other content: what
//     is released when depends on line breaks and lengths only.
func FuzzScrubWriter(f *testing.F) {
	f.Add([]byte("AKIA/Ab+cd=EFGH"), []byte("some text \\ & % more"), []byte{1, 0, 7, 3, 4, 2, 9, 1, 130, 5}, []byte{0, 4, 1, 2, 8, 1, 3, 2})
	f.Add([]byte{39, 40, 41, 42, 43}, []byte("{\"k\":\"\"}"), []byte{1, 1, 1, 13, 19, 25, 31}, []byte{4, 8, 12, 1, 2})
	f.Add([]byte("sk_live_é😀"), []byte("data: x\n\n"), []byte{0, 6, 1, 2, 14, 4, 1}, []byte{3, 1, 2, 7, 1, 2})
	f.Fuzz(func(t *testing.T, seed, filler, recipe, ops []byte) {
		if len(recipe) == 0 {
			return
		}
		raw := fuzzSecret(seed)
		in, spans := fuzzText(raw, filler, recipe)
		s := New([]secret.Value{secret.New("k", raw)})

		// The matcher finds every occurrence.
		covered := make([]bool, len(in))
		for _, m := range s.scan(in, 0, len(in), false, false, nil) {
			for q := m.start; q < m.end; q++ {
				covered[q] = true
			}
		}
		for _, sp := range spans {
			for q := sp.start; q < sp.end; q++ {
				if !covered[q] {
					t.Fatalf("secret %q: occurrence %q at %d not found (byte %d)", raw, in[sp.start:sp.end], sp.start, q)
				}
			}
		}
		whole := bytes.Clone(in)
		s.MaskBytes(whole)
		checkMasked(t, in, whole, covered, "MaskBytes")

		run := func(s *Scrubber) (out []byte, events []string, points []int) {
			c := &clock{}
			withClock(s, c)
			rec := &recorder{}
			w := s.NewWriter(rec, rec.flush)
			pos := 0
			for i, op := range ops {
				switch op % 4 {
				case 0, 3:
					n := min(len(in)-pos, 1+int(op/4)%64+int(op%4/3)*300)
					if _, err := w.Write(in[pos : pos+n]); err != nil {
						t.Fatal(err)
					}
					pos += n
				case 1:
					if err := w.Flush(); err != nil {
						t.Fatal(err)
					}
				case 2:
					if c.fire() > 0 {
						points = append(points, pos)
					}
				}
				events = append(events, rec.take()...)
				c.mu.Lock()
				events = append(events, fmt.Sprintf("op %d: %d timers", i, len(c.armed)))
				c.mu.Unlock()
			}
			if _, err := w.Write(in[pos:]); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			return rec.out.Bytes(), append(events, rec.take()...), points
		}
		out, events, points := run(s)
		if len(out) != len(in) {
			t.Fatalf("output %d bytes, input %d", len(out), len(in))
		}
		if len(points) == 0 && !bytes.Equal(out, whole) {
			t.Fatalf("streamed output differs from MaskBytes:\n%q\n%q", out, whole)
		}
		for q := range in {
			if !covered[q] && out[q] != in[q] {
				t.Fatalf("byte %d changed but is in no match", q)
			}
		}
		for _, sp := range spans {
			inside := false
			for _, p := range points {
				inside = inside || sp.start < p && p < sp.end
			}
			for q := sp.start; q < sp.end && !inside; q++ {
				if !isMask(out[q]) {
					t.Fatalf("occurrence at %d streamed unmasked: %q", sp.start, out[sp.start:sp.end])
				}
			}
		}

		other := sameShape(raw)
		_, otherEvents, _ := run(New([]secret.Value{secret.New("k", other)}))
		if diff := cmp.Diff(events, otherEvents); diff != "" {
			t.Fatalf("framing depends on the secret's content (-%q +%q):\n%s", raw, other, diff)
		}
	})
}

// checkMasked asserts got is in with every covered byte a mask byte and
// every other byte unchanged.
func checkMasked(t *testing.T, in, got []byte, covered []bool, what string) {
	t.Helper()
	if len(got) != len(in) {
		t.Fatalf("%s: %d bytes for %d", what, len(got), len(in))
	}
	for q := range in {
		switch {
		case covered[q] && !isMask(got[q]):
			t.Fatalf("%s: byte %d of a match is %q", what, q, got[q])
		case !covered[q] && got[q] != in[q]:
			t.Fatalf("%s: byte %d outside any match changed", what, q)
		}
	}
}
