package llm_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/llm"
	"github.com/keyward/keyward/internal/llm/llmtest"
)

// target is one API's model, request path and body, streamed or not.
type target struct {
	api, model, path, body string
	stream                 bool
}

func targets() []target {
	return []target{
		{"openai-chat", "gpt-4o-mini", "/v1/chat/completions", `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}]}`, false},
		{"openai-chat", "gpt-4o-mini", "/v1/chat/completions", `{"model":"gpt-4o-mini","stream":true,"max_tokens":100000,"messages":[{"role":"user","content":"Say hi"}]}`, true},
		{"openai-responses", "gpt-4.1-mini", "/v1/responses", `{"model":"gpt-4.1-mini","input":"Say hi"}`, false},
		{"openai-responses", "gpt-4.1-mini", "/v1/responses", `{"model":"gpt-4.1-mini","input":"Say hi","stream":true}`, true},
		{"anthropic-messages", "claude-sonnet-4-5", "/v1/messages", `{"model":"claude-sonnet-4-5","max_tokens":4096,"messages":[{"role":"user","content":"Say hi"}]}`, false},
		{"anthropic-messages", "claude-sonnet-4-5", "/v1/messages", `{"model":"claude-sonnet-4-5","stream":true,"messages":[{"role":"user","content":"Say hi"}]}`, true},
		{"gemini", "gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:generateContent", `{"contents":[{"parts":[{"text":"Say hi"}]}]}`, false},
		{"gemini", "gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", `{"contents":[{"parts":[{"text":"Say hi"}]}]}`, true},
		{"gemini", "gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", `{"generationConfig":{"maxOutputTokens":100000},"contents":[{"parts":[{"text":"Say hi"}]}]}`, true},
	}
}

const clamp = 7 // the route's max_tokens; the stand-ins want to say more

// exchange prepares tg's request for the policy, sends it to the stand-in
// and meters the answer as a gateway would: the body read through the
// Meter. It returns the request, the status, the usage and the error
// that ended the body.
func exchange(t *testing.T, s *llmtest.Server, tg target) (*llm.Request, int, llm.Usage, error) {
	t.Helper()
	r := prepare(t, tg)
	status, u, err := send(s, tg, r)
	if status == 0 {
		t.Fatal(err)
	}
	return r, status, u, err
}

func prepare(t *testing.T, tg target) *llm.Request {
	t.Helper()
	p, err := llm.Compile(config.LLM{API: tg.api, Models: []string{tg.model}, MaxTokens: clamp + 9*btoi(tg.api == "openai-responses"),
		Prices: map[string]config.ModelPrice{tg.model: {Input: "$0.15", Output: "$0.60", CachedInput: "$0.075"}}})
	if err != nil {
		t.Fatal(err)
	}
	path, _, _ := strings.Cut(tg.path, "?")
	r, err := p.Prepare([]byte(tg.body), path)
	if err != nil {
		t.Fatal(err)
	}
	if r.Stream != tg.stream {
		t.Fatalf("Stream = %v", r.Stream)
	}
	return r
}

// send sends r to the stand-in; status 0 means no answer.
func send(s *llmtest.Server, tg target, r *llm.Request) (int, llm.Usage, error) {
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, s.URL+tg.path, bytes.NewReader(r.Body))
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, llm.Usage{}, err
	}
	defer res.Body.Close()
	m := r.Meter()
	_, rerr := io.Copy(io.Discard, m.Body(res.Body))
	return res.StatusCode, m.Usage(), rerr
}

