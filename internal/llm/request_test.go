package llm

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/config"
)

func mustCompile(t testing.TB, c config.LLM) *Policy {
	t.Helper()
	p, err := Compile(c)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return p
}

func policy(t testing.TB, api string, models ...string) *Policy {
	t.Helper()
	prices := map[string]config.ModelPrice{}
	for _, m := range models {
		prices[m] = config.ModelPrice{Input: "$0.15", Output: "$0.60"}
	}
	return mustCompile(t, config.LLM{API: api, Models: models, MaxTokens: 512, Prices: prices})
}

// prepareCase is one request through Prepare: the body (and path, for
// Gemini) and either the body sent upstream with the output bound, or
// the code of the refusal.
type prepareCase struct {
	name, body, path string
	want             string // the upstream body; "" with code set
	out              int64
	stream           bool
	code             string
}

func runPrepare(t *testing.T, p *Policy, cases []prepareCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := []byte(tc.body)
			r, err := p.Prepare(in, tc.path)
			if tc.code != "" {
				var re *RequestError
				if !errors.As(err, &re) || re.Code != tc.code {
					t.Fatalf("Prepare error = %v, want code %s", err, tc.code)
				}
				return
			}
			if err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if string(in) != tc.body {
				t.Fatalf("Prepare modified the client's body")
			}
			if diff := cmp.Diff(tc.want, string(r.Body)); diff != "" {
				t.Errorf("upstream body (-want +got):\n%s", diff)
			}
			if r.OutputTokens != tc.out || r.Stream != tc.stream {
				t.Errorf("OutputTokens, Stream = %d, %v; want %d, %v", r.OutputTokens, r.Stream, tc.out, tc.stream)
			}
			// What Prepare sends, Prepare leaves alone: every limit holds.
			again, err := p.Prepare(r.Body, tc.path)
			if err != nil || string(again.Body) != string(r.Body) {
				t.Errorf("a second Prepare changed the body or failed: %v\n%s", err, again.Body)
			}
		})
	}
}

