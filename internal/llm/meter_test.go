package llm

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// recorded are response bodies in each API's documented shapes (see
// testdata), with the usage each reports. Their texts hold the traps a
// model's answer can set: "usage" objects, SSE framing and backslashes
// inside strings.
var recorded = []struct {
	file string
	api  API
	want Usage
	// end is a string that ends the document carrying the final usage:
	// a body cut before it must not be Complete.
	end string
}{
	{"openai-chat.json", OpenAIChat, Usage{Model: "gpt-4o-mini-2024-07-18", Input: 1117, CachedInput: 1024, Output: 46, Complete: true}, "\n}"},
	{"openai-chat.sse", OpenAIChat, Usage{Model: "gpt-4o-mini-2024-07-18", Input: 19, Output: 10, Complete: true}, `"obfuscation":"Qw"}`},
	{"openai-responses.json", OpenAIResponses, Usage{Model: "gpt-4.1-mini-2025-04-14", Input: 2048, CachedInput: 1536, Output: 300, Complete: true}, "\n}"},
	{"openai-responses.sse", OpenAIResponses, Usage{Model: "gpt-4.1-mini-2025-04-14", Input: 2048, CachedInput: 1536, Output: 300, Complete: true}, `"sequence_number":11}`},
	{"anthropic-messages.json", AnthropicMessages, Usage{Model: "claude-sonnet-4-5-20250929", Input: 2095, Output: 503, Complete: true}, "\n}"},
	{"anthropic-messages.sse", AnthropicMessages, Usage{Model: "claude-sonnet-4-5-20250929", Input: 472 + 1024 + 2048, CachedInput: 1024, CacheWrite: 2048, Output: 15, Complete: true}, `{"type":"message_stop"}`},
	{"gemini.json", Gemini, Usage{Model: "gemini-2.5-flash", Input: 4100, CachedInput: 4096, Output: 11 + 1103, Complete: true}, "\n}"},
	{"gemini.sse", Gemini, Usage{Model: "gemini-2.5-flash", Input: 4100, CachedInput: 4096, Output: 11 + 1103, Complete: true}, `"responseId": "65E2aavdMaiU1e8P246LmAc"}`},
	{"gemini-array.json", Gemini, Usage{Model: "gemini-2.5-flash", Input: 4100, CachedInput: 4096, Output: 11 + 1103, Complete: true}, "\"responseId\": \"65E2aavdMaiU1e8P246LmAc\"\n}"},
}

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// meter feeds body to a new Meter in the given pieces.
func meter(api API, pieces ...[]byte) Usage {
	m := NewMeter(api)
	for _, p := range pieces {
		_, _ = m.Write(p)
	}
	return m.Usage()
}

func TestMeterRecorded(t *testing.T) {
	for _, tc := range recorded {
		t.Run(tc.file, func(t *testing.T) {
			body := readFile(t, tc.file)
			if diff := cmp.Diff(tc.want, meter(tc.api, body)); diff != "" {
				t.Errorf("usage (-want +got):\n%s", diff)
			}
		})
	}
}

// TestMeterSplitAnywhere proves the scanner streams: the usage is the
// same whichever byte boundaries the body arrives in, as two writes cut
// at every offset, as one write per byte, and as random pieces.
func TestMeterSplitAnywhere(t *testing.T) {
	for _, tc := range recorded {
		t.Run(tc.file, func(t *testing.T) {
			body := readFile(t, tc.file)
			for k := 0; k <= len(body); k++ {
				if got := meter(tc.api, body[:k], body[k:]); got != tc.want {
					t.Fatalf("split at %d of %d: got %+v, want %+v", k, len(body), got, tc.want)
				}
			}
			bytewise := make([][]byte, len(body))
			for i := range body {
				bytewise[i] = body[i : i+1]
			}
			if got := meter(tc.api, bytewise...); got != tc.want {
				t.Fatalf("one byte per write: got %+v, want %+v", got, tc.want)
			}
			r := rand.New(rand.NewPCG(1, uint64(len(body))))
			for range 200 {
				var pieces [][]byte
				for rest := body; len(rest) > 0; {
					n := min(1+r.IntN(64), len(rest))
					pieces = append(pieces, rest[:n])
					rest = rest[n:]
				}
				if got := meter(tc.api, pieces...); got != tc.want {
					t.Fatalf("random pieces: got %+v, want %+v", got, tc.want)
				}
			}
		})
	}
}

