package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTestShowsTheReservation: keyward test prints what a call would
// reserve against money budgets, and the price it used.
func TestTestShowsTheReservation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keyward.yaml")
	cfg := `
secrets:
  openai: { env: KEYWARD_TEST_OPENAI }
routes:
  - name: chat
    path: /chat
    methods: [POST]
    upstream: "https://api.openai.com/v1/chat/completions"
    headers: { set: { Authorization: "Bearer {secret.openai}" } }
    llm:
      api: openai-chat
      models: [gpt-4o-mini]
      max_tokens: 512
      prices: { gpt-4o-mini: { input: $0.15, output: $0.60 } }
    limits: { budget: $5/day }
  - name: geocode
    path: /geocode
    upstream: "https://maps.example.com/geocode"
    price: $0.005
    limits: { budget: $20/day }
`
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYWARD_TEST_OPENAI", "sk-test-0123456789abcdef")
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}`
	code, stdout, stderr := run(t, "test", "-c", path, "POST", "/chat", "-H", "Content-Type: application/json", "-d", body)
	if code != exitOK || !strings.Contains(stdout, "cost:     reserves $0.000") || !strings.Contains(stdout, "at most 512 output tokens at $0.6/M") {
		t.Errorf("llm route: %d\n%s\n%s", code, stdout, stderr)
	}
	_, stdout, _ = run(t, "test", "-c", path, "POST", "/chat", "-H", "Content-Type: application/json", "-d", strings.Replace(body, "gpt-4o-mini", "gpt-4o", 1))
	if !strings.Contains(stdout, "cost:     refused before the upstream: model_not_allowed") {
		t.Errorf("a model not allowed:\n%s", stdout)
	}
	_, stdout, _ = run(t, "test", "-c", path, "GET", "/geocode")
	if !strings.Contains(stdout, "cost:     $0.005 per upstream call (price)") {
		t.Errorf("priced route:\n%s", stdout)
	}
	if strings.Contains(stdout, "sk-test") {
		t.Errorf("the secret is printed")
	}
}
