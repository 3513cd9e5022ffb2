package llmtest

// The bodies and events below follow each provider's published
// reference: field names, nesting and order as the APIs send them
// (OpenAI's OpenAPI description for chat completions and responses;
// Anthropic's Messages streaming events; Gemini's GenerateContentResponse
// and UsageMetadata). Fields keyward does not read are kept so that a
// parser that depends on the shape around the usage is tested too.

const created = 1741290958

// obj is a JSON object whose members keep the order they are written
// in, as the providers send them.
type obj []member

type member struct {
	key string
	val any
}

// o builds an obj from key, value pairs.
func o(kv ...any) obj {
	m := make(obj, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		m = append(m, member{kv[i].(string), kv[i+1]})
	}
	return m
}

// set replaces the member key, or appends it.
func (m obj) set(key string, val any) obj {
	for i := range m {
		if m[i].key == key {
			m[i].val = val
			return m
		}
	}
	return append(m, member{key, val})
}

// MarshalJSON writes the members in order.
func (m obj) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for i, kv := range m {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, marshal(kv.key)...)
		b = append(b, ':')
		b = append(b, marshal(kv.val)...)
	}
	return append(b, '}'), nil
}

// OpenAI chat completions.

type chatUsage struct {
	PromptTokens        int64 `json:"prompt_tokens"`
	CompletionTokens    int64 `json:"completion_tokens"`
	TotalTokens         int64 `json:"total_tokens"`
	PromptTokensDetails struct {
		CachedTokens int64 `json:"cached_tokens"`
		AudioTokens  int64 `json:"audio_tokens"`
	} `json:"prompt_tokens_details"`
	CompletionTokensDetails struct {
		ReasoningTokens          int64 `json:"reasoning_tokens"`
		AudioTokens              int64 `json:"audio_tokens"`
		AcceptedPredictionTokens int64 `json:"accepted_prediction_tokens"`
		RejectedPredictionTokens int64 `json:"rejected_prediction_tokens"`
	} `json:"completion_tokens_details"`
}

func (c *call) chatUsage() *chatUsage {
	in, cached, _, out := c.s.Usage(c.limit, c.n)
	u := &chatUsage{PromptTokens: in, CompletionTokens: out, TotalTokens: in + out}
	u.PromptTokensDetails.CachedTokens = cached
	return u
}

type chatMessage struct {
	Role        string `json:"role"`
	Content     string `json:"content"`
	Refusal     any    `json:"refusal"`
	Annotations []any  `json:"annotations"`
}

type chatChoice struct {
	Index        int64       `json:"index"`
	Message      chatMessage `json:"message"`
	Logprobs     any         `json:"logprobs"`
	FinishReason string      `json:"finish_reason"`
}

type chatCompletion struct {
	ID                string       `json:"id"`
	Object            string       `json:"object"`
	Created           int64        `json:"created"`
	Model             string       `json:"model"`
	Choices           []chatChoice `json:"choices"`
	Usage             *chatUsage   `json:"usage"`
	ServiceTier       string       `json:"service_tier"`
	SystemFingerprint string       `json:"system_fingerprint"`
}

func (c *call) finishChat() string {
	if c.truncated() {
		return "length"
	}
	return "stop"
}

func (c *call) chatCompletion() chatCompletion {
	cc := chatCompletion{ID: "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", Object: "chat.completion", Created: created,
		Model: c.model, ServiceTier: "default", SystemFingerprint: "fp_06737a9306"}
	for i := range c.n {
		cc.Choices = append(cc.Choices, chatChoice{Index: i, Message: chatMessage{Role: "assistant", Content: c.allText(), Annotations: []any{}},
			FinishReason: c.finishChat()})
	}
	if c.s.cfg.Mode != NoUsage {
		cc.Usage = c.chatUsage()
	}
	return cc
}

