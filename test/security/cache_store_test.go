package security_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestCacheVaryStarNeverServed: an upstream answering Vary: * chose its
// answer by something no key can hold, so it is never stored.
func TestCacheVaryStarNeverServed(t *testing.T) {
	h := newHarness(t, cacheStoreConfig, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", "*")
		_, _ = io.WriteString(w, "per request")
	})
	for i := range 3 {
		res := h.Get("/plain", nil)
		if got := res.Header.Get("Cache-Status"); res.Status != http.StatusOK || got != "keyward; fwd=uri-miss; fwd-status=200; detail=vary-star" {
			t.Errorf("request %d: %d, Cache-Status %q", i, res.Status, got)
		}
		only(t, h)
	}
}

// cacheStoreConfig caches one route for tests of what is stored.
const cacheStoreConfig = `
routes:
  - name: plain
    path: /plain
    upstream: "{{UP}}/api/plain"
    cache: { ttl: 1h }
`

// TestCacheTrailersPreventStoring: a Set-Cookie or a Cache-Control
// no-store or private arriving in a trailer, after the response was
// judged storable by its header, keeps it out of the cache; the cookie
// never reaches the client.
func TestCacheTrailersPreventStoring(t *testing.T) {
	tests := []struct {
		name, trailer, value string
		announce             bool
	}{
		{"set-cookie", "Set-Cookie", "session=upstream", false},
		{"set-cookie announced", "Set-Cookie", "session=upstream", true},
		{"no-store", "Cache-Control", "no-store", false},
		{"private", "Cache-Control", "private", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, cacheStoreConfig, func(w http.ResponseWriter, r *http.Request) {
				if tt.announce {
					w.Header().Set("Trailer", tt.trailer)
				}
				w.Header().Set("Content-Type", "text/plain")
				_, _ = io.WriteString(w, "body\n")
				w.(http.Flusher).Flush()
				if tt.announce {
					w.Header().Set(tt.trailer, tt.value)
				} else {
					w.Header().Set(http.TrailerPrefix+tt.trailer, tt.value)
				}
			})
			for i := range 2 {
				res, err := h.GW.Client().Get(h.GW.URL + "/plain")
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(res.Body)
				res.Body.Close()
				h.Record(res, body)
				if err != nil || string(body) != "body\n" {
					t.Fatalf("request %d: %q, %v", i, body, err)
				}
				if res.Header.Get("Set-Cookie") != "" || res.Trailer.Get("Set-Cookie") != "" {
					t.Errorf("request %d: the upstream's cookie reached the client", i)
				}
				if strings.HasPrefix(res.Header.Get("Cache-Status"), "keyward; hit") {
					t.Fatalf("request %d was served from the cache", i)
				}
				only(t, h)
			}
		})
	}
}

// TestCacheTrailersReachTheClient: on a cached route, an upstream's
// trailers reach the client as on any route.
func TestCacheTrailersReachTheClient(t *testing.T) {
	h := newHarness(t, cacheStoreConfig, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "body\n")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Checksum", "abc")
		w.Header().Set(http.TrailerPrefix+"X-Late", "def")
	})
	res, err := h.GW.Client().Get(h.GW.URL + "/plain")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	h.Record(res, body)
	if err != nil {
		t.Fatal(err)
	}
	if res.Trailer.Get("X-Checksum") != "abc" || res.Trailer.Get("X-Late") != "def" {
		t.Errorf("trailers %v, want X-Checksum and X-Late", res.Trailer)
	}
	only(t, h)
}