func TestPrepareOpenAIChat(t *testing.T) {
	p := policy(t, "openai-chat", "gpt-4o-mini")
	const msgs = `"messages":[{"role":"user","content":"hi"}]`
	runPrepare(t, p, []prepareCase{
		{name: "absent: max_completion_tokens set, not max_tokens (o-series refuse it)",
			body: `{"model":"gpt-4o-mini",` + msgs + `}`,
			want: `{"model":"gpt-4o-mini",` + msgs + `,"max_completion_tokens":512}`, out: 512},
		{name: "max_tokens lower: kept",
			body: `{"model":"gpt-4o-mini","max_tokens":100,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","max_tokens":100,` + msgs + `}`, out: 100},
		{name: "max_tokens higher: lowered",
			body: `{"model":"gpt-4o-mini","max_tokens":4096,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","max_tokens":512,` + msgs + `}`, out: 512},
		{name: "max_completion_tokens higher: lowered",
			body: `{"model":"gpt-4o-mini",` + msgs + `, "max_completion_tokens" : 100000 }`,
			want: `{"model":"gpt-4o-mini",` + msgs + `, "max_completion_tokens" : 512 }`, out: 512},
		{name: "both higher: both lowered",
			body: `{"model":"gpt-4o-mini","max_tokens":9999,"max_completion_tokens":8888,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","max_tokens":512,"max_completion_tokens":512,` + msgs + `}`, out: 512},
		{name: "both, one lower: the larger bounds the reservation",
			body: `{"model":"gpt-4o-mini","max_tokens":9999,"max_completion_tokens":64,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","max_tokens":512,"max_completion_tokens":64,` + msgs + `}`, out: 512},
		{name: "null is absent, and replaced rather than duplicated",
			body: `{"model":"gpt-4o-mini","max_completion_tokens":null,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","max_completion_tokens":512,` + msgs + `}`, out: 512},
		{name: "an exponent is read and rewritten plainly",
			body: `{"model":"gpt-4o-mini","max_tokens":1e3,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","max_tokens":512,` + msgs + `}`, out: 512},
		{name: "a whole float is rewritten plainly",
			body: `{"model":"gpt-4o-mini","max_tokens":100.0,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","max_tokens":100,` + msgs + `}`, out: 100},
		{name: "beyond int64: lowered",
			body: `{"model":"gpt-4o-mini","max_tokens":99999999999999999999999,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","max_tokens":512,` + msgs + `}`, out: 512},
		{name: "infinite exponent: lowered",
			body: `{"model":"gpt-4o-mini","max_tokens":1e400,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","max_tokens":512,` + msgs + `}`, out: 512},
		{name: "n answers multiply the output",
			body: `{"model":"gpt-4o-mini","n":3,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","n":3,` + msgs + `,"max_completion_tokens":512}`, out: 1536},
		{name: "a prediction is billed as output when rejected",
			body: `{"model":"gpt-4o-mini","max_tokens":10,"prediction":{"type":"content","content":"` + strings.Repeat("x", 290) + `"},` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","max_tokens":10,"prediction":{"type":"content","content":"` + strings.Repeat("x", 290) + `"},` + msgs + `}`,
			out:  10 + int64(len(`{"type":"content","content":""}`)+290+2)/3},
		{name: "stream: include_usage added",
			body: `{"model":"gpt-4o-mini","stream":true,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","stream":true,` + msgs + `,"max_completion_tokens":512,"stream_options":{"include_usage":true}}`, out: 512, stream: true},
		{name: "stream: other stream options kept",
			body: `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_obfuscation":false},"max_tokens":8,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_obfuscation":false,"include_usage":true},"max_tokens":8,` + msgs + `}`, out: 8, stream: true},
		{name: "stream: include_usage false turned on",
			body: `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":false},"max_tokens":8,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"max_tokens":8,` + msgs + `}`, out: 8, stream: true},
		{name: "stream: empty stream options",
			body: `{"model":"gpt-4o-mini","stream":true,"stream_options":{ },"max_tokens":8,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true },"max_tokens":8,` + msgs + `}`, out: 8, stream: true},
		{name: "stream: null stream options replaced",
			body: `{"model":"gpt-4o-mini","stream":true,"stream_options":null,"max_tokens":8,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"max_tokens":8,` + msgs + `}`, out: 8, stream: true},
		{name: "no stream: stream options untouched",
			body: `{"model":"gpt-4o-mini","stream":false,"max_tokens":8,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","stream":false,"max_tokens":8,` + msgs + `}`, out: 8},
		{name: "an escaped model name is the model it decodes to",
			body: `{"model":"gpt-4o\u002dmini","max_tokens":8,` + msgs + `}`,
			want: `{"model":"gpt-4o\u002dmini","max_tokens":8,` + msgs + `}`, out: 8},
		{name: "escaped key is read", body: `{"model":"gpt-4o-mini","max\u005ftokens":4096,` + msgs + `}`,
			want: `{"model":"gpt-4o-mini","max\u005ftokens":512,` + msgs + `}`, out: 512},

		{name: "model not allowed", body: `{"model":"gpt-4o",` + msgs + `}`, code: CodeModelNotAllowed},
		{name: "model absent", body: `{` + msgs + `}`, code: CodeModelNotAllowed},
		{name: "model null", body: `{"model":null,` + msgs + `}`, code: CodeModelNotAllowed},
		{name: "model differs by case", body: `{"model":"GPT-4o-mini",` + msgs + `}`, code: CodeModelNotAllowed},
		{name: "model not a string", body: `{"model":["gpt-4o-mini"],` + msgs + `}`, code: CodeInvalidRequest},
		{name: "duplicate model", body: `{"model":"gpt-4o-mini","model":"gpt-4o",` + msgs + `}`, code: CodeInvalidJSON},
		{name: "duplicate model spelled with an escape", body: `{"model":"gpt-4o-mini","mod\u0065l":"gpt-4o",` + msgs + `}`, code: CodeInvalidJSON},
		{name: "duplicate max_tokens", body: `{"model":"gpt-4o-mini","max_tokens":1,"max_tokens":99999,` + msgs + `}`, code: CodeInvalidJSON},
		{name: "invalid UTF-8", body: "{\"model\":\"gpt-4o-mini\xff\"," + msgs + "}", code: CodeInvalidJSON},
		{name: "lone surrogate", body: `{"model":"gpt-4o-mini","user":"\ud800",` + msgs + `}`, code: CodeInvalidJSON},
		{name: "not an object", body: `[{"model":"gpt-4o-mini"}]`, code: CodeInvalidJSON},
		{name: "trailing data", body: `{"model":"gpt-4o-mini"} {"model":"gpt-4o"}`, code: CodeInvalidJSON},
		{name: "empty body", body: ``, code: CodeInvalidJSON},
		{name: "max_tokens a string", body: `{"model":"gpt-4o-mini","max_tokens":"100"}`, code: CodeInvalidRequest},
		{name: "max_tokens negative (unlimited to some servers)", body: `{"model":"gpt-4o-mini","max_tokens":-1}`, code: CodeInvalidRequest},
		{name: "max_tokens zero", body: `{"model":"gpt-4o-mini","max_completion_tokens":0}`, code: CodeInvalidRequest},
		{name: "max_tokens a fraction", body: `{"model":"gpt-4o-mini","max_tokens":1.5}`, code: CodeInvalidRequest},
		{name: "max_tokens a boolean", body: `{"model":"gpt-4o-mini","max_tokens":true}`, code: CodeInvalidRequest},
		{name: "n zero", body: `{"model":"gpt-4o-mini","n":0}`, code: CodeInvalidRequest},
		{name: "stream a string", body: `{"model":"gpt-4o-mini","stream":"true"}`, code: CodeInvalidRequest},
		{name: "stream options a string", body: `{"model":"gpt-4o-mini","stream":true,"stream_options":"usage"}`, code: CodeInvalidRequest},
	})
}

