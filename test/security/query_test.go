package security_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/gatewaytest"
)

// TestQueryCannotOverrideSetParam: the parameter the gateway sets (the
// Maps key) reaches the upstream exactly once, with the configured value,
// whatever spelling of its name the client sends alongside.
func TestQueryCannotOverrideSetParam(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	tests := []struct{ name, query string }{
		{"duplicate of the set param", "key=evil"},
		{"set param sent twice", "key=evil&key=evil2"},
		{"upper-case name", "KEY=evil"},
		{"mixed-case name", "Key=evil&kEy=evil"},
		{"PHP/Rails bracketed name", "key[]=evil&key[0]=evil"},
		{"percent-encoded brackets", "key%5B%5D=evil"},
		{"percent-encoded name", "%6Bey=evil&%6B%65%79=evil"},
		{"trailing space in name", "key+=evil&key%20=evil"},
		{"leading space in name", "+key=evil"},
		{"name without a value", "key"},
		{"empty value", "key="},
		{"HPP: a second key hidden in an allowed value", "address=Main%26key%3Devil"},
		{"HPP: repeated allowed param", "address=a&address=b&key=evil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ok(t, h, h.Get("/geocode?"+tt.query, nil))
			q, err := url.ParseQuery(s.RawQuery)
			if err != nil {
				t.Fatalf("upstream query does not parse: %v", err)
			}
			if got := q["key"]; len(got) != 1 || got[0] != gatewaytest.Maps {
				t.Errorf("upstream key %q, want exactly the configured one", redact(got))
			}
			for name := range q {
				if name != "key" && name != "address" {
					t.Errorf("upstream got parameter %q", name)
				}
			}
		})
	}
	t.Run("HPP value stays inside its parameter", func(t *testing.T) {
		s := ok(t, h, h.Get("/geocode?address=Main%26key%3Devil%23x", nil))
		q, _ := url.ParseQuery(s.RawQuery)
		if diff := cmp.Diff([]string{"Main&key=evil#x"}, q["address"]); diff != "" {
			t.Errorf("address (-want +got):\n%s", diff)
		}
	})
	t.Run("raw # in the request target is refused", func(t *testing.T) {
		// A fragment never belongs in a request target; servers disagree
		// on whether "#&key=evil" is query data or dropped. The framing
		// guard refuses it before anything parses the query.
		refused(t, h, h.Get("/geocode?address=a#&key=evil", nil), http.StatusBadRequest, "bad_framing")
	})
}

// TestQueryRefused: a query keyward cannot read one way only is refused
// before the upstream is called.
func TestQueryRefused(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	tests := []struct{ name, query string }{
		{"semicolon separator (key=evil to a server that splits on ;)", "address=a;key=evil"},
		{"encoded-name semicolon", "address=a&x;key=evil"},
		{"invalid escape in a value", "address=%zz"},
		{"invalid escape in a name", "%zzkey=evil"},
		{"truncated escape", "address=%4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			refused(t, h, h.Get("/geocode?"+tt.query, nil), http.StatusBadRequest, "invalid_query")
		})
	}
}

// TestQueryFiltered: parameters a route does not allow never reach the
// upstream, however many there are.
func TestQueryFiltered(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	t.Run("unlisted parameters are dropped", func(t *testing.T) {
		s := ok(t, h, h.Get("/my-repos?page=2&access_token=evil&client_secret=x&callback=evil", nil))
		if s.RawQuery != "page=2" {
			t.Errorf("upstream query %q, want page=2", s.RawQuery)
		}
		authorizedOnce(t, s)
	})
	t.Run("huge query of unlisted parameters", func(t *testing.T) {
		q := strings.Repeat("x=1&", 12<<10) + "page=3"
		s := ok(t, h, h.Get("/my-repos?"+q, nil))
		if s.RawQuery != "page=3" {
			t.Errorf("upstream query %q, want page=3", s.RawQuery)
		}
	})
	t.Run("huge value of an allowed parameter is re-encoded, key still once", func(t *testing.T) {
		v := strings.Repeat("%26key%3Devil", 3000)
		s := ok(t, h, h.Get("/geocode?address="+v, nil))
		q, _ := url.ParseQuery(s.RawQuery)
		if len(q["key"]) != 1 || len(q) != 2 {
			t.Errorf("upstream query has %d keys and %d params", len(q["key"]), len(q))
		}
	})
	t.Run("CR LF in a value stays encoded", func(t *testing.T) {
		s := ok(t, h, h.Get("/geocode?address=a%0d%0aX-Injected:%201", nil))
		if _, bad := s.Header["X-Injected"]; bad || strings.ContainsAny(s.RawQuery, "\r\n") {
			t.Errorf("CR LF decoded into the upstream request: query %q", s.RawQuery)
		}
	})
}
