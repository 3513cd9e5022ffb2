package security_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/gatewaytest"
	"github.com/keyward/keyward/internal/scrub"
)

const responsesConfig = `
secrets:
  github: { env: GITHUB_TOKEN }
  maps:   { file: maps_key }
cors:
  allow_origins: ["https://app.example.com"]
routes:
  - name: resp
    path: /resp/{kind}
    upstream: "{{UP}}/resp/{kind}"
    query: { set: { key: "{secret.maps}" } }
    headers: { set: { Authorization: "Bearer {secret.github}" } }
`

// responsesUpstream misbehaves in the ways a third-party API might.
func responsesUpstream(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("key")
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	switch r.URL.Path {
	case "/resp/cookies":
		w.Header().Add("Set-Cookie", "session=upstream; Path=/; HttpOnly")
		w.Header().Add("Set-Cookie2", "legacy=1")
		w.Header().Set("Alt-Svc", `h3=":443"; ma=86400`)
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Access-Control-Allow-Credentials", "true")
		w.Header().Set("Access-Control-Expose-Headers", "X-Secret")
		w.Header().Set("Access-Control-Allow-Headers", "*")
	case "/resp/redirect-token":
		w.Header().Set("Location", "https://elsewhere.example/cb?access_token="+url.QueryEscape(key)+"&t="+tok)
		w.WriteHeader(http.StatusFound)
		return
	case "/resp/redirect-path":
		w.Header().Set("Location", "/login/"+url.PathEscape(key))
		w.WriteHeader(http.StatusMovedPermanently)
		return
	case "/resp/redirect-other-host":
		w.Header().Set("Location", "http://evil.test/collect")
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	case "/resp/redirect-self":
		// Back to this same upstream, another path: a client that
		// followed would send the credential twice.
		w.Header().Set("Location", "/resp/admin")
		w.WriteHeader(http.StatusSeeOther)
		return
	case "/resp/refresh":
		w.Header().Set("Refresh", "0; url=https://elsewhere.example/?k="+url.QueryEscape(key))
		w.Header().Set("Link", "<https://elsewhere.example/?k="+url.QueryEscape(key)+">; rel=preload")
		w.Header().Set("Content-Location", "/x?key="+url.QueryEscape(key))
	case "/resp/hop":
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", tok)
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Proxy-Authenticate", "Basic realm="+tok)
	case "/resp/header-name":
		// The secret as a header name, where a value-only scrubber would
		// not look.
		w.Header()["X-"+tok] = []string{"1"}
	case "/resp/trailer":
		w.Header().Set("Trailer", "X-Echo-Token")
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "body\n")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Echo-Token", tok)
		return
	case "/resp/early-hints":
		w.Header().Set("Link", "</style.css?key="+url.QueryEscape(key)+">; rel=preload")
		w.Header().Set("X-Echo-Token", tok)
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Del("X-Echo-Token")
	case "/resp/reason":
		// A status line whose reason phrase is the credential.
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 418 " + tok + "\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
		_ = brw.Flush()
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"ok":true}`))
}

// TestResponsesHeadersFiltered: upstream cookies, CORS, Alt-Svc and
// hop-by-hop headers never reach the client; the gateway's own CORS
// answer replaces the upstream's.
func TestResponsesHeadersFiltered(t *testing.T) {
	h := newHarness(t, responsesConfig, responsesUpstream)
	origin := http.Header{"Origin": {"https://app.example.com"}}
	t.Run("upstream Set-Cookie, Alt-Svc and CORS headers are removed", func(t *testing.T) {
		res := h.Get("/resp/cookies", origin)
		ok(t, h, res)
		for _, name := range []string{"Set-Cookie", "Set-Cookie2", "Alt-Svc", "Access-Control-Allow-Credentials", "Access-Control-Expose-Headers", "Access-Control-Allow-Headers"} {
			if v := res.Header.Values(name); len(v) > 0 {
				t.Errorf("%s passed on: %q", name, v)
			}
		}
		if got := res.Header.Values("Access-Control-Allow-Origin"); len(got) != 1 || got[0] != "https://app.example.com" {
			t.Errorf("Access-Control-Allow-Origin %q, want the gateway's own", got)
		}
	})
	t.Run("hop-by-hop headers and the ones Connection names are removed", func(t *testing.T) {
		res := h.Get("/resp/hop", nil)
		ok(t, h, res)
		for _, name := range []string{"X-Hop", "Keep-Alive"} {
			if v := res.Header.Values(name); len(v) > 0 {
				t.Errorf("%s passed on: %q", name, redact(v))
			}
		}
		if v := res.Header.Get("Proxy-Authenticate"); strings.Contains(v, "CANARY") {
			t.Errorf("Proxy-Authenticate leaks the token")
		}
	})
	t.Run("secrets in Refresh, Link and Content-Location are redacted", func(t *testing.T) {
		res := h.Get("/resp/refresh", nil)
		ok(t, h, res)
		for _, name := range []string{"Refresh", "Link", "Content-Location"} {
			if v := res.Header.Get(name); !strings.Contains(v, scrub.Redacted) {
				t.Errorf("%s = %q, want the key redacted", name, redact([]string{v}))
			}
		}
	})
	t.Run("a reason phrase holding the token is not passed on", func(t *testing.T) {
		res := h.Get("/resp/reason", nil)
		if res.Status != http.StatusTeapot {
			t.Errorf("status %d, want 418", res.Status)
		}
		only(t, h)
		// The scan searches the recorded status line.
	})
}

// TestResponsesRedirects: a redirect is handed back, never followed (the
// upstream sees exactly one request, the credential is never sent to the
// Location), and a secret in Location is redacted.
func TestResponsesRedirects(t *testing.T) {
	h := newHarness(t, responsesConfig, responsesUpstream)
	for _, tt := range []struct {
		name, target string
		status       int
		location     string // "" means: must contain [REDACTED]
	}{
		{"Location with ?access_token=<secret> is scrubbed", "/resp/redirect-token", 302, ""},
		{"Location with the secret in its path is scrubbed", "/resp/redirect-path", 301, ""},
		{"3xx to another host is returned, not followed", "/resp/redirect-other-host", 307, "http://evil.test/collect"},
		{"3xx back to the upstream is returned, not followed", "/resp/redirect-self", 303, "/resp/admin"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := h.Get(tt.target, nil)
			if res.Status != tt.status {
				t.Errorf("status %d, want %d", res.Status, tt.status)
			}
			loc := res.Header.Get("Location")
			switch {
			case tt.location == "" && !strings.Contains(loc, scrub.Redacted):
				t.Errorf("Location %q, want the secret redacted", redact([]string{loc}))
			case tt.location != "" && loc != tt.location:
				t.Errorf("Location %q, want %q", loc, tt.location)
			}
			s := only(t, h) // exactly one: the redirect was not followed
			authorizedOnce(t, s)
		})
	}
}

// TestResponsesSecretHeaderName: a secret an upstream sends as a header
// name does not reach the client either.
func TestResponsesSecretHeaderName(t *testing.T) {
	h := newHarness(t, responsesConfig, responsesUpstream)
	res := h.Get("/resp/header-name", nil)
	ok(t, h, res)
	for name := range res.Header {
		if strings.Contains(strings.ToLower(name), strings.ToLower(gatewaytest.GitHub)) {
			t.Errorf("a response header is named after the token")
		}
	}
}

// TestResponsesTrailers: a secret in an upstream trailer is redacted like
// one in a header.
func TestResponsesTrailers(t *testing.T) {
	h := newHarness(t, responsesConfig, responsesUpstream)
	res, err := h.GW.Client().Get(h.GW.URL + "/resp/trailer")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	h.Record(res, body)
	var tr strings.Builder
	_ = res.Trailer.Write(&tr)
	_, _ = h.Emitted.Write([]byte(tr.String()))
	if res.StatusCode != 200 || string(body) != "body\n" {
		t.Errorf("status %d body %q", res.StatusCode, body)
	}
	only(t, h)
	noCanary(t, "trailers", tr.String())
}

// TestResponsesEarlyHints: 1xx informational responses pass through the
// gateway's filters too: a secret in an Early Hints Link is not leaked,
// and the final response keeps the gateway's own headers.
func TestResponsesEarlyHints(t *testing.T) {
	h := newHarness(t, responsesConfig, responsesUpstream)
	var hints []string
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, hdr textproto.MIMEHeader) error {
			var b strings.Builder
			_ = http.Header(hdr).Write(&b)
			hints = append(hints, b.String())
			return nil
		},
	})
	req, _ := http.NewRequestWithContext(ctx, "GET", h.GW.URL+"/resp/early-hints", nil)
	req.Header.Set("Origin", "https://app.example.com")
	res, err := h.GW.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	h.Record(res, body)
	_, _ = h.Emitted.Write([]byte(strings.Join(hints, "\n")))
	if res.StatusCode != 200 {
		t.Errorf("status %d", res.StatusCode)
	}
	only(t, h)
	noCanary(t, "1xx headers", strings.Join(hints, "\n"))
	if res.Header.Get("X-Request-Id") == "" || res.Header.Get("Access-Control-Allow-Origin") == "" {
		t.Errorf("the final response lost the gateway's headers: %v", res.Header)
	}
}
