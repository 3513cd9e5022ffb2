package llm

import (
	"errors"
	"strconv"
	"testing"
)

// FuzzUsageMeter sends any bytes through the meter of every API: it
// never panics, reads the same usage whichever two pieces the bytes
// arrive in, and its buffers stay bounded.
func FuzzUsageMeter(f *testing.F) {
	for _, tc := range recorded {
		f.Add(readFile(f, tc.file), uint16(17))
	}
	f.Add([]byte("data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\r\r"), uint16(9))
	f.Add([]byte("[{\"usageMetadata\":{\"promptTokenCount\":1},\"candidates\":[{\"finishReason\":\"STOP\"}]}]"), uint16(30))
	f.Add([]byte("data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\n\ndata: {\"type\":\"message_stop\"}\n\n"), uint16(3))
	f.Fuzz(func(t *testing.T, body []byte, split uint16) {
		k := int(split) % (len(body) + 1)
		for api := OpenAIChat; api <= Gemini; api++ {
			whole := NewMeter(api)
			_, _ = whole.Write(body)
			pieces := NewMeter(api)
			_, _ = pieces.Write(body[:k])
			_, _ = pieces.Write(body[k:])
			if a, b := whole.Usage(), pieces.Usage(); a != b {
				t.Fatalf("%v: one write read %+v, two (split at %d) %+v", api, a, k, b)
			}
			if n := pieces.held(); n > (4+nSlots)*2*maxCapture+2*maxHeld {
				t.Fatalf("%v: the meter holds %d bytes", api, n)
			}
			u := whole.Usage()
			if u.Input < 0 || u.Output < 0 || u.CachedInput < 0 || u.CacheWrite < 0 {
				t.Fatalf("%v: negative usage %+v", api, u)
			}
		}
	})
}

// FuzzPrepare sends any body through every API's policy: it never
// panics; a body it refuses is refused with a RequestError; a body it
// accepts comes out unambiguous, within the clamp, and unchanged by a
// second pass.
func FuzzPrepare(f *testing.F) {
	f.Add([]byte(`{"model":"m","max_tokens":9999,"messages":[]}`))
	f.Add([]byte(`{"model":"m","stream":true,"stream_options":{"include_usage":false},"max_completion_tokens":1e9,"n":2}`))
	f.Add([]byte(`{"generationConfig":{"maxOutputTokens":100000,"candidateCount":3},"contents":[]}`))
	f.Add([]byte(`{"model":"m","generation_config":{"max_output_tokens":null}}`))
	f.Add([]byte(`{"model":"m","max_output_tokens":-1}`))
	f.Add([]byte(`{"model":"m","m\u0061x_tokens":"5"}`))
	policies := map[API]*Policy{}
	for api := OpenAIChat; api <= Gemini; api++ {
		policies[api] = &Policy{api: api, maxTokens: 100, prices: map[string]Price{"m": {Input: 1, Output: 2}}}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for api, p := range policies {
			r, err := p.Prepare(body, "/v1beta/models/m:streamGenerateContent")
			if err != nil {
				var re *RequestError
				if !errors.As(err, &re) {
					t.Fatalf("%v: error %v is not a RequestError", api, err)
				}
				continue
			}
			root, err := parseBody(r.Body)
			if err != nil {
				t.Fatalf("%v: the upstream body does not parse: %v\n%s", api, err, r.Body)
			}
			objs, keys := []*object{root}, limitFields[api]
			if api == Gemini {
				objs = []*object{memberObj(root, "generationConfig"), memberObj(root, "generation_config")}
			}
			set := false
			for _, o := range objs {
				for _, k := range keys {
					if m := o.get(k); m != nil && string(r.Body[m.start:m.end]) != "null" {
						set = true
						if v, err := strconv.ParseInt(string(r.Body[m.start:m.end]), 10, 64); err != nil || v < 1 || v > 100 {
							t.Fatalf("%v: %s is %s upstream", api, k, r.Body[m.start:m.end])
						}
					}
				}
			}
			if !set {
				t.Fatalf("%v: no output limit upstream:\n%s", api, r.Body)
			}
			again, err := p.Prepare(r.Body, "/v1beta/models/m:streamGenerateContent")
			if err != nil || string(again.Body) != string(r.Body) {
				t.Fatalf("%v: a second pass changed the body or failed (%v):\n%s\n%s", api, err, r.Body, again.Body)
			}
			if r.OutputTokens < 1 || r.InputTokens < EstimateInput(len(r.Body), false) {
				t.Fatalf("%v: output %d, input %d", api, r.OutputTokens, r.InputTokens)
			}
		}
	})
}

// limitFields are the fields that limit output, by API (Gemini's inside
// its generation config).
var limitFields = map[API][]string{
	OpenAIChat:        {"max_tokens", "max_completion_tokens"},
	OpenAIResponses:   {"max_output_tokens"},
	AnthropicMessages: {"max_tokens"},
	Gemini:            {"maxOutputTokens", "max_output_tokens"},
}

func memberObj(o *object, key string) *object {
	if m := o.get(key); m != nil {
		return m.obj
	}
	return nil
}
