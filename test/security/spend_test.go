package security_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestBudgetCountsOnlyWhatGoesUpstream: a route budget is the ceiling of
// the upstream bill, so requests refused before the upstream (a bad
// parameter, a body over max_body, a failed validation) must not spend
// it. Before the fix, 5/day was gone with zero upstream calls.
func TestBudgetCountsOnlyWhatGoesUpstream(t *testing.T) {
	const yaml = `
secrets:
  github: { env: GITHUB_TOKEN }
routes:
  - name: issues
    path: /repos/{owner}/issues
    params: { owner: "[a-z]{1,10}" }
    methods: [POST]
    max_body: 64
    upstream: "{{UP}}/api/repos/{owner}/issues"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
    validate:
      body: { type: object, required: [title], properties: { title: { type: string } } }
    limits: { budget: 3/day, client_budget: 3/day }
`
	h := newHarness(t, yaml, nil)
	json := http.Header{"Content-Type": {"application/json"}}
	for i := range 10 {
		refused(t, h, h.Raw("POST", "/repos/BAD-OWNER/issues", json, `{"title":"x"}`), 400, "invalid_param")
		refused(t, h, h.Raw("POST", "/repos/acme/issues", json, strings.Repeat("x", 100)), 413, "body_too_large")
		refused(t, h, h.Raw("POST", "/repos/acme/issues", json, `{"body":"no title"}`), 400, "validation_failed")
		if t.Failed() {
			t.Fatalf("round %d", i)
		}
	}
	for i := range 3 {
		res := h.Raw("POST", "/repos/acme/issues", json, fmt.Sprintf(`{"title":"issue %d"}`, i))
		ok(t, h, res)
	}
	res := h.Raw("POST", "/repos/acme/issues", json, `{"title":"one too many"}`)
	if res.Status != http.StatusTooManyRequests {
		t.Errorf("4th upstream call: status %d, want 429 (body %s)", res.Status, res.Body)
	}
	h.Up.Take()
}

// TestCrossOriginWithoutPolicyNeverReachesUpstream: with no cors block (or
// cors disabled), any site could make its visitors' browsers spend the
// key with simple requests: the browser hides the answer but the call is
// made. A request whose Origin is neither allowed nor the gateway's own
// is refused with 403 and never forwarded.
func TestCrossOriginWithoutPolicyNeverReachesUpstream(t *testing.T) {
	for name, cors := range map[string]string{
		"no cors block": "",
		"disabled":      "    cors: { disabled: true }\n",
	} {
		t.Run(name, func(t *testing.T) {
			yaml := `
secrets:
  github: { env: GITHUB_TOKEN }
routes:
  - name: send
    path: /send
    methods: [GET, POST]
    upstream: "{{UP}}/api/send"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
` + cors
			h := newHarness(t, yaml, nil)
			for _, origin := range []string{"https://evil.example", "null", "http://gw.test.evil.example"} {
				res := h.Raw("POST", "/send", http.Header{"Origin": {origin}, "Content-Type": {"text/plain"}}, "hi")
				refused(t, h, res, http.StatusForbidden, "cors_origin_not_allowed")
				res = h.Raw("GET", "/send", http.Header{"Origin": {origin}}, "")
				refused(t, h, res, http.StatusForbidden, "cors_origin_not_allowed")
			}
			// No Origin (curl, a server) and the gateway's own origin pass.
			ok(t, h, h.Raw("GET", "/send", nil, ""))
			res := h.Raw("GET", "/send", http.Header{"Origin": {"http://gw.test"}}, "")
			ok(t, h, res)
			if res.Header.Get("Access-Control-Allow-Origin") != "" {
				t.Errorf("same-origin answer carries CORS headers: %v", res.Header)
			}
		})
	}
}

// TestIPv6AllocationCannotMultiplyItsAllowance: clients are keyed per
// /64, and one /48 holds 65,536 of them; the /48 as a whole shares
// ipv6_wide_factor clients' allowance (8 by default), so rotating
// through fresh /64s buys at most 8 clients' worth. Another /48 is
// unaffected, and so is IPv4.
func TestIPv6AllocationCannotMultiplyItsAllowance(t *testing.T) {
	const yaml = `
client_ip: { trusted_proxies: ["127.0.0.1/32"] }
routes:
  - name: geocode
    path: /geocode
    upstream: "{{UP}}/api/geocode"
    limits: { rate: 1/h, burst: 1 }
`
	h := newHarness(t, yaml, nil)
	admitted := func(xff string) bool {
		t.Helper()
		res := h.Raw("GET", "/geocode", http.Header{"X-Forwarded-For": {xff}}, "")
		h.Up.Take()
		switch res.Status {
		case http.StatusOK:
			return true
		case http.StatusTooManyRequests:
			return false
		}
		t.Fatalf("status %d: %s", res.Status, res.Body)
		return false
	}
	n := 0
	for i := range 64 {
		if admitted(fmt.Sprintf("2001:db8:aaaa:%x::1", i)) {
			n++
		}
	}
	if n != 8 {
		t.Errorf("64 /64s of one /48 got %d requests through, want 8 (the wide factor times one client's burst)", n)
	}
	if !admitted("2001:db8:bbbb:1::1") {
		t.Errorf("a client of another /48 was refused")
	}
	if !admitted("203.0.113.7") || admitted("203.0.113.7") {
		t.Errorf("an IPv4 client does not get exactly its own burst")
	}
}
