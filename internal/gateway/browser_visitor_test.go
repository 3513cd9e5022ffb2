package gateway_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
)

// TestBrowserVisitor: a page on an allowed origin trades a Turnstile
// proof for a visitor token at POST /_keyward/visitor and calls a route
// that accepts visitors, in a real browser (CORS preflights included);
// a page without a token is refused, and neither the upstream key nor
// the visitor signing key reaches anything the page can see.
func TestBrowserVisitor(t *testing.T) {
	chromium := findChromium()
	if chromium == "" {
		const msg = "headless Chromium not found; install it with `apt-get install -y chromium` or run `make test`"
		if os.Getenv("CI") != "" {
			t.Fatal(msg + "; CI is set, so a missing browser is a failure")
		}
		t.Skip(msg)
	}
	upstream := &upstreamRecorder{}
	upSrv := httptest.NewServer(upstream)
	t.Cleanup(upSrv.Close)
	turnstile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		ok := r.PostForm.Get("secret") == gatewaytest.Turnstile && r.PostForm.Get("response") == "solved-in-the-page"
		_ = json.NewEncoder(w).Encode(map[string]any{"success": ok, "hostname": "127.0.0.1",
			"challenge_ts": time.Now().UTC().Format(time.RFC3339)})
	}))
	t.Cleanup(turnstile.Close)
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, "<!doctype html><title>visitor</title><p>page</p>\n")
	}))
	t.Cleanup(page.Close)

	yaml := fmt.Sprintf(`
secrets:
  api: { env: KEYWARD_BROWSER_API_KEY }
  turnstile: { env: TURNSTILE_SECRET }
  visitor_key: { env: VISITOR_KEY }
cors:
  allow_origins: [%q]
callers:
  visitors:
    visitor:
      turnstile: { secret: turnstile, hostnames: ["127.0.0.1"], verify_url: "%s" }
      signing_key: visitor_key
routes:
  - name: answer
    path: /answer
    methods: [POST]
    upstream: "%s/v1/answer"
    callers: [visitors]
    headers:
      set: { Authorization: "Bearer {secret.api}" }
`, page.URL, turnstile.URL, upSrv.URL)
	f, err := config.Parse("browser.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	var logs gatewaytest.SyncBuffer
	g, _, err := gateway.Compile(f, gateway.Options{
		Getenv: func(name string) string {
			if name == "KEYWARD_BROWSER_API_KEY" {
				return browserCanary
			}
			return gatewaytest.Getenv(name)
		},
		Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	gw := httptest.NewServer(gateway.NewHandler(g))
	t.Cleanup(gw.Close)

	b := startBrowser(t, chromium)
	tb := b.openTab(t, page.URL+"/")
	json := map[string]string{"Content-Type": "application/json"}

	// No token: refused before the upstream, and the page can read why.
	res := tb.fetch(t, gw.URL+"/answer", map[string]any{"method": "POST", "headers": json, "body": `{"q":1}`})
	if res.Status != http.StatusUnauthorized || !strings.Contains(res.Body, "unauthenticated") {
		t.Errorf("without a token: %+v", res)
	}
	if got := upstream.forPath("/v1/answer"); len(got) != 0 {
		t.Fatalf("the upstream got %d requests from a page without a token", len(got))
	}

	// A forged proof: no token.
	res = tb.fetch(t, gw.URL+"/_keyward/visitor", map[string]any{"method": "POST", "headers": json, "body": `{"turnstile":"made-up"}`})
	if res.Status != http.StatusUnauthorized {
		t.Errorf("a forged proof: %+v", res)
	}

	// The exchange, then the call with the visitor token.
	res = tb.fetch(t, gw.URL+"/_keyward/visitor", map[string]any{"method": "POST", "headers": json, "body": `{"turnstile":"solved-in-the-page"}`})
	var grant struct {
		Token     string `json:"token"`
		ExpiresIn int    `json:"expires_in"`
	}
	if res.Status != http.StatusOK || jsonUnmarshal(res.Body, &grant) != nil || grant.Token == "" {
		t.Fatalf("exchange: %+v", res)
	}
	res = tb.fetch(t, gw.URL+"/answer", map[string]any{"method": "POST", "body": `{"q":2}`,
		"headers": map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + grant.Token}})
	if res.Status != http.StatusOK {
		t.Fatalf("with the visitor token: %+v", res)
	}
	got := upstream.forPath("/v1/answer")
	if len(got) != 1 {
		t.Fatalf("the upstream got %d requests, want 1", len(got))
	}
	for _, secret := range []string{browserCanary, gatewaytest.Visitor, gatewaytest.Turnstile} {
		if strings.Contains(res.Body, secret) || strings.Contains(logs.String(), secret) {
			t.Errorf("a secret reached the page or the logs")
		}
	}
	if strings.Contains(logs.String(), grant.Token) {
		t.Errorf("the visitor token is in the logs")
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
