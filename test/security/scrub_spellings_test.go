package security_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
	"github.com/keyward/keyward/internal/scrub"
)

// awsKey is a base64-style key, as AWS and Azure issue them: "+", "/"
// and "=" are the characters encoders disagree on.
const awsKey = "AKIA/Ab+cd=EFGHijkl/MNOP+qrst="

// spellConfig sends awsKey upstream in a header on every request.
const spellConfig = `
secrets:
  aws: { env: AWS_KEY }
routes:
  - name: spell
    path: /spell/{kind}
    upstream: "{{UP}}/spell/{kind}"
    headers: { set: { X-Api-Key: "{secret.aws}" } }
`

// uEscape writes each rune of s whose byte is in which as a JSON \u
// escape in format, the others as they are (quotes and backslashes
// escaped).
func uEscape(s, which, format string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case which == "" || strings.ContainsRune(which, r):
			fmt.Fprintf(&b, `\u`+format, r)
		case r == '"' || r == '\\':
			b.WriteString(`\` + string(r))
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// each spells every rune of s with f.
func each(s string, f func(r rune) string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteString(f(r))
	}
	return b.String()
}

// spelled are the ways encoders wrote the key back, the decoder that
// recovers it from each (nil: none, the test only searches the text), and
// whether the form can go in a URL.
var spelled = []struct {
	name   string
	of     func(string) string
	decode func(string) string
}{
	{"Gson (\\u003d for =)", func(s string) string { return uEscape(s, "=", "%04x") }, unJSON},
	{".NET (\\u002B for +)", func(s string) string { return uEscape(s, "+", "%04X") }, unJSON},
	{"every character \\u-escaped, lower hex", func(s string) string { return uEscape(s, "", "%04x") }, unJSON},
	{"every character \\u-escaped, upper hex", func(s string) string { return uEscape(s, "", "%04X") }, unJSON},
	{"PHP json_encode (\\/)", func(s string) string { return strings.ReplaceAll(s, "/", `\/`) }, unJSON},
	{"JSON quoted twice (\\\\u003d)", func(s string) string {
		return strings.ReplaceAll(uEscape(s, "=", "%04x"), `\`, `\\`)
	}, func(s string) string { return unJSON(unJSON(s)) }},
	{"JSON quoted twice (\\\\/)", func(s string) string { return strings.ReplaceAll(s, "/", `\\/`) }, func(s string) string { return unJSON(unJSON(s)) }},
	{"Python quote (keeps /)", func(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "%2F", "/") }, unURL},
	{"percent-encoded, lower case", func(s string) string { return lowerHex(url.QueryEscape(s)) }, unURL},
	{"every character percent-encoded", func(s string) string { return each(s, func(r rune) string { return fmt.Sprintf("%%%02X", r) }) }, unURL},
	{"every character percent-encoded, lower case", func(s string) string { return each(s, func(r rune) string { return fmt.Sprintf("%%%02x", r) }) }, unURL},
	{"HTML decimal references", func(s string) string { return each(s, func(r rune) string { return fmt.Sprintf("&#%d;", r) }) }, html.UnescapeString},
	{"HTML hex references", func(s string) string { return each(s, func(r rune) string { return fmt.Sprintf("&#x%X;", r) }) }, html.UnescapeString},
	{"HTML references with leading zeros, &#X", func(s string) string {
		return strings.NewReplacer("+", "&#0043;", "/", "&#X2f;", "=", "&#x003D;").Replace(s)
	}, html.UnescapeString},
	{"base64 of user:key (Basic)", func(s string) string { return base64.StdEncoding.EncodeToString([]byte("user:" + s)) }, unBase64},
	{"base64url of a JSON document", func(s string) string {
		return base64.RawURLEncoding.EncodeToString([]byte(`{"key":"` + s + `"}`))
	}, unBase64},
	{"base64 in JSON with \\/ and \\u002B", func(s string) string {
		b := base64.StdEncoding.EncodeToString([]byte("ab:" + s))
		return strings.NewReplacer("/", `\/`, "+", `\u002B`).Replace(b)
	}, func(s string) string { return unBase64(unJSON(s)) }},
}

// lowerHex lower-cases the hex digits of the percent escapes in s.
func lowerHex(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1], b[i+2] = lower(b[i+1]), lower(b[i+2])
		}
	}
	return string(b)
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func unJSON(s string) string {
	var out string
	if json.Unmarshal([]byte(`"`+s+`"`), &out) != nil {
		return s
	}
	return out
}

func unURL(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}

func unBase64(s string) string {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return string(b)
		}
	}
	return s
}

// spellUpstream echoes the key it received, spelled as the kind says, in
// a JSON body (/spell/body/N) or in a redirect's Location
// (/spell/location/N).
func spellUpstream(w http.ResponseWriter, r *http.Request) {
	where, n, _ := strings.Cut(path.Base(r.URL.Path), "-")
	i, err := strconv.Atoi(n)
	if err != nil || i < 0 || i >= len(spelled) {
		http.Error(w, "bad kind", http.StatusBadRequest)
		return
	}
	v := spelled[i].of(r.Header.Get("X-Api-Key"))
	if where == "location" {
		w.Header().Set("Location", locationPrefix+v)
		w.WriteHeader(http.StatusFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, bodyPrefix+v+bodySuffix)
}

// What the echo puts around the spelled key.
const (
	locationPrefix = "https://app.example.com/callback?token="
	bodyPrefix     = `{"received":"`
	bodySuffix     = `"}`
)

// TestScrubSpellings: an upstream that writes the key back in a spelling
// the old list of forms did not have (Gson's \u003d, .NET's \u002B,
// Python's quote, lower-case or complete percent-encoding, complete \u
// escaping, HTML references, JSON quoted twice, base64) gets it masked, in
// a body and in Location: none of the spellings, decoded, gives the key.
func TestScrubSpellings(t *testing.T) {
	h := gatewaytest.New(t, spellConfig, spellUpstream, func(o *gateway.Options) {
		o.Getenv = func(k string) string {
			if k == "AWS_KEY" {
				return awsKey
			}
			return gatewaytest.Getenv(k)
		}
	})
	t.Cleanup(h.Scan)
	for i, sp := range spelled {
		for _, where := range []string{"body", "location"} {
			t.Run(where+"/"+sp.name, func(t *testing.T) {
				res := h.Get(fmt.Sprintf("/spell/%s-%d", where, i), nil)
				got := only(t, h)
				if got.Header.Get("X-Api-Key") != awsKey {
					t.Fatal("the key did not go upstream")
				}
				var text string
				var values []string // the spelled key as sent, and decoded
				switch where {
				case "location":
					if res.Status != http.StatusFound {
						t.Fatalf("status %d, want 302", res.Status)
					}
					text = res.Header.Get("Location")
					v := strings.TrimPrefix(text, locationPrefix)
					values = []string{v, sp.decode(v)}
				default:
					if res.Status != http.StatusOK {
						t.Fatalf("status %d, want 200", res.Status)
					}
					text = res.Body
					var b struct{ Received string }
					if err := json.Unmarshal([]byte(text), &b); err != nil {
						t.Fatalf("the masked body is not JSON any more: %v", err)
					}
					v := strings.TrimSuffix(strings.TrimPrefix(text, bodyPrefix), bodySuffix)
					values = []string{v, sp.decode(v), b.Received, sp.decode(b.Received)}
				}
				if !strings.Contains(text, scrub.Redacted) {
					t.Errorf("no mask in the %s: did the upstream echo?", where)
				}
				if strings.Contains(text, sp.of(awsKey)) {
					t.Errorf("the %s holds the key as the upstream wrote it", where)
				}
				// Decoded as the encoder wrote it, what is left gives
				// neither the key nor half of it.
				for _, v := range values {
					if strings.Contains(v, awsKey[:len(awsKey)/2]) || strings.Contains(v, awsKey[len(awsKey)/2:]) {
						t.Errorf("the %s decodes to (half) the key", where)
					}
				}
			})
		}
	}
}
