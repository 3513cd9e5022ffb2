package security_test

import (
	"net/http"
	"testing"
)

// TestUnparsedBodiesNeverForwarded: on a route with a request transform
// or body validation, a body keyward cannot parse, or that is not the
// declared media type, is refused and never reaches the upstream. Before
// the fix a transform forcing a cheap model and max_tokens: 50 was
// bypassed with a UTF-8 BOM, text/plain, no Content-Type or a trailing
// comma: the client's body went upstream untouched, credential added.
func TestUnparsedBodiesNeverForwarded(t *testing.T) {
	const yaml = `
secrets:
  github: { env: GITHUB_TOKEN }
routes:
  - name: chat
    path: /chat
    methods: [POST]
    upstream: "{{UP}}/api/chat"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
    transform:
      request: '{model: "cheap-model", max_tokens: 50, messages: .messages}'
  - name: checked
    path: /checked
    methods: [POST]
    upstream: "{{UP}}/api/checked"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
    validate:
      body:
        type: object
        required: [model]
        properties: { model: { enum: [cheap-model] }, max_tokens: { type: integer, maximum: 50 } }
`
	h := newHarness(t, yaml, nil)
	const attack = `{"model":"expensive-model","max_tokens":100000,"messages":[]}`
	cases := []struct {
		name, ctype, body string
		status            int
		code              string
	}{
		{"BOM", "application/json", "\ufeff" + attack, 400, "invalid_json"},
		{"text/plain", "text/plain", attack, 415, "unsupported_media_type"},
		{"no Content-Type", "", attack, 415, "unsupported_media_type"},
		{"trailing comma", "application/json", `{"model":"expensive-model","max_tokens":100000,"messages":[],}`, 400, "invalid_json"},
		{"trailing data", "application/json", attack + `{"model":"x"}`, 400, "invalid_json"},
	}
	for _, c := range cases {
		t.Run("transform/"+c.name, func(t *testing.T) {
			hdr := http.Header{}
			if c.ctype != "" {
				hdr.Set("Content-Type", c.ctype)
			}
			refused(t, h, h.Raw("POST", "/chat", hdr, c.body), c.status, c.code)
		})
	}
	for _, c := range append(cases[:len(cases):len(cases)],
		struct {
			name, ctype, body string
			status            int
			code              string
		}{"duplicate key", "application/json", `{"model":"expensive-model","max_tokens":50,"model":"cheap-model"}`, 400, "validation_failed"},
		struct {
			name, ctype, body string
			status            int
			code              string
		}{"invalid UTF-8", "application/json", "{\"model\":\"cheap-model\",\"x\":\"\xff\"}", 400, "validation_failed"},
	) {
		t.Run("validate/"+c.name, func(t *testing.T) {
			hdr := http.Header{}
			if c.ctype != "" {
				hdr.Set("Content-Type", c.ctype)
			}
			code := c.code
			if code == "invalid_json" {
				code = "validation_failed" // the validator lists it as a violation
			}
			refused(t, h, h.Raw("POST", "/checked", hdr, c.body), c.status, code)
		})
	}
	// What the route is for still works.
	seen := ok(t, h, h.Raw("POST", "/chat", http.Header{"Content-Type": {"application/json"}}, attack))
	if seen.Body != `{"max_tokens":50,"messages":[],"model":"cheap-model"}` {
		t.Errorf("upstream got %s", seen.Body)
	}
	ok(t, h, h.Raw("POST", "/checked", http.Header{"Content-Type": {"application/json"}}, `{"model":"cheap-model","max_tokens":50}`))
}