func TestPrepareOpenAIResponses(t *testing.T) {
	p := policy(t, "openai-responses", "gpt-4.1-mini")
	runPrepare(t, p, []prepareCase{
		{name: "absent: set", body: `{"model":"gpt-4.1-mini","input":"hi"}`,
			want: `{"model":"gpt-4.1-mini","input":"hi","max_output_tokens":512}`, out: 512},
		{name: "lower: kept", body: `{"model":"gpt-4.1-mini","input":"hi","max_output_tokens":16}`,
			want: `{"model":"gpt-4.1-mini","input":"hi","max_output_tokens":16}`, out: 16},
		{name: "higher: lowered", body: `{"model":"gpt-4.1-mini","input":"hi","max_output_tokens":32768}`,
			want: `{"model":"gpt-4.1-mini","input":"hi","max_output_tokens":512}`, out: 512},
		{name: "null: replaced", body: `{"model":"gpt-4.1-mini","max_output_tokens":null,"input":"hi","stream":true}`,
			want: `{"model":"gpt-4.1-mini","max_output_tokens":512,"input":"hi","stream":true}`, out: 512, stream: true},
		{name: "chat's fields are not this API's", body: `{"model":"gpt-4.1-mini","input":"hi","max_tokens":99999}`,
			want: `{"model":"gpt-4.1-mini","input":"hi","max_tokens":99999,"max_output_tokens":512}`, out: 512},
		{name: "model not allowed", body: `{"model":"o3","input":"hi"}`, code: CodeModelNotAllowed},
		{name: "no model (a stored prompt's model is not checked)", body: `{"prompt":{"id":"pmpt_1"},"input":"hi"}`, code: CodeModelNotAllowed},
		{name: "max_output_tokens a string", body: `{"model":"gpt-4.1-mini","max_output_tokens":"16"}`, code: CodeInvalidRequest},
	})
}

func TestPrepareAnthropic(t *testing.T) {
	p := policy(t, "anthropic-messages", "claude-sonnet-4-5")
	const msgs = `"messages":[{"role":"user","content":"Hello"}]`
	runPrepare(t, p, []prepareCase{
		{name: "absent (the API requires it): set", body: `{"model":"claude-sonnet-4-5",` + msgs + `}`,
			want: `{"model":"claude-sonnet-4-5",` + msgs + `,"max_tokens":512}`, out: 512},
		{name: "lower: kept", body: `{"model":"claude-sonnet-4-5","max_tokens":100,` + msgs + `}`,
			want: `{"model":"claude-sonnet-4-5","max_tokens":100,` + msgs + `}`, out: 100},
		{name: "higher: lowered", body: `{"model":"claude-sonnet-4-5","max_tokens":64000,"stream":true,` + msgs + `}`,
			want: `{"model":"claude-sonnet-4-5","max_tokens":512,"stream":true,` + msgs + `}`, out: 512, stream: true},
		{name: "model not allowed", body: `{"model":"claude-opus-4-1","max_tokens":100,` + msgs + `}`, code: CodeModelNotAllowed},
		{name: "max_tokens an object", body: `{"model":"claude-sonnet-4-5","max_tokens":{"value":1},` + msgs + `}`, code: CodeInvalidRequest},
	})
}

