package security_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Cases found in review, each named for the leak or fault it closes.

const reviewConfig = `
secrets:
  github: { env: GITHUB_TOKEN }
  maps:   { file: maps_key }
cors:
  allow_origins: ["https://app.example.com"]
routes:
  - name: stacked
    path: /stacked
    upstream: "{{UP}}/api/stacked"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
  - name: trailer
    path: /trailer
    upstream: "{{UP}}/api/trailer"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
  - name: slashed
    path: /slashed
    upstream: "{{UP}}/api/slashed"
    query: { set: { key: "{secret.maps}" } }
  - name: slashed-transformed
    path: /slashed-transformed
    upstream: "{{UP}}/api/slashed"
    query: { set: { key: "{secret.maps}" } }
    transform: { response: "." }
  - name: stall
    path: /stall
    upstream: "{{UP}}/api/stall"
    idle_timeout: 100ms
    transform: { response: ".a" }
  - name: head-transformed
    path: /head-transformed
    upstream: "{{UP}}/api/json"
    transform: { response: ".a" }
  - name: cached
    path: /cached
    upstream: "{{UP}}/api/json"
    cache: { ttl: 1h }
    limits: { rate: 100/s, budget: 1000/day }
  - name: upload
    path: /upload
    methods: [POST]
    upstream: "{{UP}}/api/upload"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
`

func reviewUpstream(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/api/stacked":
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		io.WriteString(zw, `{"auth":"`+r.Header.Get("Authorization")+`"}`)
		zw.Close()
		w.Header()["Content-Encoding"] = []string{"identity", "gzip"}
		w.Write(gz.Bytes())
	case "/api/trailer":
		io.WriteString(w, "ok")
		w.Header().Set(http.TrailerPrefix+"X-Leak", r.Header.Get("Authorization"))
	case "/api/slashed":
		// PHP's json_encode escapes "/" as "\/".
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"echo":"`+strings.ReplaceAll(r.URL.Query().Get("key"), "/", `\/`)+`"}`)
	case "/api/stall":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"a":`)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	case "/api/json":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"a":1}`)
	case "/api/upload":
		io.Copy(io.Discard, r.Body)
		var names []string
		for k := range r.Trailer {
			names = append(names, k)
		}
		w.Header().Set("X-Got-Trailers", strings.Join(names, ","))
	}
}

func TestStackedContentEncodingsAreRefusedNotPassedOn(t *testing.T) {
	h := newHarness(t, reviewConfig, reviewUpstream)
	res := h.Get("/stacked", nil)
	if res.Status != http.StatusBadGateway || errCode(res.Body) != "upstream_encoding" {
		t.Errorf("status %d body %q, want 502 upstream_encoding", res.Status, res.Body)
	}
	noCanary(t, "body", res.Body)
	h.Up.Take()
}

func TestUnannouncedUpstreamTrailerIsScrubbed(t *testing.T) {
	h := newHarness(t, reviewConfig, reviewUpstream)
	res, err := h.GW.Client().Get(h.GW.URL + "/trailer")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	h.Record(res, body)
	var tr bytes.Buffer
	res.Trailer.Write(&tr)
	noCanary(t, "trailers", tr.String())
	if got := res.Trailer.Get("X-Leak"); got != "" && !strings.Contains(got, "[REDACTED]") {
		t.Errorf("trailer X-Leak = %q", redact([]string{got}))
	}
	h.Up.Take()
}

func TestSlashEscapedEchoIsScrubbedWithAndWithoutTransform(t *testing.T) {
	h := newHarness(t, reviewConfig, reviewUpstream)
	for _, target := range []string{"/slashed", "/slashed-transformed"} {
		res := h.Get(target, nil)
		if res.Status != 200 {
			t.Fatalf("%s: %d %q", target, res.Status, res.Body)
		}
		noCanary(t, target, res.Body)
		noCanary(t, target+" unescaped", strings.ReplaceAll(res.Body, `\/`, "/"))
		if !strings.Contains(res.Body, "REDACTED") {
			t.Errorf("%s: the echo was not masked: %q", target, res.Body)
		}
	}
	h.Up.Take()
}

func TestStallDuringResponseTransformIs504NotEmpty200(t *testing.T) {
	h := newHarness(t, reviewConfig, reviewUpstream)
	res := h.Get("/stall", nil)
	if res.Status != http.StatusGatewayTimeout || errCode(res.Body) != "upstream_stalled" {
		t.Errorf("status %d body %q, want 504 upstream_stalled", res.Status, res.Body)
	}
	h.Up.Take()
}

func TestHeadOnTransformedRouteDoesNotClaimAWrongLength(t *testing.T) {
	h := newHarness(t, reviewConfig, reviewUpstream)
	get := h.Get("/head-transformed", nil)
	head := h.Raw("HEAD", "/head-transformed", nil, "")
	if get.Status != 200 || head.Status != 200 {
		t.Fatalf("GET %d, HEAD %d", get.Status, head.Status)
	}
	if cl := head.Header.Get("Content-Length"); cl != "" && cl != get.Header.Get("Content-Length") {
		t.Errorf("HEAD Content-Length %q, GET's is %q", cl, get.Header.Get("Content-Length"))
	}
	h.Up.Take()
}

func TestCachedHitDoesNotReplayTheMissesBudgetHeaders(t *testing.T) {
	h := newHarness(t, reviewConfig, reviewUpstream)
	// The route budget is checked on misses only, inside the cache; its
	// headers describe that one upstream call and are never stored.
	h.Get("/cached", nil)
	hit := h.Get("/cached", nil)
	if !strings.HasPrefix(hit.Header.Get("Cache-Status"), "keyward; hit") {
		t.Fatalf("second request was not a hit: %q", hit.Header.Get("Cache-Status"))
	}
	if got := hit.Header.Values("Ratelimit"); len(got) != 1 || strings.Contains(got[0], "budget") {
		t.Errorf("hit RateLimit %q: a budget line frozen in the cache", got)
	}
	if got := len(h.Up.Take()); got != 1 {
		t.Errorf("upstream calls %d, want 1", got)
	}
}

func TestClientTrailersNeverReachTheUpstream(t *testing.T) {
	h := newHarness(t, reviewConfig, reviewUpstream)
	res := h.RawBytes("POST", "POST /upload HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n"+
		"Transfer-Encoding: chunked\r\nTrailer: Authorization, X-Evil\r\n\r\n"+
		"2\r\nhi\r\n0\r\nAuthorization: Bearer attacker\r\nX-Evil: 1\r\n\r\n")
	if res.Status != 200 {
		t.Fatalf("status %d %q", res.Status, res.Body)
	}
	if got := res.Header.Get("X-Got-Trailers"); got != "" {
		t.Errorf("the upstream received client trailers: %q", got)
	}
	authorizedOnce(t, only(t, h))
}

func TestRefusalsBeforeMatchingCarryCORSHeaders(t *testing.T) {
	h := newHarness(t, reviewConfig, reviewUpstream)
	res := h.Get("/a%2Fb", http.Header{"Origin": {"https://app.example.com"}})
	refused(t, h, res, http.StatusBadRequest, "bad_path")
	if res.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Errorf("a page could not read this 400: %v", res.Header)
	}
}