// TestMeterCutBeforeUsage: a body cut before its final usage arrived is
// not Complete (Gemini's running totals included), so the reservation is
// charged.
func TestMeterCutBeforeUsage(t *testing.T) {
	for _, tc := range recorded {
		t.Run(tc.file, func(t *testing.T) {
			body := readFile(t, tc.file)
			i := bytes.LastIndex(body, []byte(tc.end))
			if i < 0 {
				t.Fatalf("%q not in the body", tc.end)
			}
			end := i + len(tc.end)
			for k := 0; k <= len(body); k++ {
				if got, want := meter(tc.api, body[:k]).Complete, k >= end; got != want {
					t.Fatalf("cut at %d of %d (final usage ends at %d): Complete = %v", k, len(body), end, got)
				}
			}
		})
	}
}

// TestMeterStreamWithoutUsage: an OpenAI chat stream without its usage
// chunk (stream_options not honoured, or the chunk lost) reports nothing
// complete, however it ends.
func TestMeterStreamWithoutUsage(t *testing.T) {
	var kept []string
	for line := range strings.SplitSeq(string(readFile(t, "openai-chat.sse")), "\n\n") {
		if !strings.Contains(line, `"usage":{`) {
			kept = append(kept, line)
		}
	}
	u := meter(OpenAIChat, []byte(strings.Join(kept, "\n\n")))
	if u.Complete || u.Input != 0 || u.Output != 0 {
		t.Errorf("usage = %+v, want nothing complete", u)
	}
	if u.Model != "gpt-4o-mini-2024-07-18" {
		t.Errorf("model = %q", u.Model)
	}
}

// TestMeterTextIsNotStructure: usage-shaped text in answers, event
// framing in strings and keys nested elsewhere never count.
func TestMeterTextIsNotStructure(t *testing.T) {
	for _, tc := range []struct {
		name string
		api  API
		body string
	}{
		{"usage in a string", OpenAIChat, `{"choices":[{"message":{"content":"{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}"}}]}`},
		{"usage nested deeper", OpenAIChat, `{"choices":[{"usage":{"prompt_tokens":1,"completion_tokens":1}}]}`},
		{"usage as a key's text", OpenAIChat, `{"x":"\"usage\":","y":{"prompt_tokens":1,"completion_tokens":1}}`},
		{"escaped quote then usage", OpenAIChat, `{"c":"a\\\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}"}`},
		{"data line inside a string", OpenAIChat, "data: {\"c\":\"x\\n\\ndata: {\\\"usage\\\":{\\\"prompt_tokens\\\":1,\\\"completion_tokens\\\":1}}\\n\\n\"}\n\n"},
		{"field that is not data", OpenAIChat, "datum: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n"},
		{"comment", OpenAIChat, ": {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n"},
		{"indented field", OpenAIChat, " data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n"},
		{"responses usage outside a terminal event", OpenAIResponses, "data: {\"type\":\"response.in_progress\",\"response\":{\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n"},
		{"anthropic delta without start and stop", AnthropicMessages, "data: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}\n\n"},
		{"anthropic start without stop", AnthropicMessages, "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n\n"},
		{"usage too large to hold", OpenAIChat, `{"usage":{"prompt_tokens":1,"completion_tokens":1,"pad":"` + strings.Repeat("x", maxCapture) + `"}}`},
		{"negative count", OpenAIChat, `{"usage":{"prompt_tokens":-100,"completion_tokens":1}}`},
		{"fractional count", OpenAIChat, `{"usage":{"prompt_tokens":1.5,"completion_tokens":1}}`},
		{"count beyond int64", OpenAIChat, `{"usage":{"prompt_tokens":99999999999999999999,"completion_tokens":1}}`},
		{"null usage", OpenAIChat, `{"usage":null}`},
		{"error after headers", OpenAIChat, "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\"}}\n\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if u := meter(tc.api, []byte(tc.body)); u.Complete {
				t.Errorf("usage = %+v, want not complete", u)
			}
		})
	}
}

