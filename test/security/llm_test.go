package security_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/llm/llmtest"
)

func llmConfig(up string) string {
	return fmt.Sprintf(`
secrets:
  github: { env: GITHUB_TOKEN }
routes:
  - name: chat
    path: /chat
    methods: [POST]
    upstream: "%s/v1/chat/completions"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
    llm:
      api: openai-chat
      models: [gpt-4o-mini]
      max_tokens: 64
      prices: { gpt-4o-mini: { input: $0.15, output: $0.60 } }
`, up)
}

// TestLLMRouteMetered: a model route refuses other models before the
// upstream, bounds the answer on every field that limits it, asks a
// stream for its usage, reads the usage as the stream passes, and logs
// model, tokens and cost; a stream cut before its usage is charged the
// reservation, never zero.
func TestLLMRouteMetered(t *testing.T) {
	for _, mode := range []llmtest.Mode{llmtest.Complete, llmtest.Cut} {
		t.Run(fmt.Sprint("mode ", mode), func(t *testing.T) {
			up := llmtest.NewServer(t, llmtest.Config{API: "openai-chat", Mode: mode, Input: 10, Output: 5})
			h := newHarness(t, llmConfig(up.URL), nil)
			json := http.Header{"Content-Type": {"application/json"}}

			refused(t, h, h.Raw("POST", "/chat", json, `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`),
				http.StatusBadRequest, "model_not_allowed")
			if n := len(up.Requests()); n != 0 {
				t.Fatalf("the upstream got %d requests for a model not allowed", n)
			}

			res, err := h.GW.Client().Post(h.GW.URL+"/chat", "application/json", strings.NewReader(
				`{"model":"gpt-4o-mini","stream":true,"max_tokens":100000,"messages":[{"role":"user","content":"hi"}]}`))
			if err != nil {
				t.Fatal(err)
			}
			body, rerr := io.ReadAll(res.Body)
			res.Body.Close()
			h.Record(res, body)
			if mode == llmtest.Complete && (rerr != nil || res.StatusCode != 200 || !strings.Contains(string(body), "data: [DONE]")) {
				t.Fatalf("stream: %d %v %q", res.StatusCode, rerr, body)
			}
			reqs := up.Requests()
			if len(reqs) != 1 {
				t.Fatalf("upstream requests: %d", len(reqs))
			}
			var sent struct {
				MaxTokens     int64 `json:"max_tokens"`
				StreamOptions struct {
					IncludeUsage bool `json:"include_usage"`
				} `json:"stream_options"`
			}
			if err := jsonUnmarshal(reqs[0].Body, &sent); err != nil || sent.MaxTokens != 64 || !sent.StreamOptions.IncludeUsage {
				t.Errorf("sent upstream: %s (want max_tokens lowered to 64 and include_usage)", reqs[0].Body)
			}
			e := accessLine(t, h.Logs, res.Header.Get("X-Request-Id"))
			if e["model"] != "gpt-4o-mini" {
				t.Errorf("access log model %v", e["model"])
			}
			cost, _ := e["cost"].(float64)
			switch mode {
			case llmtest.Complete:
				// 10 in at $0.15/M + 5 out at $0.60/M = $0.0000045, charged
				// in whole micro-dollars, rounded up.
				if e["tokens_in"] != float64(10) || e["tokens_out"] != float64(5) || cost != 0.000005 {
					t.Errorf("access log: tokens %v/%v cost %v, want 10/5 $0.000005", e["tokens_in"], e["tokens_out"], e["cost"])
				}
			case llmtest.Cut:
				if cost <= 0.000005 {
					t.Errorf("a stream cut before its usage cost %v: it must be charged the reservation, never less", e["cost"])
				}
			}
			if m := grepLines(metricsText(h), "keyward_spend_dollars_total"); !strings.Contains(m, `model="gpt-4o-mini"`) {
				t.Errorf("no spend metric:\n%s", m)
			}
		})
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
