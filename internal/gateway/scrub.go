package gateway

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/keyward/keyward/internal/secret"
)

// scrubber replaces secret values in text the gateway emits. Each secret
// is looked for raw and in the escaped forms it takes inside URLs, since
// an upstream echoing a request URL (in Location, or an error) quotes it
// escaped.
type scrubber struct {
	needles  []string
	replacer *strings.Replacer
	masker   *strings.Replacer // needle -> "[secret:NAME]", for keyward test
}

// minScrubLen avoids replacing every "a" in a response when someone uses
// a one-letter test secret; such a secret is no secret anyway.
const minScrubLen = 4

func newScrubber(secrets []secret.Value) *scrubber {
	s := &scrubber{}
	names := map[string]string{}
	for _, v := range secrets {
		raw := v.Reveal()
		for _, form := range []string{raw, url.QueryEscape(raw), url.PathEscape(raw)} {
			if _, seen := names[form]; len(form) >= minScrubLen && !seen {
				names[form] = v.Name()
				s.needles = append(s.needles, form)
			}
		}
	}
	// Longest first, so a secret containing another is replaced whole.
	for i := range s.needles {
		for j := i + 1; j < len(s.needles); j++ {
			if len(s.needles[j]) > len(s.needles[i]) {
				s.needles[i], s.needles[j] = s.needles[j], s.needles[i]
			}
		}
	}
	pairs := make([]string, 0, 2*len(s.needles))
	masks := make([]string, 0, 2*len(s.needles))
	for _, n := range s.needles {
		pairs = append(pairs, n, secret.Redacted)
		masks = append(masks, n, "[secret:"+names[n]+"]")
	}
	s.replacer = strings.NewReplacer(pairs...)
	s.masker = strings.NewReplacer(masks...)
	return s
}

// contains reports whether text holds any secret.
func (s *scrubber) contains(text string) bool {
	for _, n := range s.needles {
		if strings.Contains(text, n) {
			return true
		}
	}
	return false
}

// string returns text with every secret replaced by [REDACTED].
func (s *scrubber) string(text string) string {
	if !s.contains(text) {
		return text
	}
	return s.replacer.Replace(text)
}

// headers scrubs every header value in place.
func (s *scrubber) headers(h http.Header) {
	if len(s.needles) == 0 {
		return
	}
	for name, vs := range h {
		for i, v := range vs {
			if s.contains(v) {
				vs = append([]string(nil), vs...)
				vs[i] = s.replacer.Replace(v)
				h[name] = vs
			}
		}
	}
}