func TestPrepareGemini(t *testing.T) {
	p := policy(t, "gemini", "gemini-2.5-flash")
	const gen = "/v1beta/models/gemini-2.5-flash:generateContent"
	const stream = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
	const contents = `"contents":[{"parts":[{"text":"hi"}]}]`
	runPrepare(t, p, []prepareCase{
		{name: "absent: generationConfig added", path: gen, body: `{` + contents + `}`,
			want: `{` + contents + `,"generationConfig":{"maxOutputTokens":512}}`, out: 512},
		{name: "config without the limit: nested field added", path: stream, body: `{` + contents + `,"generationConfig":{"temperature":0.2}}`,
			want: `{` + contents + `,"generationConfig":{"temperature":0.2,"maxOutputTokens":512}}`, out: 512, stream: true},
		{name: "empty config", path: gen, body: `{` + contents + `,"generationConfig":{}}`,
			want: `{` + contents + `,"generationConfig":{"maxOutputTokens":512}}`, out: 512},
		{name: "lower: kept", path: gen, body: `{` + contents + `,"generationConfig":{"maxOutputTokens":64}}`,
			want: `{` + contents + `,"generationConfig":{"maxOutputTokens":64}}`, out: 64},
		{name: "higher: lowered", path: gen, body: `{` + contents + `,"generationConfig":{"maxOutputTokens":65536,"topK":3}}`,
			want: `{` + contents + `,"generationConfig":{"maxOutputTokens":512,"topK":3}}`, out: 512},
		{name: "proto spelling: lowered where written", path: gen, body: `{` + contents + `,"generation_config":{"max_output_tokens":65536}}`,
			want: `{` + contents + `,"generation_config":{"max_output_tokens":512}}`, out: 512},
		{name: "proto spelling without the limit", path: gen, body: `{` + contents + `,"generation_config":{"temperature":1}}`,
			want: `{` + contents + `,"generation_config":{"temperature":1,"maxOutputTokens":512}}`, out: 512},
		{name: "null config replaced", path: gen, body: `{` + contents + `,"generationConfig":null}`,
			want: `{` + contents + `,"generationConfig":{"maxOutputTokens":512}}`, out: 512},
		{name: "candidates multiply the output", path: gen, body: `{` + contents + `,"generationConfig":{"candidateCount":2}}`,
			want: `{` + contents + `,"generationConfig":{"candidateCount":2,"maxOutputTokens":512}}`, out: 1024},
		{name: "an escaped path", path: "/v1beta/models/gemini-2.5-flash%3AgenerateContent", body: `{` + contents + `}`,
			want: `{` + contents + `,"generationConfig":{"maxOutputTokens":512}}`, out: 512},
		{name: "the body names the path's model", path: gen, body: `{"model":"models/gemini-2.5-flash",` + contents + `}`,
			want: `{"model":"models/gemini-2.5-flash",` + contents + `,"generationConfig":{"maxOutputTokens":512}}`, out: 512},

		{name: "both spellings of the config", path: gen, body: `{` + contents + `,"generationConfig":{},"generation_config":{"max_output_tokens":99999}}`, code: CodeInvalidRequest},
		{name: "both spellings of the limit", path: gen, body: `{` + contents + `,"generationConfig":{"maxOutputTokens":8,"max_output_tokens":99999}}`, code: CodeInvalidRequest},
		{name: "config not an object", path: gen, body: `{` + contents + `,"generationConfig":[]}`, code: CodeInvalidRequest},
		{name: "model not allowed", path: "/v1beta/models/gemini-2.5-pro:generateContent", body: `{` + contents + `}`, code: CodeModelNotAllowed},
		{name: "the body names another model", path: gen, body: `{"model":"models/gemini-2.5-pro",` + contents + `}`, code: CodeModelNotAllowed},
		{name: "a tuned model", path: "/v1beta/tunedModels/mine:generateContent", body: `{` + contents + `}`, code: CodeModelNotAllowed},
		{name: "no method", path: "/v1beta/models/gemini-2.5-flash", body: `{` + contents + `}`, code: CodeModelNotAllowed},
		{name: "a method that is not metered", path: "/v1beta/models/gemini-2.5-flash:batchGenerateContent", body: `{` + contents + `}`, code: CodeInvalidRequest},
		{name: "a bad escape in the path", path: "/v1beta/models/gemini%zz:generateContent", body: `{` + contents + `}`, code: CodeInvalidRequest},
	})
}