// chatChunk is one chunk of a chat stream. Usage is sent (null but for
// the last chunk) only when the request set include_usage.
type chatChunk struct {
	ID                string `json:"id"`
	Object            string `json:"object"`
	Created           int64  `json:"created"`
	Model             string `json:"model"`
	SystemFingerprint string `json:"system_fingerprint"`
	Choices           []obj  `json:"choices"`
	Usage             any    `json:"usage,omitempty"`
	Obfuscation       string `json:"obfuscation"`
}

type nullUsage struct{}

func (nullUsage) MarshalJSON() ([]byte, error) { return []byte("null"), nil }

func (c *call) streamChat(st *stream) {
	chunk := func(choices []obj, usage any) chatChunk {
		ch := chatChunk{ID: "chatcmpl-123", Object: "chat.completion.chunk", Created: created, Model: c.model,
			SystemFingerprint: "fp_44709d6fcb", Choices: choices, Obfuscation: "r4N7vQ2m"}
		if c.usage {
			ch.Usage = usage
			if usage == nil {
				ch.Usage = nullUsage{}
			}
		}
		return ch
	}
	st.event("", chunk([]obj{o("index", 0, "delta", o("role", "assistant", "content", "", "refusal", nil), "logprobs", nil, "finish_reason", nil)}, nil))
	if c.s.cfg.Mode == ErrorAfterHeaders {
		st.event("", o("error", o("message", "The server had an error while processing your request. Sorry about that!", "type", "server_error", "param", nil, "code", nil)))
		return
	}
	c.chunks(func(i int64) {
		st.event("", chunk([]obj{o("index", 0, "delta", o("content", c.text(i)), "logprobs", nil, "finish_reason", nil)}, nil))
	})
	st.event("", chunk([]obj{o("index", 0, "delta", o(), "logprobs", nil, "finish_reason", c.finishChat())}, nil))
	if c.usage && c.s.cfg.Mode != NoUsage {
		st.event("", chunk([]obj{}, c.chatUsage()))
	}
	st.write([]byte("data: [DONE]\n\n"))
}

// OpenAI responses.

