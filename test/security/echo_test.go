package security_test

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/gatewaytest"
	"github.com/keyward/keyward/internal/scrub"
)

// echoConfig sends every canary upstream: the GitHub token in a header,
// the Maps key in the query, the Mailer key in a header and (through a
// request transform) in the body. Accept-Encoding: identity makes the
// upstream's gzip arrive unasked, so the gateway's own decoder is tested;
// the echo-asked route lets the transport ask for and decode gzip.
const echoConfig = `
secrets:
  github: { env: GITHUB_TOKEN }
  maps:   { file: maps_key }
  mailer: { env: MAILER_KEY }
routes:
  - name: echo
    path: /echo/{kind}
    methods: [GET, HEAD, POST]
    upstream: "{{UP}}/echo/{kind}"
    query: { allow: [q], set: { key: "{secret.maps}" } }
    headers:
      allow: [X-Note]
      set:
        Authorization: "Bearer {secret.github}"
        X-Mailer-Key: "{secret.mailer}"
        Accept-Encoding: identity
  - name: echo-asked
    path: /asked/{kind}
    upstream: "{{UP}}/echo/{kind}"
    query: { set: { key: "{secret.maps}" } }
    headers: { set: { Authorization: "Bearer {secret.github}", X-Mailer-Key: "{secret.mailer}" } }
  - name: echo-body
    path: /send
    methods: [POST]
    upstream: "{{UP}}/echo/plain"
    transform:
      request: '{text: .text, api_key: $secret.mailer}'
    headers: { set: { Authorization: "Bearer {secret.github}" } }
`

// echoed is what the echo upstream sends back: the whole request. The
// body is a string, never []byte, which encoding/json would base64 and so
// hide from a scrubber that does not claim to see through base64.
type echoed struct {
	Method   string              `json:"method"`
	Path     string              `json:"path"`
	RawQuery string              `json:"raw_query"`
	Query    map[string][]string `json:"query"`
	Header   map[string][]string `json:"header"`
	Body     string              `json:"body"`
}

// echoUpstream echoes the request back; the last path segment picks how.
func echoUpstream(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	e := echoed{Method: r.Method, Path: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery, Query: r.URL.Query(), Header: r.Header, Body: string(body)}
	j, _ := json.Marshal(e)
	// The echo in headers, as an error page or a debug header would.
	w.Header().Set("X-Echo-Authorization", r.Header.Get("Authorization"))
	w.Header().Set("X-Echo-Query", r.URL.RawQuery)
	w.Header().Set("X-Echo-Mailer", r.Header.Get("X-Mailer-Key"))
	w.Header().Set("Content-Type", "application/json")
	kind := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
	switch kind {
	case "plain":
		w.Header().Set("Content-Length", strconv.Itoa(len(j)))
		_, _ = w.Write(j)
	case "text":
		// An error page quoting the request line with its query.
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, "bad request: GET "+r.URL.String()+"\nAuthorization: "+r.Header.Get("Authorization")+"\n")
	case "gzip", "xgzip":
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		_, _ = zw.Write(j)
		_ = zw.Close()
		enc := map[string]string{"gzip": "gzip", "xgzip": "x-gzip"}[kind]
		w.Header().Set("Content-Encoding", enc)
		w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
		_, _ = w.Write(b.Bytes())
	case "deflate":
		var b bytes.Buffer
		zw := zlib.NewWriter(&b)
		_, _ = zw.Write(j)
		_ = zw.Close()
		w.Header().Set("Content-Encoding", "deflate")
		_, _ = w.Write(b.Bytes())
	case "br", "stacked":
		w.Header().Set("Content-Encoding", map[string]string{"br": "br", "stacked": "gzip, gzip"}[kind])
		_, _ = w.Write(j) // bytes keyward cannot decode: whatever they hold
	case "corrupt":
		w.Header().Set("Content-Encoding", "gzip")
		_, _ = w.Write(append([]byte("not gzip "), j...))
	case "split":
		// Half of each secret, a flush, then the rest: the secrets
		// straddle a read boundary of the gateway.
		fl := w.(http.Flusher)
		for _, s := range []string{r.Header.Get("Authorization"), r.URL.Query().Get("key"), r.URL.RawQuery, r.Header.Get("X-Mailer-Key")} {
			half := len(s) / 2
			_, _ = io.WriteString(w, "<"+s[:half])
			fl.Flush()
			_, _ = io.WriteString(w, s[half:]+">\n")
			fl.Flush()
		}
	case "boundary":
		// The token straddles the scrubber's 32 KiB read chunk.
		tok := r.Header.Get("Authorization")
		_, _ = w.Write(bytes.Repeat([]byte{'.'}, 32<<10-len(tok)/2))
		_, _ = io.WriteString(w, tok+"\n")
	case "sse":
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		for _, s := range []string{r.Header.Get("Authorization"), r.URL.Query().Get("key"), r.Header.Get("X-Mailer-Key")} {
			_, _ = io.WriteString(w, "data: "+s[:3])
			fl.Flush()
			_, _ = io.WriteString(w, s[3:]+"\n\n")
			fl.Flush()
		}
	}
}