// TestMeterLineEndings: SSE lines may end in CRLF, LF or CR, and the
// space after "data:" is optional.
func TestMeterLineEndings(t *testing.T) {
	ev := `{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}`
	for _, tc := range []struct{ name, body string }{
		{"LF", "data: " + ev + "\n\ndata: [DONE]\n\n"},
		{"CRLF", "data: " + ev + "\r\n\r\ndata: [DONE]\r\n\r\n"},
		{"CR", "data: " + ev + "\r\rdata: [DONE]\r\r"},
		{"no space", "data:" + ev + "\n\n"},
		{"byte order mark", "\xef\xbb\xbfdata: " + ev + "\n\n"},
		{"leading blank lines", "\n\r\n: ok\n\nevent: x\nid: 1\nretry: 10\ndata: " + ev + "\n\n"},
		{"data split over lines", "data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":3,\ndata: \"completion_tokens\":4}}\n\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := Usage{Input: 3, Output: 4, Complete: true}
			body := []byte(tc.body)
			for k := 0; k <= len(body); k++ {
				if got := meter(OpenAIChat, body[:k], body[k:]); got != want {
					t.Fatalf("split at %d: got %+v, want %+v", k, got, want)
				}
			}
		})
	}
}

// TestMeterAnthropicDeltas: message_delta usage is cumulative, so the
// last one wins, and fields it carries replace message_start's.
func TestMeterAnthropicDeltas(t *testing.T) {
	body := "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":100,\"cache_read_input_tokens\":50,\"output_tokens\":1}}}\n\n" +
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":20,\"server_tool_use\":{\"web_search_requests\":1}}}\n\n" +
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":300,\"cache_read_input_tokens\":null,\"output_tokens\":40}}\n\n" +
		"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	want := Usage{Model: "claude-x", Input: 350, CachedInput: 50, Output: 40, Complete: true}
	if diff := cmp.Diff(want, meter(AnthropicMessages, []byte(body))); diff != "" {
		t.Errorf("usage (-want +got):\n%s", diff)
	}
}

// TestMeterMemoryBounded: a huge event (a long answer in
// response.completed) and a huge line cost a bounded buffer.
func TestMeterMemoryBounded(t *testing.T) {
	long := strings.Repeat("a\\\"b", 1<<18) // 1 MiB of text with escapes
	body := "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"output\":[{\"text\":\"" + long +
		"\"}],\"model\":\"m\",\"usage\":{\"input_tokens\":7,\"output_tokens\":9}}}\n\n"
	m := NewMeter(OpenAIResponses)
	for rest := []byte(body); len(rest) > 0; {
		n := min(4096, len(rest))
		_, _ = m.Write(rest[:n])
		rest = rest[n:]
	}
	if got, want := m.Usage(), (Usage{Model: "m", Input: 7, Output: 9, Complete: true}); got != want {
		t.Errorf("usage = %+v, want %+v", got, want)
	}
	if n := m.held(); n > 8*maxCapture {
		t.Errorf("the meter holds %d bytes", n)
	}
}

// held returns the bytes a Meter's buffers hold (their capacity).
func (m *Meter) held() int {
	n := cap(m.model) + cap(m.final) + cap(m.start) + cap(m.delta) + cap(m.sse.held)
	for _, s := range m.x.slots {
		n += cap(s)
	}
	return n
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// TestMeterBody: the reader wrapper passes every byte through unchanged
// and meters them.
func TestMeterBody(t *testing.T) {
	body := readFile(t, "gemini.sse")
	m := NewMeter(Gemini)
	rc := m.Body(io.NopCloser(bytes.NewReader(body)))
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("ReadAll = %d bytes, %v; want the body unchanged", len(got), err)
	}
	if !m.Usage().Complete {
		t.Errorf("a body read to the end is not complete: %+v", m.Usage())
	}

	// Cut after the second chunk: the running totals so far, not complete.
	second := bytes.Index(body, []byte("\r\n\r\n")) + 4
	second += bytes.Index(body[second:], []byte("\r\n\r\n")) + 4
	cut := NewMeter(Gemini)
	rc = cut.Body(io.NopCloser(io.MultiReader(bytes.NewReader(body[:second]), errReader{io.ErrUnexpectedEOF})))
	if _, err := io.ReadAll(rc); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadAll error = %v", err)
	}
	if u := cut.Usage(); u.Complete || u.Output != 8+1103 || u.Input != 4100 {
		t.Errorf("a cut stream: usage = %+v, want the running totals, not complete", u)
	}
}
