package security_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// cacheVariantsConfig caches routes whose upstream answers by what it
// receives: headers the client sends (forwarded by default or by
// headers.allow), and a query parameter and a header the gateway sets
// from a path parameter that is not in the upstream path.
const cacheVariantsConfig = `
secrets:
  github: { env: GITHUB_TOKEN }
routes:
  - name: reflect
    path: /reflect
    upstream: "{{UP}}/api/reflect"
    query: { allow: [page] }
    headers:
      allow: [X-Api-Version]
      set: { Authorization: "Bearer {secret.github}" }
    cache: { ttl: 1h }
  - name: weather
    path: /weather/{city}
    upstream: "{{UP}}/api/weather"
    query: { set: { q: "{city}" } }
    cache: { ttl: 1h }
  - name: tenant
    path: /tenant/{tenant}/data
    upstream: "{{UP}}/api/data"
    headers: { set: { X-Tenant: "{tenant}" } }
    cache: { ttl: 1h }
`

// reflectingUpstream answers with what it was sent that could choose its
// answer: the variant headers, the query and the body. The credential is
// not reflected.
func reflectingUpstream(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Vary", "Accept, Accept-Language, X-Api-Version")
	_, _ = io.WriteString(w, "accept="+r.Header.Get("Accept")+
		" lang="+r.Header.Get("Accept-Language")+
		" version="+r.Header.Get("X-Api-Version")+
		" tenant="+r.Header.Get("X-Tenant")+
		" query="+r.URL.RawQuery+
		" body="+string(body))
}

// TestCacheForwardedHeadersAreKeyed: an attacker's request primes the
// cache of a route whose upstream reflects a forwarded header; a later
// client sending its own value (or none) gets its own variant from the
// upstream, not the attacker's, and is then served from the cache.
// Before KeyFor the key held only the configured vary headers, so the
// attacker's variant was served to everyone for the TTL.
func TestCacheForwardedHeadersAreKeyed(t *testing.T) {
	tests := []struct {
		name     string
		header   string
		attacker string
		victim   string // "" sends none
	}{
		{"accept", "Accept", "text/evil", "application/json"},
		{"accept, victim sends none", "Accept", "text/evil", ""},
		{"accept-language", "Accept-Language", "xx-EVIL", "en-GB"},
		{"headers.allow", "X-Api-Version", "evil", "2022-11-28"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, cacheVariantsConfig, reflectingUpstream)
			attack := h.Get("/reflect?page=1", http.Header{tt.header: {tt.attacker}})
			if attack.Status != http.StatusOK || !strings.Contains(attack.Body, tt.attacker) {
				t.Fatalf("attacker: %d %q: the upstream did not reflect the header", attack.Status, attack.Body)
			}
			only(t, h)

			var vh http.Header
			if tt.victim != "" {
				vh = http.Header{tt.header: {tt.victim}}
			}
			victim := h.Get("/reflect?page=1", vh)
			if strings.Contains(victim.Body, tt.attacker) {
				t.Fatalf("the victim got the attacker's variant: %q (Cache-Status %q)", victim.Body, victim.Header.Get("Cache-Status"))
			}
			if victim.Status != http.StatusOK {
				t.Fatalf("victim: %d %q", victim.Status, victim.Body)
			}
			s := only(t, h)
			if got := s.Header.Get(tt.header); got != tt.victim {
				t.Errorf("the upstream got %s %q, want the victim's %q", tt.header, got, tt.victim)
			}

			// The route still caches: the victim's variant is now a hit.
			again := h.Get("/reflect?page=1", vh)
			if !strings.HasPrefix(again.Header.Get("Cache-Status"), "keyward; hit") || again.Body != victim.Body {
				t.Errorf("repeat: %q %q, want a hit with the victim's body", again.Header.Get("Cache-Status"), again.Body)
			}
			if got := h.Up.Take(); len(got) != 0 {
				t.Errorf("repeat reached the upstream: %s", targets(got))
			}
		})
	}
}

// TestCacheParametersTheGatewaySetsAreKeyed: a path parameter that goes
// upstream only through query.set or headers.set, not in the upstream
// path, still tells entries apart: the key is what the upstream receives.
func TestCacheParametersTheGatewaySetsAreKeyed(t *testing.T) {
	tests := []struct {
		name       string
		first      string
		second     string
		wantSecond string
	}{
		{"query.set", "/weather/paris", "/weather/london", "query=q=london"},
		{"headers.set", "/tenant/acme/data", "/tenant/globex/data", "tenant=globex"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, cacheVariantsConfig, reflectingUpstream)
			ok(t, h, h.Get(tt.first, nil))
			second := h.Get(tt.second, nil)
			if !strings.Contains(second.Body, tt.wantSecond) {
				t.Errorf("%s got %q (Cache-Status %q), want its own answer (%s)", tt.second, second.Body, second.Header.Get("Cache-Status"), tt.wantSecond)
			}
			if got := h.Up.Take(); len(got) != 1 {
				t.Errorf("%s: upstream received %d requests, want 1", tt.second, len(got))
			}
		})
	}
}

// TestCacheRequestBodyBypasses: a GET's body goes upstream but is in no
// key, so a GET with a body neither primes the cache nor is answered
// from it.
func TestCacheRequestBodyBypasses(t *testing.T) {
	h := newHarness(t, cacheVariantsConfig, reflectingUpstream)
	attack := h.Raw("GET", "/reflect?page=1", nil, "evil")
	if attack.Status != http.StatusOK {
		t.Fatalf("attacker: %d %q", attack.Status, attack.Body)
	}
	if got := attack.Header.Get("Cache-Status"); got != "keyward; fwd=bypass; detail=request-body" {
		t.Errorf("attacker Cache-Status %q", got)
	}
	h.Up.Take()
	victim := h.Get("/reflect?page=1", nil)
	if strings.Contains(victim.Body, "evil") {
		t.Fatalf("the victim got the attacker's variant: %q (Cache-Status %q)", victim.Body, victim.Header.Get("Cache-Status"))
	}
	ok(t, h, victim)
	// And a stored entry does not answer a request with a body.
	if res := h.Raw("GET", "/reflect?page=1", nil, "mine"); !strings.Contains(res.Body, "body=mine") {
		t.Errorf("a GET with a body was answered from the cache: %q", res.Body)
	}
	only(t, h)
}