type responseUsage struct {
	InputTokens        int64 `json:"input_tokens"`
	InputTokensDetails struct {
		CachedTokens int64 `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokens        int64 `json:"output_tokens"`
	OutputTokensDetails struct {
		ReasoningTokens int64 `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	TotalTokens int64 `json:"total_tokens"`
}

type response struct {
	ID                 string         `json:"id"`
	Object             string         `json:"object"`
	CreatedAt          int64          `json:"created_at"`
	Status             string         `json:"status"`
	Error              any            `json:"error"`
	IncompleteDetails  any            `json:"incomplete_details"`
	Instructions       any            `json:"instructions"`
	MaxOutputTokens    any            `json:"max_output_tokens"`
	Model              string         `json:"model"`
	Output             []obj          `json:"output"`
	ParallelToolCalls  bool           `json:"parallel_tool_calls"`
	PreviousResponseID any            `json:"previous_response_id"`
	Reasoning          obj            `json:"reasoning"`
	Store              bool           `json:"store"`
	Temperature        float64        `json:"temperature"`
	Text               obj            `json:"text"`
	ToolChoice         string         `json:"tool_choice"`
	Tools              []any          `json:"tools"`
	TopP               float64        `json:"top_p"`
	Truncation         string         `json:"truncation"`
	Usage              *responseUsage `json:"usage"`
	User               any            `json:"user"`
	Metadata           obj            `json:"metadata"`
}

const (
	responseID = "resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654"
	itemID     = "msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654"
)

// response returns the response object in a state: "in_progress" (no
// output, usage null), "completed" or "incomplete" (truncated by
// max_output_tokens), or "failed".
func (c *call) response(status string) response {
	if status == "completed" && c.truncated() {
		status = "incomplete"
	}
	r := response{ID: responseID, Object: "response", CreatedAt: created, Status: status, Model: c.model, Output: []obj{},
		ParallelToolCalls: true, Reasoning: o("effort", nil, "summary", nil), Store: true, Temperature: 1,
		Text: o("format", o("type", "text")), ToolChoice: "auto", Tools: []any{}, TopP: 1, Truncation: "disabled", Metadata: o()}
	if c.limit > 0 {
		r.MaxOutputTokens = c.limit
	}
	switch status {
	case "completed", "incomplete":
		r.Output = []obj{c.responseItem("completed")}
		if status == "incomplete" {
			r.IncompleteDetails = o("reason", "max_output_tokens")
		}
		if c.s.cfg.Mode != NoUsage {
			in, cached, _, out := c.s.Usage(c.limit, 1)
			u := &responseUsage{InputTokens: in, OutputTokens: out, TotalTokens: in + out}
			u.InputTokensDetails.CachedTokens = cached
			r.Usage = u
		}
	case "failed":
		r.Error = o("code", "server_error", "message", "The model failed to generate a response.")
	}
	return r
}

func (c *call) responseItem(status string) obj {
	content := []obj{}
	if status == "completed" {
		content = []obj{o("type", "output_text", "text", c.allText(), "annotations", []any{})}
	}
	return o("id", itemID, "type", "message", "status", status, "role", "assistant", "content", content)
}

func (c *call) streamResponses(st *stream) {
	seq := 0
	ev := func(name string, fields obj) {
		e := append(o("type", name), fields...)
		st.event(name, append(e, member{"sequence_number", seq}))
		seq++
	}
	ev("response.created", o("response", c.response("in_progress")))
	ev("response.in_progress", o("response", c.response("in_progress")))
	if c.s.cfg.Mode == ErrorAfterHeaders {
		ev("error", o("code", "server_error", "message", "The model failed to generate a response.", "param", nil))
		ev("response.failed", o("response", c.response("failed")))
		return
	}
	ev("response.output_item.added", o("output_index", 0, "item", c.responseItem("in_progress")))
	ev("response.content_part.added", o("item_id", itemID, "output_index", 0, "content_index", 0, "part", o("type", "output_text", "text", "", "annotations", []any{})))
	c.chunks(func(i int64) {
		ev("response.output_text.delta", o("item_id", itemID, "output_index", 0, "content_index", 0, "delta", c.text(i), "logprobs", []any{}))
	})
	text := c.allText()
	ev("response.output_text.done", o("item_id", itemID, "output_index", 0, "content_index", 0, "text", text, "logprobs", []any{}))
	ev("response.content_part.done", o("item_id", itemID, "output_index", 0, "content_index", 0, "part", o("type", "output_text", "text", text, "annotations", []any{})))
	ev("response.output_item.done", o("output_index", 0, "item", c.responseItem("completed")))
	final := c.response("completed")
	ev("response."+final.Status, o("response", final))
}

// Anthropic messages.

type anthropicUsage struct {
	InputTokens              int64 `json:"input_tokens"`
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
	OutputTokens             int64 `json:"output_tokens"`
}

type anthropicMessage struct {
	ID           string          `json:"id"`
	Type         string          `json:"type"`
	Role         string          `json:"role"`
	Model        string          `json:"model"`
	Content      []obj           `json:"content"`
	StopReason   any             `json:"stop_reason"`
	StopSequence any             `json:"stop_sequence"`
	Usage        *anthropicUsage `json:"usage,omitempty"`
}

const messageID = "msg_01XFDUDYJgAACzvnptvVoYEL"

func (c *call) anthropicUsage(output int64) *anthropicUsage {
	if c.s.cfg.Mode == NoUsage {
		return nil
	}
	in, cached, write, _ := c.s.Usage(c.limit, 1)
	// The API's input_tokens exclude the tokens read from and written to
	// the cache.
	return &anthropicUsage{InputTokens: in - cached - write, CacheCreationInputTokens: write, CacheReadInputTokens: cached, OutputTokens: output}
}

func (c *call) stopReason() string {
	if c.truncated() {
		return "max_tokens"
	}
	return "end_turn"
}

func (c *call) message(text string, output int64) anthropicMessage {
	return anthropicMessage{ID: messageID, Type: "message", Role: "assistant", Model: c.model,
		Content: []obj{o("type", "text", "text", text)}, StopReason: c.stopReason(), Usage: c.anthropicUsage(output)}
}

func (c *call) streamAnthropic(st *stream) {
	start := anthropicMessage{ID: messageID, Type: "message", Role: "assistant", Model: c.model, Content: []obj{}, Usage: c.anthropicUsage(1)}
	st.event("message_start", o("type", "message_start", "message", start))
	if c.s.cfg.Mode == ErrorAfterHeaders {
		st.event("error", o("type", "error", "error", o("type", "overloaded_error", "message", "Overloaded")))
		return
	}
	st.event("content_block_start", o("type", "content_block_start", "index", 0, "content_block", o("type", "text", "text", "")))
	st.event("ping", o("type", "ping"))
	c.chunks(func(i int64) {
		st.event("content_block_delta", o("type", "content_block_delta", "index", 0, "delta", o("type", "text_delta", "text", c.text(i))))
	})
	st.event("content_block_stop", o("type", "content_block_stop", "index", 0))
	delta := o("type", "message_delta", "delta", o("stop_reason", c.stopReason(), "stop_sequence", nil))
	if u := c.anthropicUsage(c.out); u != nil {
		delta = delta.set("usage", o("output_tokens", u.OutputTokens))
	}
	st.event("message_delta", delta)
	st.event("message_stop", o("type", "message_stop"))
}

// Gemini.

type geminiUsage struct {
	PromptTokenCount        int64 `json:"promptTokenCount"`
	CandidatesTokenCount    int64 `json:"candidatesTokenCount,omitempty"`
	TotalTokenCount         int64 `json:"totalTokenCount"`
	CachedContentTokenCount int64 `json:"cachedContentTokenCount,omitempty"`
	PromptTokensDetails     []obj `json:"promptTokensDetails"`
}

type geminiResponse struct {
	Candidates    []obj        `json:"candidates"`
	UsageMetadata *geminiUsage `json:"usageMetadata,omitempty"`
	ModelVersion  string       `json:"modelVersion"`
	ResponseID    string       `json:"responseId"`
}

// geminiChunk is a response, or a stream's chunk carrying text and the
// running totals after output tokens; the last one has finishReason.
func (c *call) geminiChunk(text string, last bool, output int64) geminiResponse {
	r := geminiResponse{ModelVersion: c.model, ResponseID: "65E2aavdMaiU1e8P246LmAc"}
	for i := range c.n {
		cand := o("content", o("parts", []obj{o("text", text)}, "role", "model"))
		if last {
			reason := "STOP"
			if c.truncated() {
				reason = "MAX_TOKENS"
			}
			cand = cand.set("finishReason", reason)
		}
		cand = cand.set("index", i)
		r.Candidates = append(r.Candidates, cand)
	}
	if c.s.cfg.Mode != NoUsage {
		in, cached, _, _ := c.s.Usage(c.limit, c.n)
		out := output * c.n
		r.UsageMetadata = &geminiUsage{PromptTokenCount: in, CandidatesTokenCount: out, TotalTokenCount: in + out,
			CachedContentTokenCount: cached, PromptTokensDetails: []obj{o("modality", "TEXT", "tokenCount", in)}}
	}
	return r
}

func (c *call) streamGemini(st *stream) {
	if c.s.cfg.Mode == ErrorAfterHeaders {
		st.event("", c.geminiChunk(c.text(0), false, 1))
		st.event("", o("error", o("code", 503, "message", "The model is overloaded. Please try again later.", "status", "UNAVAILABLE")))
		if !c.sse {
			st.write([]byte("]"))
		}
		return
	}
	c.chunks(func(i int64) {
		st.event("", c.geminiChunk(c.text(i), i == c.out-1, i+1))
	})
	if !c.sse {
		st.write([]byte("]"))
	}
}