// noCanary fails if text holds any canary in any form, or the marker.
func noCanary(t *testing.T, where, text string) {
	t.Helper()
	for _, c := range gatewaytest.Canaries {
		for _, f := range append(gatewaytest.Forms(c), "CANARY") {
			if strings.Contains(text, f) {
				t.Errorf("%s holds a canary form (%d bytes)", where, len(f))
			}
		}
	}
}

// echoHeadersScrubbed asserts the echoed headers reached the client with
// the secrets replaced, proving the upstream did echo them.
func echoHeadersScrubbed(t *testing.T, res gatewaytest.Response) {
	t.Helper()
	for _, name := range []string{"X-Echo-Authorization", "X-Echo-Query", "X-Echo-Mailer"} {
		v := res.Header.Get(name)
		if !strings.Contains(v, scrub.Redacted) {
			t.Errorf("%s = %q, want the echoed secret as %s", name, redact([]string{v}), scrub.Redacted)
		}
		noCanary(t, name, v)
	}
}

// upstreamGotSecrets asserts the secrets did go upstream, each once.
func upstreamGotSecrets(t *testing.T, s gatewaytest.Seen) {
	t.Helper()
	authorizedOnce(t, s)
	if got := s.Header["X-Mailer-Key"]; len(got) != 1 || got[0] != gatewaytest.Mailer {
		t.Errorf("upstream X-Mailer-Key %q", redact(got))
	}
	if !strings.Contains(s.RawQuery, "key=") {
		t.Errorf("upstream query without the key")
	}
}

