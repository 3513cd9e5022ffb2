package gateway_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
)

const bodyConfig = `
secrets:
  mailer: { env: MAILER_KEY }
cors:
  allow_origins: ["https://app.example.com"]
routes:
  - name: contact
    path: /contact
    methods: [POST]
    max_body: 256
    upstream: "{{UP}}/v1/send"
    validate:
      query:
        lang: { enum: [en, de] }
      body:
        type: object
        required: [email, message]
        additionalProperties: false
        properties:
          email: { type: string, format: email }
          message: { type: string, minLength: 1, maxLength: 100 }
    transform:
      request: '{to: "team@example.com", from: .email, text: .message, api_key: $secret.mailer}'
  - name: repos
    path: /repos
    upstream: "{{UP}}/user/repos"
    transform:
      response: '[.[] | {name}]'
  - name: spin
    path: /spin
    methods: [POST]
    upstream: "{{UP}}/spin"
    transform:
      request: 'def f: f; f'
  - name: huge
    path: /huge
    methods: [POST]
    upstream: "{{UP}}/huge"
    transform:
      request: '[range(1e9)]'
`

type apiError struct {
	Error struct {
		Code       string `json:"code"`
		Violations []struct {
			In, Path, Message string
		} `json:"violations"`
	} `json:"error"`
}

func decodeError(t *testing.T, body string) apiError {
	t.Helper()
	var e apiError
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("not a JSON error: %q", body)
	}
	return e
}

func TestValidation(t *testing.T) {
	h := gatewaytest.New(t, bodyConfig, nil)
	t.Cleanup(h.Scan)
	jsonCT := http.Header{"Content-Type": {"application/json"}}
	for _, tc := range []struct {
		name, target, ctype, body string
		status                    int
		code                      string
		paths                     []string // "in:path" of each violation
	}{
		{"missing fields", "/contact", "application/json", `{}`, 400, "validation_failed", []string{"body:/email", "body:/message"}},
		{"bad email", "/contact", "application/json", `{"email":"nope","message":"hi"}`, 400, "validation_failed", []string{"body:/email"}},
		{"wrong type", "/contact", "application/json", `{"email":"a@b.example","message":5}`, 400, "validation_failed", []string{"body:/message"}},
		{"extra field", "/contact", "application/json", `{"email":"a@b.example","message":"hi","admin":true}`, 400, "validation_failed", []string{"body:"}},
		{"not JSON", "/contact", "application/json", `{"email":`, 400, "validation_failed", []string{"body:"}},
		{"bad query and body at once", "/contact?lang=fr", "application/json", `{"email":"x"}`, 400, "validation_failed", []string{"query:lang", "body:/email", "body:/message"}},
		{"wrong content type", "/contact", "text/plain", `{"email":"a@b.example","message":"hi"}`, 415, "unsupported_media_type", []string{"header:Content-Type"}},
		{"oversize", "/contact", "application/json", `{"email":"a@b.example","message":"` + strings.Repeat("x", 300) + `"}`, 413, "body_too_large", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := h.Raw("POST", tc.target, http.Header{"Content-Type": {tc.ctype}}, tc.body)
			if res.Status != tc.status {
				t.Fatalf("status %d, want %d: %s", res.Status, tc.status, res.Body)
			}
			e := decodeError(t, res.Body)
			if e.Error.Code != tc.code {
				t.Errorf("code %q, want %q", e.Error.Code, tc.code)
			}
			if tc.paths != nil {
				var got []string
				for _, v := range e.Error.Violations {
					got = append(got, v.In+":"+v.Path)
				}
				if diff := cmp.Diff(tc.paths, got); diff != "" {
					t.Errorf("violations (-want +got):\n%s\n%s", diff, res.Body)
				}
			}
			if g := h.Up.Take(); len(g) != 0 {
				t.Errorf("the upstream received %d requests", len(g))
			}
		})
	}

	t.Run("valid request is transformed, with the secret in the body", func(t *testing.T) {
		res := h.Raw("POST", "/contact?lang=de", jsonCT, `{"email":"a@b.example","message":"hello"}`)
		if res.Status != 200 {
			t.Fatalf("status %d: %s", res.Status, res.Body)
		}
		g := h.Up.Take()
		if len(g) != 1 {
			t.Fatalf("upstream got %d requests", len(g))
		}
		var sent map[string]string
		if err := json.Unmarshal([]byte(g[0].Body), &sent); err != nil {
			t.Fatalf("upstream body %q: %v", g[0].Body, err)
		}
		want := map[string]string{"to": "team@example.com", "from": "a@b.example", "text": "hello", "api_key": gatewaytest.Mailer}
		if diff := cmp.Diff(want, sent); diff != "" {
			t.Errorf("upstream body (-want +got):\n%s", diff)
		}
		if ct := g[0].Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("upstream Content-Type %q", ct)
		}
	})
}

func TestTransforms(t *testing.T) {
	h := gatewaytest.New(t, bodyConfig, nil)
	t.Cleanup(h.Scan)

	res := h.Get("/repos", nil)
	if res.Status != 200 || strings.TrimSpace(res.Body) != `[{"name":"keyward"}]` {
		t.Errorf("response transform: %d %q", res.Status, res.Body)
	}
	if res.Header.Get("Content-Length") != "20" {
		t.Errorf("Content-Length %q", res.Header.Get("Content-Length"))
	}
	h.Up.Take()

	for _, target := range []string{"/spin", "/huge"} {
		res := h.Raw("POST", target, http.Header{"Content-Type": {"application/json"}}, `{}`)
		if res.Status != 502 || decodeError(t, res.Body).Error.Code != "transform_failed" {
			t.Errorf("%s: %d %s", target, res.Status, res.Body)
		}
	}
	if g := h.Up.Take(); len(g) != 0 {
		t.Errorf("the upstream received %d requests", len(g))
	}
	// The gateway keeps serving after a runaway expression.
	if res := h.Get("/repos", nil); res.Status != 200 {
		t.Errorf("after runaway transforms: %d", res.Status)
	}
}

func TestResponseTransformMayNotReadSecrets(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "keyward.yaml")
	yaml := `
secrets:
  mailer: { env: MAILER_KEY }
routes:
  - name: leak
    path: /leak
    upstream: "https://api.example.com/x"
    transform:
      response: '{leak: $secret.mailer}'
`
	if err := os.WriteFile(name, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := config.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = gateway.Compile(f, gateway.Options{Getenv: func(string) string { return gatewaytest.Mailer }})
	if err == nil || !strings.Contains(err.Error(), "keyward.yaml:9: routes[0].transform.response") {
		t.Fatalf("compile error: %v", err)
	}
	if strings.Contains(err.Error(), gatewaytest.Mailer) {
		t.Errorf("the error contains the secret")
	}
}
