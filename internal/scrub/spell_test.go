package scrub

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"net/url"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/keyward/keyward/internal/secret"
)

// A spelling writes one character as some encoder does. The test side
// spells on its own, from the encoders' rules, never with the matcher's
// code, so a spelling the matcher misses shows up as a leak.
type spelling struct {
	name string
	// of returns r spelled, or "" when this spelling does not apply to r.
	of func(r rune) string
}

func pct(format string) func(rune) string {
	return func(r rune) string {
		var b strings.Builder
		for _, c := range []byte(string(r)) {
			fmt.Fprintf(&b, format, c)
		}
		return b.String()
	}
}

// jsonU spells r as JSON \u escapes (a surrogate pair above U+FFFF).
func jsonUOf(prefix, format string) func(rune) string {
	return func(r rune) string {
		units := []uint16{uint16(r)}
		if r > 0xFFFF {
			a, b := utf16.EncodeRune(r)
			units = []uint16{uint16(a), uint16(b)}
		}
		var s strings.Builder
		for _, u := range units {
			s.WriteString(prefix + fmt.Sprintf(format, u))
		}
		return s.String()
	}
}

func only(c rune, s string) func(rune) string {
	return func(r rune) string {
		if r == c {
			return s
		}
		return ""
	}
}

func ascii(f func(rune) string) func(rune) string {
	return func(r rune) string {
		if r >= utf8.RuneSelf {
			return ""
		}
		return f(r)
	}
}

// spellings is every per-character spelling the package promises.
var spellings = []spelling{
	{"raw", func(r rune) string { return string(r) }},
	{"percent upper", pct("%%%02X")},
	{"percent lower", pct("%%%02x")},
	{"json u lower", jsonUOf(`\u`, "%04x")},
	{"json u upper", jsonUOf(`\u`, "%04X")},
	{"json u twice escaped", jsonUOf(`\\u`, "%04x")},
	{"html decimal", func(r rune) string { return fmt.Sprintf("&#%d;", r) }},
	{"html decimal zero padded", func(r rune) string { return fmt.Sprintf("&#%07d;", r) }},
	{"html hex lower", func(r rune) string { return fmt.Sprintf("&#x%x;", r) }},
	{"html hex upper", func(r rune) string { return fmt.Sprintf("&#x%X;", r) }},
	{"html hex capital X mixed case", func(r rune) string {
		h := fmt.Sprintf("%x", r)
		if len(h) > 1 {
			h = strings.ToUpper(h[:1]) + h[1:]
		}
		return "&#X" + h + ";"
	}},
	{"html hex zero padded", func(r rune) string { return fmt.Sprintf("&#x%06X;", r) }},
	{"json slash", only('/', `\/`)},
	{"json slash twice escaped", only('/', `\\/`)},
	{"json quote", only('"', `\"`)},
	{"json quote twice escaped", only('"', `\\\"`)},
	{"json backslash", only('\\', `\\`)},
	{"json backslash twice escaped", only('\\', `\\\\`)},
	{"json newline", only('\n', `\n`)},
	{"json tab twice escaped", only('\t', `\\t`)},
	{"html amp", only('&', "&amp;")},
	{"html lt", only('<', "&lt;")},
	{"html gt", only('>', "&gt;")},
	{"html quot", only('"', "&quot;")},
	{"html apos", only('\'', "&apos;")},
	{"form plus for space", only(' ', "+")},
	{"raw ascii", ascii(func(r rune) string { return string(r) })},
}