func btoi(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func name(tg target) string {
	switch {
	case tg.api == "gemini" && tg.stream && !strings.HasSuffix(tg.path, "alt=sse"):
		return tg.api + "/array-stream"
	case tg.stream:
		return tg.api + "/stream"
	}
	return tg.api + "/body"
}

// TestStandInsMetered: every API's answer, as a body and as a stream,
// is metered to the token, with the clamp applied upstream (the
// stand-ins want 50 tokens, the route allows 7) and OpenAI chat's usage
// chunk asked for (the stand-in sends it only then, as OpenAI does).
func TestStandInsMetered(t *testing.T) {
	for _, tg := range targets() {
		t.Run(name(tg), func(t *testing.T) {
			s := llmtest.NewServer(t, llmtest.Config{API: tg.api, Input: 20, CachedInput: 16, Output: 50})
			r, status, u, err := exchange(t, s, tg)
			if err != nil || status != 200 {
				t.Fatalf("status %d, body error %v", status, err)
			}
			in, cached, _, out := s.Usage(r.OutputTokens, 1)
			want := llm.Usage{Model: tg.model, Input: in, CachedInput: cached, Output: out, Complete: true}
			if diff := cmp.Diff(want, u); diff != "" {
				t.Errorf("usage (-want +got):\n%s", diff)
			}
			if out != r.OutputTokens || out > clamp+9 {
				t.Errorf("output %d tokens, the clamp allowed %d", out, r.OutputTokens)
			}
			if got, want := r.Charge(status, u).Money, r.Price().Cost(want); got != want || got > r.Reserve().Money {
				t.Errorf("Charge = %d, want %d, at most the reservation %d", got, want, r.Reserve().Money)
			}
		})
	}
}

// TestStandInsIncomplete: a stream cut midway, one without usage, one
// that fails after its headers, and an upstream refusal are all metered
// as incomplete; the first three cost the reservation, the refusal
// nothing.
func TestStandInsIncomplete(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mode   llmtest.Mode
		status int
		cut    bool // the body ends with an error
		free   bool
	}{
		{name: "cut midway", mode: llmtest.Cut, cut: true},
		{name: "no usage", mode: llmtest.NoUsage},
		{name: "error after headers", mode: llmtest.ErrorAfterHeaders},
		{name: "refused", status: http.StatusTooManyRequests, free: true},
	} {
		for _, tg := range targets() {
			if !tg.stream && tc.mode != llmtest.Cut && tc.status == 0 {
				continue // a body without usage is NoUsage's stream case; covered by the meter's own tests
			}
			t.Run(tc.name+"/"+name(tg), func(t *testing.T) {
				s := llmtest.NewServer(t, llmtest.Config{API: tg.api, Mode: tc.mode, Status: tc.status, Output: 50})
				r, status, u, err := exchange(t, s, tg)
				if tc.cut != (err != nil) {
					t.Fatalf("body error %v, want one: %v", err, tc.cut)
				}
				if tc.cut && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("body error %v, want unexpected EOF", err)
				}
				if u.Complete {
					t.Fatalf("usage %+v is complete", u)
				}
				want := r.Reserve()
				if tc.free {
					want = llm.Amount{}
				}
				if got := r.Charge(status, u); got != want {
					t.Errorf("Charge = %+v, want %+v", got, want)
				}
			})
		}
	}
}

// TestStandInRecordsRequests: what reached the stand-in is the rewritten
// body, and in-flight requests are counted.
func TestStandInRecordsRequests(t *testing.T) {
	release := make(chan struct{})
	held := make(chan struct{}, 3)
	s := llmtest.NewServer(t, llmtest.Config{API: "anthropic-messages", Output: 3, Pace: func(ctx context.Context, chunk int) error {
		if chunk == 0 {
			held <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}})
	tg := targets()[5]
	r := prepare(t, tg)
	done := make(chan error, 3)
	for range 3 {
		go func() {
			_, u, err := send(s, tg, r)
			if err == nil && !u.Complete {
				err = errors.New("incomplete usage")
			}
			done <- err
		}()
	}
	for range 3 {
		<-held
	}
	if n := s.InFlight(); n != 3 {
		t.Errorf("InFlight = %d while three streams are held, want 3", n)
	}
	close(release)
	for range 3 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	if s.MaxInFlight() != 3 || s.InFlight() != 0 {
		t.Errorf("MaxInFlight, InFlight = %d, %d; want 3, 0", s.MaxInFlight(), s.InFlight())
	}
	reqs := s.Requests()
	if len(reqs) != 3 || !strings.Contains(string(reqs[0].Body), `"max_tokens":7`) {
		t.Errorf("the stand-in received %d requests, the first: %s", len(reqs), reqs[0].Body)
	}
}