// TestPrepareKeepsBytes: everything but the edited value reaches the
// upstream byte for byte: numbers as written, escapes, white space.
func TestPrepareKeepsBytes(t *testing.T) {
	p := policy(t, "openai-chat", "gpt-4o-mini")
	body := "{\n  \"model\" : \"gpt-4o-mini\",\n  \"temperature\": 1.000000000000000000001,\n  \"seed\": 12345678901234567890,\n" +
		"  \"messages\": [{\"role\": \"user\", \"content\": \"caf\\u00e9 \\ud83d\\ude00 \\/ \\\"q\\\"\"}],\n  \"max_tokens\":\t4096\n}\n"
	r, err := p.Prepare([]byte(body), "")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(body, "4096", "512", 1)
	if string(r.Body) != want {
		t.Errorf("upstream body:\n%s\nwant:\n%s", r.Body, want)
	}
}

func TestPrepareDeepNesting(t *testing.T) {
	p := policy(t, "openai-chat", "gpt-4o-mini")
	deep := `{"model":"gpt-4o-mini","x":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + `}`
	var re *RequestError
	if _, err := p.Prepare([]byte(deep), ""); !errors.As(err, &re) || re.Code != CodeInvalidJSON {
		t.Errorf("Prepare of %d levels: %v, want invalid_json", maxDepth+1, err)
	}
	ok := `{"model":"gpt-4o-mini","x":` + strings.Repeat("[", maxDepth-2) + strings.Repeat("]", maxDepth-2) + `}`
	if _, err := p.Prepare([]byte(ok), ""); err != nil {
		t.Errorf("Prepare of %d levels: %v", maxDepth-1, err)
	}
}

// TestPrepareManyKeys: duplicate detection stays linear, so a body of
// a hundred thousand keys is read quickly (and its duplicate found).
func TestPrepareManyKeys(t *testing.T) {
	p := policy(t, "openai-chat", "gpt-4o-mini")
	var b strings.Builder
	b.WriteString(`{"model":"gpt-4o-mini","metadata":{`)
	for i := range 100_000 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"k`)
		b.WriteString(strings.Repeat("x", i%7))
		b.WriteString(string(rune('a' + i%26)))
		b.WriteString(strconv.Itoa(i))
		b.WriteString(`":1`)
	}
	b.WriteString(`,"ka0":2}}`) // a duplicate of the first key
	var re *RequestError
	if _, err := p.Prepare([]byte(b.String()), ""); !errors.As(err, &re) || re.Code != CodeInvalidJSON {
		t.Errorf("Prepare: %v, want the duplicate refused", err)
	}
}

// TestEstimateFloor: the input estimate is never below ceil(len/3)+16,
// and so never below a third of the message text it carries, whatever
// the text (escapes only make the body longer).
func TestEstimateFloor(t *testing.T) {
	p := policy(t, "anthropic-messages", "claude-sonnet-4-5")
	for _, text := range []string{"", "hi", strings.Repeat("word ", 1000), strings.Repeat("日本語", 500), strings.Repeat("\\n\\u0000", 300)} {
		body := `{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"` + text + `"}]}`
		r, err := p.Prepare([]byte(body), "")
		if err != nil {
			t.Fatal(err)
		}
		floor := (int64(len(body))+2)/3 + 16
		if r.InputTokens < floor || r.InputTokens < int64(len(text))/3 {
			t.Errorf("text of %d bytes: estimate %d, below the floor %d", len(text), r.InputTokens, floor)
		}
	}
	tools := `{"model":"claude-sonnet-4-5","max_tokens":10,"tools":[{"name":"f","input_schema":{"type":"object"}}],"messages":[]}`
	r, err := p.Prepare([]byte(tools), "")
	if err != nil {
		t.Fatal(err)
	}
	if want := EstimateInput(len(tools), false) + 1024; r.InputTokens != want {
		t.Errorf("with tools: estimate %d, want %d (the tool-use prompt)", r.InputTokens, want)
	}
	noTools := `{"model":"claude-sonnet-4-5","max_tokens":10,"tools":[ ],"messages":[]}`
	if r, _ := p.Prepare([]byte(noTools), ""); r.InputTokens != EstimateInput(len(noTools), false) {
		t.Errorf("an empty tools list counts as tools")
	}
}
