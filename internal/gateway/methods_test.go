package gateway_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
)

// TestRoutePerMethod: two routes may share a path with different methods
// (as a cloud console has a method per resource): each request goes to
// the route of its method, with that route's upstream and validation; a
// method neither allows is 405 with both in Allow; preflights see both.
func TestRoutePerMethod(t *testing.T) {
	h := gatewaytest.New(t, `
cors:
  allow_origins: ["https://app.example.com"]
routes:
  - name: list-issues
    path: /issues
    methods: [GET]
    upstream: "{{UP}}/read/issues"
  - name: file-issue
    path: /issues
    methods: [POST]
    upstream: "{{UP}}/write/issues"
    validate: { body: { type: object, required: [title] } }
    limits: { rate: 10/m }
`, nil)
	t.Cleanup(h.Scan)
	if res := h.Raw("GET", "/issues", nil, ""); res.Status != 200 {
		t.Fatalf("GET: %d %s", res.Status, res.Body)
	}
	if got := h.Up.Take(); len(got) != 1 || got[0].Path != "/read/issues" {
		t.Errorf("GET went to %+v", got)
	}
	res := h.Raw("POST", "/issues", http.Header{"Content-Type": {"application/json"}}, `{"nope":1}`)
	if res.Status != 400 || !strings.Contains(res.Body, "validation_failed") {
		t.Errorf("POST without a title: %d %s (the POST route's validation must apply)", res.Status, res.Body)
	}
	if res := h.Raw("POST", "/issues", http.Header{"Content-Type": {"application/json"}}, `{"title":"x"}`); res.Status != 200 {
		t.Errorf("POST: %d %s", res.Status, res.Body)
	}
	if got := h.Up.Take(); len(got) != 1 || got[0].Path != "/write/issues" {
		t.Errorf("POST went to %+v", got)
	}
	res = h.Raw("DELETE", "/issues", nil, "")
	if res.Status != 405 || res.Header.Get("Allow") != "GET, HEAD, POST" {
		t.Errorf("DELETE: %d Allow %q", res.Status, res.Header.Get("Allow"))
	}
	res = h.Raw("OPTIONS", "/issues", http.Header{"Origin": {"https://app.example.com"}, "Access-Control-Request-Method": {"POST"},
		"Access-Control-Request-Headers": {"content-type"}}, "")
	if res.Status != 204 || !strings.Contains(res.Header.Get("Access-Control-Allow-Methods"), "POST") {
		t.Errorf("preflight for POST: %d %v", res.Status, res.Header)
	}
}

// TestRoutePerMethodConflicts: a real conflict names the other route.
func TestRoutePerMethodConflicts(t *testing.T) {
	for name, tc := range map[string]struct{ yaml, want string }{
		"same method": {`
routes:
  - { name: a, path: /x, methods: [GET, POST], upstream: "http://127.0.0.1:1/a" }
  - { name: b, path: /x, methods: [POST], upstream: "http://127.0.0.1:1/b" }
`, `routes[1].methods: method POST is also allowed by route "a" on this path (routes[0] has the same path)`},
		"same shape, other names": {`
routes:
  - { name: a, path: "/u/{id}", upstream: "http://127.0.0.1:1/a" }
  - { name: b, path: "/u/{name}", methods: [POST], upstream: "http://127.0.0.1:1/b" }
`, `(routes[0]): both match the same requests`},
	} {
		t.Run(name, func(t *testing.T) {
			f, err := config.Parse("k.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = gateway.Compile(f, gateway.Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestDroppedQueryLogged: a client query parameter the config leaves out
// is counted in the access-log line, so "my parameter does nothing" shows
// up in the log.
func TestDroppedQueryLogged(t *testing.T) {
	h := gatewaytest.New(t, `
routes:
  - { name: search, path: /search, upstream: "{{UP}}/search", query: { allow: [q] } }
`, nil)
	t.Cleanup(h.Scan)
	if res := h.Get("/search?q=1&page=2&sort=x", nil); res.Status != 200 {
		t.Fatalf("%d %s", res.Status, res.Body)
	}
	h.Up.Take()
	if !strings.Contains(h.Logs.String(), `"dropped_query":2`) {
		t.Errorf("no dropped_query count in the access log:\n%s", h.Logs.String())
	}
}