// classes are characters of every kind a secret holds.
var classes = []struct{ name, chars string }{
	{"letters", "Az"},
	{"digits", "09"},
	{"base64 punctuation", "+/="},
	{"url punctuation", "-_.~"},
	{"quote and backslash", `"\`},
	{"html specials", `&<>'`},
	{"percent, hash, semicolon", "%#;"},
	{"space", " "},
	{"control", "\t"},
	{"non-ASCII", "é€😀"},
}

// TestSpellings: a secret with one character of each class spelled in
// each spelling, the others raw, is replaced whole; so is the secret with
// every character spelled the same way where the spelling applies.
func TestSpellings(t *testing.T) {
	for _, cl := range classes {
		for _, c := range cl.chars {
			raw := "KEY" + string(c) + "x9Z"
			s := New([]secret.Value{secret.New("k", raw)})
			for _, sp := range spellings {
				spelled := sp.of(c)
				if spelled == "" {
					continue
				}
				t.Run(cl.name+"/"+fmt.Sprintf("%U", c)+"/"+sp.name, func(t *testing.T) {
					in := "a=KEY" + spelled + "x9Z;"
					if got := s.String(in); got != "a="+Redacted+";" {
						t.Errorf("String(%q) = %q", in, got)
					}
					b := []byte(in)
					s.MaskBytes(b)
					if want := "a=" + string(maskOf(len(in)-3)) + ";"; string(b) != want {
						t.Errorf("MaskBytes(%q) = %q, want %q", in, b, want)
					}
				})
			}
		}
	}
}

// whole are spellings of whole strings by real encoders and by spelling
// every character the same way.
var whole = []struct {
	name string
	of   func(string) string
}{
	{"Go json", func(s string) string { j, _ := json.Marshal(s); return string(j[1 : len(j)-1]) }},
	{"Go json twice", func(s string) string {
		j, _ := json.Marshal(s)
		jj, _ := json.Marshal(string(j))
		return string(jj[3 : len(jj)-3])
	}},
	{"query escape", url.QueryEscape},
	{"path escape", url.PathEscape},
	{"python quote (keeps /)", func(s string) string { return strings.ReplaceAll(url.PathEscape(s), "%2F", "/") }},
	{"query escape lower case", func(s string) string {
		return lowerEscapes(url.QueryEscape(s))
	}},
	{"html escape", html.EscapeString},
	{"gson (escapes = and more)", func(s string) string {
		return gsonLike(s, "<>&='", "%04x")
	}},
	{".NET (escapes + and more, upper hex)", func(s string) string {
		return gsonLike(s, "<>&'\"+", "%04X")
	}},
	{"php json (\\/)", func(s string) string {
		j, _ := json.Marshal(s)
		return strings.ReplaceAll(string(j[1:len(j)-1]), "/", `\/`)
	}},
}

// gsonLike JSON-escapes s with the runes in esc written as \u escapes.
func gsonLike(s, esc, format string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case strings.ContainsRune(esc, r):
			fmt.Fprintf(&b, `\u`+format, r)
		case r == '"' || r == '\\':
			b.WriteString(`\` + string(r))
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// lowerEscapes lower-cases the hex digits of percent escapes.
func lowerEscapes(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1] = byte(strings.ToLower(string(b[i+1]))[0])
			b[i+2] = byte(strings.ToLower(string(b[i+2]))[0])
		}
	}
	return string(b)
}

// awsLike is a base64-style key, the kind that came back unscrubbed.
const awsLike = "AKIA/Ab+cd=EFGHijkl/MNOP+qrst="

// TestWholeSpellings: whole secrets as real encoders write them, and
// with every character in one spelling.
func TestWholeSpellings(t *testing.T) {
	secrets := []string{awsLike, `sk_live_CANARY/"42"+x&y`, "pä ss\\wörd😀<>"}
	for _, raw := range secrets {
		s := New([]secret.Value{secret.New("k", raw)})
		var forms []struct{ name, text string }
		for _, w := range whole {
			forms = append(forms, struct{ name, text string }{w.name, w.of(raw)})
		}
		for _, sp := range spellings {
			var b strings.Builder
			for _, r := range raw {
				if x := sp.of(r); x != "" {
					b.WriteString(x)
				} else {
					b.WriteRune(r)
				}
			}
			forms = append(forms, struct{ name, text string }{"all " + sp.name, b.String()})
		}
		for i, f := range forms {
			t.Run(fmt.Sprintf("secret %d/%s", len(raw), f.name), func(t *testing.T) {
				in := "<" + f.text + ">"
				if got := s.String(in); got != "<"+Redacted+">" {
					t.Errorf("form %d (%q): String = %q", i, f.text, got)
				}
				if !s.Contains(f.text) {
					t.Errorf("form %d: Contains = false", i)
				}
			})
		}
	}
}

// TestBase64: base64 of text holding the secret, at every alignment, in
// both alphabets, padded or not, and then JSON-spelled, is masked over
// the part that depends on the secret.
func TestBase64(t *testing.T) {
	s := New([]secret.Value{secret.New("aws", awsLike)})
	encs := map[string]*base64.Encoding{"std": base64.StdEncoding, "url": base64.URLEncoding, "raw url": base64.RawURLEncoding}
	for name, enc := range encs {
		for _, prefix := range []string{"", "u", "us", "user:", "user:x", "{\"key\":\""} {
			for _, sp := range []struct {
				name string
				of   func(string) string
			}{
				{"plain", func(s string) string { return s }},
				{"php json", func(s string) string { return strings.ReplaceAll(s, "/", `\/`) }},
				{"dotnet json", func(s string) string { return strings.ReplaceAll(s, "+", `\u002B`) }},
				{"twice escaped", func(s string) string { return strings.ReplaceAll(s, "/", `\\/`) }},
			} {
				t.Run(fmt.Sprintf("%s/prefix %d/%s", name, len(prefix), sp.name), func(t *testing.T) {
					b64 := enc.EncodeToString([]byte(prefix + awsLike + "\"}"))
					in := "Basic " + sp.of(b64)
					got := s.String(in)
					if !strings.Contains(got, Redacted) {
						t.Fatalf("no mask in %q", got)
					}
					// What is left decodes to at most a few bits of the
					// secret on each side of the core.
					left := strings.Replace(got, Redacted, "", 1)
					if len(left) > len("Basic ")+len(sp.of(enc.EncodeToString([]byte(prefix))))+8 {
						t.Errorf("too much left around the mask: %q", got)
					}
				})
			}
		}
	}
	t.Run("Basic credential", func(t *testing.T) {
		h := "Basic " + base64.StdEncoding.EncodeToString([]byte("api:"+awsLike))
		if got := s.String(h); !strings.Contains(got, Redacted) {
			t.Errorf("String = %q", got)
		}
	})
	t.Run("a short secret has no base64 core", func(t *testing.T) {
		short := New([]secret.Value{secret.New("s", "abcdef")})
		if n := len(short.pats); n != 1 {
			t.Errorf("%d patterns for a 6-byte secret, want the raw one only", n)
		}
		long := New([]secret.Value{secret.New("s", "abcdefg")})
		for _, p := range long.pats[1:] {
			if len(p.units) < minBase64 {
				t.Errorf("core of %d characters", len(p.units))
			}
		}
	})
}

// TestNotSecrets: near misses stay as they are.
func TestNotSecrets(t *testing.T) {
	s := New([]secret.Value{secret.New("k", "KEY=x9Z/"), secret.New("short", "a+b")})
	for _, in := range []string{
		"KEY=x9Z",               // a prefix
		"KEY=x9",                // a shorter prefix
		"KEY%3x9Z/",             // a broken escape
		"KEY%3Gx9Z/",            // not hex
		`KEY\u03dx9Z/`,          // three hex digits
		`KEY\U003dx9Z/`,         // JSON's u is lower case
		"KEY&#00000061;x9Z/",    // eight decimal digits
		"KEY&#x000003D;x9Z/",    // seven hex digits
		"KEY&#61x9Z/",           // no semicolon
		"KEY&eq;x9Z/",           // not one of the five named references
		"key=x9z/",              // case matters in a body
		"KEY=x9Z\n/",            // a line break inside
		"a+b a%2Bb a b",         // a secret shorter than MinLen
		"KEY=\\\\\\\\\\x9Z/",    // backslashes where none belong
		"KEY&amp;amp;x9Z/",      // an escape of an escape of something else
		"KEY%253Dx9Z/",          // URL-encoded twice: out of scope
		"KEY=x9Z%2",             // truncated
		"",                      // nothing
		strings.Repeat("%", 64), // introducers only
	} {
		if got := s.String(in); got != in {
			t.Errorf("String(%q) = %q, want it unchanged", in, got)
		}
	}
	// The base64 core of KEY=x9Z/ at alignment 0 is "S0VZPXg5Wi" plus a
	// character; cut before it, nothing is masked.
	if got := s.String("S0VZPXg"); got != "S0VZPXg" {
		t.Errorf("a cut core was masked: %q", got)
	}
}

// TestHeaderNameFold: a header name holds the secret in another case.
func TestHeaderNameFold(t *testing.T) {
	s := New([]secret.Value{secret.New("k", "Ghp_Canary")})
	if got := s.scan(bytesOf("X-Ghp_canary"), 0, 12, true, true, nil); len(got) == 0 {
		t.Error("folded header name not found")
	}
	if s.Contains("X-Ghp_canary") {
		t.Error("a body match ignored case")
	}
}

// TestOverlappingMatches: a secret that starts inside another match (an
// attacker's text that ends like the secret begins) is masked whole.
func TestOverlappingMatches(t *testing.T) {
	s := New([]secret.Value{secret.New("k", "abcXabc")})
	in := "abcXabcXabc"
	b := []byte(in)
	s.MaskBytes(b)
	if string(b) != strings.Repeat("*", len(in)) {
		t.Errorf("MaskBytes(%q) = %q: part of the second secret survived", in, b)
	}
	if got := s.String(in); got != Redacted {
		t.Errorf("String = %q", got)
	}
}

// TestBranchingIsPolynomial: a secret of backslashes against a text of
// backslashes can be read in exponentially many ways (each unit as "\",
// "\\\\" or "\\\\\\\\"); memoised, it takes a moment (unmemoised,
// 3^16 paths per start, it would not finish).
func TestBranchingIsPolynomial(t *testing.T) {
	raw := strings.Repeat(`\`, 16) + "&%x"
	s := New([]secret.Value{secret.New("k", raw)})
	in := []byte(strings.Repeat(`\`, 1<<10) + "&amp;%25y")
	s.MaskBytes(in)
	if strings.Contains(string(in), "*") {
		t.Error("masked text that is not the secret")
	}
	in = []byte("<" + strings.Repeat(`\\`, 16) + "&amp;%25x>")
	s.MaskBytes(in)
	if strings.Trim(string(in[1:len(in)-1]), "[REDACT]*") != "" {
		t.Errorf("MaskBytes = %q", in)
	}
}