// TestEchoScrubbed: an upstream that echoes the whole request back (its
// headers, query and body, the secrets in it) produces zero secret bytes
// at the client, in any header or body, in every encoding keyward can
// decode; the others are refused.
func TestEchoScrubbed(t *testing.T) {
	h := newHarness(t, echoConfig, echoUpstream)
	for _, tt := range []struct {
		name, target string
		status       int
		wantMasks    int // at least this many masks in the body
	}{
		{"plain JSON echo of headers, query and body", "/echo/plain?q=1", 200, 4},
		{"gzip echo the gateway did not ask for", "/echo/gzip?q=1", 200, 4},
		{"x-gzip echo", "/echo/xgzip", 200, 4},
		{"deflate echo", "/echo/deflate", 200, 4},
		{"gzip echo the transport asked for and decoded", "/asked/gzip", 200, 2},
		{"error page quoting the request URL and Authorization", "/echo/text", 400, 2},
		{"secrets split across the upstream's flushes", "/echo/split", 200, 4},
		{"secret straddling the scrubber's 32 KiB chunk", "/echo/boundary", 200, 1},
		{"event stream with secrets split across events' writes", "/echo/sse", 200, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := h.Get(tt.target, http.Header{"X-Note": {"hello"}})
			if res.Status != tt.status {
				t.Fatalf("status %d, want %d", res.Status, tt.status)
			}
			s := only(t, h)
			upstreamGotSecrets(t, s)
			echoHeadersScrubbed(t, res)
			noCanary(t, "body", res.Body)
			if n := strings.Count(res.Body, scrub.Redacted); n < tt.wantMasks {
				t.Errorf("%d masks in the body, want at least %d: did the upstream echo?", n, tt.wantMasks)
			}
			if ce := res.Header.Get("Content-Encoding"); ce != "" {
				t.Errorf("Content-Encoding %q passed on for a body keyward decoded", ce)
			}
			if cl := res.Header.Get("Content-Length"); cl != "" && cl != strconv.Itoa(len(res.Body)) {
				t.Errorf("Content-Length %s for a %d-byte body", cl, len(res.Body))
			}
		})
	}
	t.Run("same-length masks keep the plain echo's JSON valid", func(t *testing.T) {
		res := h.Get("/echo/plain", nil)
		h.Up.Take()
		var e echoed
		if err := json.Unmarshal([]byte(res.Body), &e); err != nil {
			t.Fatalf("scrubbed body is not JSON: %v", err)
		}
		if e.Path != "/echo/plain" || !strings.HasPrefix(e.Header["Authorization"][0], "Bearer [REDACTED]") {
			t.Errorf("echo %+v", e.Path)
		}
	})
	t.Run("HEAD echo: headers scrubbed, no body", func(t *testing.T) {
		res := h.Raw("HEAD", "/echo/plain", nil, "")
		if res.Status != 200 || res.Body != "" {
			t.Errorf("status %d body %d bytes", res.Status, len(res.Body))
		}
		s := only(t, h)
		if s.Method != "HEAD" {
			t.Errorf("upstream method %s", s.Method)
		}
		upstreamGotSecrets(t, s)
		echoHeadersScrubbed(t, res)
	})
	t.Run("secret the transform put in the request body, echoed back", func(t *testing.T) {
		res := h.Raw("POST", "/send", http.Header{"Content-Type": {"application/json"}}, `{"text":"hi"}`)
		if res.Status != 200 {
			t.Fatalf("status %d %q", res.Status, res.Body)
		}
		s := only(t, h)
		authorizedOnce(t, s)
		if !strings.Contains(s.Body, `"api_key":`) || !strings.Contains(s.Body, "CANARY") {
			t.Errorf("upstream body lacks the transform's secret")
		}
		noCanary(t, "body", res.Body)
		if !strings.Contains(res.Body, scrub.Redacted) {
			t.Errorf("no mask in the echoed body")
		}
	})
	for _, tt := range []struct{ name, target string }{
		{"brotli echo is refused, not passed on unscrubbed", "/echo/br"},
		{"stacked encodings are refused", "/echo/stacked"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := h.Get(tt.target, nil)
			if res.Status != http.StatusBadGateway || errCode(res.Body) != "upstream_encoding" {
				t.Errorf("status %d body %q, want 502 upstream_encoding", res.Status, res.Body)
			}
			upstreamGotSecrets(t, only(t, h))
			noCanary(t, "response", res.Body+strings.Join(res.Header.Values("X-Echo-Authorization"), ""))
		})
	}
	t.Run("corrupt gzip is a 502, not garbage", func(t *testing.T) {
		res := h.Get("/echo/corrupt", nil)
		if res.Status != http.StatusBadGateway || errCode(res.Body) != "upstream_unavailable" {
			t.Errorf("status %d body %q, want 502 upstream_unavailable", res.Status, res.Body)
		}
		upstreamGotSecrets(t, only(t, h))
	})
}
