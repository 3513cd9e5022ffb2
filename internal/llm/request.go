package llm

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
)

// The codes of a RequestError. The gateway answers each with 400.
const (
	// CodeModelNotAllowed: the request names no model, or one the route
	// does not allow.
	CodeModelNotAllowed = "model_not_allowed"
	// CodeInvalidJSON: the body is not one JSON object, or is JSON that
	// parsers read differently (duplicate keys, invalid UTF-8).
	CodeInvalidJSON = "invalid_json"
	// CodeInvalidRequest: a field the policy reads has a value it cannot
	// meter (a max_tokens that is not a positive integer, a stream that
	// is not a boolean, a Gemini method other than generateContent).
	CodeInvalidRequest = "invalid_request"
)

// RequestError is a request the policy refuses. It is the client's
// fault: the gateway answers 400 with Code and Msg. Msg quotes nothing
// but the client's own model name or field names, truncated.
type RequestError struct {
	// Code is one of the Code constants.
	Code string
	// Msg says what is wrong, for the client.
	Msg string
}

// Error returns "code: message".
func (e *RequestError) Error() string { return e.Code + ": " + e.Msg }

func refuse(code, format string, args ...any) *RequestError {
	return &RequestError{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// Estimate constants: see docs/LLM.md, "The input estimate".
const (
	// bytesPerToken divides the body's size. Tokenizers of current
	// models average about four bytes of English per token and about
	// three of code or of CJK text; counting every byte of the body
	// (keys, punctuation and escapes included) over three stays above
	// the real count for text, so the reservation covers it.
	bytesPerToken = 3
	// baseTokens is added to every request: the message framing tokens a
	// chat template adds, which a very short body could fall below.
	baseTokens = 16
	// toolTokens is added when the body declares tools: providers add a
	// tool-use system prompt of a few hundred tokens that is not in the
	// body.
	toolTokens = 1024
)

// EstimateInput returns the input tokens reserved for a request body
// before the provider counts them: ceil(len(body) / 3) + 16, plus 1024
// when the body declares tools. It is never below that floor, and never
// charged: the usage the provider reports replaces it.
func EstimateInput(bodyLen int, tools bool) int64 {
	n := (int64(bodyLen) + bytesPerToken - 1) / bytesPerToken
	n += baseTokens
	if tools {
		n += toolTokens
	}
	return n
}

// Request is one request the policy checked and rewrote.
type Request struct {
	// Body is what to send upstream: the client's body with the policy's
	// edits spliced in, every other byte unchanged (the client's slice
	// itself when nothing changed). Its length changes: the gateway must
	// set the outbound Content-Length from it.
	Body []byte
	// Model is the allowed model the request names (from the body, or
	// from the upstream path for Gemini): the label for metrics and the
	// access log, from a bounded set.
	Model string
	// Stream reports that the client asked for a streamed answer.
	Stream bool
	// InputTokens is the estimate of the input (EstimateInput): reserved,
	// never charged.
	InputTokens int64
	// OutputTokens is the most output the answer can bill: the clamped
	// limit times the number of answers asked for (n, candidateCount),
	// plus OpenAI's predicted output, which is billed when rejected.
	OutputTokens int64

	api   API
	price Price
}

// API returns the wire format of the request.
func (r *Request) API() API { return r.api }

// Price returns the price of the request's model.
func (r *Request) Price() Price { return r.price }

// Reserve returns the worst case: the estimated input at the model's
// highest input price, plus OutputTokens at the output price, rounded up
// to the micro-dollar. This is what the gateway reserves against every
// budget before it dials.
func (r *Request) Reserve() Amount {
	var s sum
	s.add(r.InputTokens, r.price.maxInput())
	s.add(r.OutputTokens, r.price.Output)
	return Amount{Money: s.micros(), Tokens: satAdd(r.InputTokens, r.OutputTokens)}
}

// Charge returns what the exchange costs, given the upstream's status
// and the usage its response reported. status is 0 when the request was
// sent but no status came back (a timeout, a reset): the provider may be
// generating, and billing, all the same. A request that never left (a
// failed dial, the outbound policy) costs nothing: release its
// reservation without calling Charge.
//
//   - the usage's cost when it is Complete;
//   - nothing when the upstream refused (a status outside 2xx) and
//     reported no tokens: providers do not bill a request they refuse;
//   - otherwise (the stream was cut, the client left, the usage never
//     came) the worst case, never zero: the reservation, with the input
//     raised to the count the provider reported if that is more (a body
//     can reference files and cached content the estimate cannot see),
//     and the output at its bound (the provider may have generated all
//     of it, and may keep generating after a client leaves).
func (r *Request) Charge(status int, u Usage) Amount {
	if u.Complete {
		return Amount{Money: r.price.Cost(u), Tokens: u.Tokens()}
	}
	if status != 0 && (status < 200 || status > 299) && u.Input <= 0 && u.Output <= 0 {
		return Amount{}
	}
	var s sum
	if u.Input > r.InputTokens {
		r.price.input(&s, u)
	} else {
		s.add(r.InputTokens, r.price.maxInput())
	}
	out := max(u.Output, r.OutputTokens)
	s.add(out, r.price.Output)
	return Amount{Money: s.micros(), Tokens: satAdd(max(u.Input, r.InputTokens), out)}
}

// Meter returns a new Meter for the request's response.
func (r *Request) Meter() *Meter { return NewMeter(r.api) }

// Prepare checks a request and rewrites its body for the upstream: body
// is the client's JSON body, already read (and bounded) by the gateway;
// path is the outbound URL's escaped path (URL.EscapedPath), which names
// the model for Gemini and is ignored otherwise. A request the policy
// refuses returns a *RequestError; body is never modified in place.
func (p *Policy) Prepare(body []byte, path string) (*Request, error) {
	root, err := parseBody(body)
	if err != nil {
		msg := err.Error()
		if errors.Is(err, errAmbiguous) {
			msg = strings.Replace(msg, "ambiguous JSON", "ambiguous JSON (parsers would read it differently)", 1)
		}
		return nil, &RequestError{Code: CodeInvalidJSON, Msg: msg}
	}
	rw := rewriter{b: body, root: root, limit: p.maxTokens}
	r := &Request{api: p.api}
	switch p.api {
	case OpenAIChat:
		err = rw.openAIChat(r)
	case OpenAIResponses:
		err = rw.openAIResponses(r)
	case AnthropicMessages:
		err = rw.anthropic(r)
	case Gemini:
		err = rw.gemini(r, path)
	default:
		return nil, errors.New("llm: Prepare on a policy that was not compiled")
	}
	if err != nil {
		return nil, err
	}
	price, ok := p.prices[r.Model]
	if !ok {
		return nil, refuse(CodeModelNotAllowed, "model %q is not allowed on this route", truncate(r.Model))
	}
	r.price = price
	r.Body = splice(body, rw.edits)
	r.InputTokens = EstimateInput(len(r.Body), rw.tools)
	return r, nil
}

// rewriter collects the edits of one request.
type rewriter struct {
	b     []byte
	root  *object
	limit int64
	edits []edit
	tools bool
}

func (rw *rewriter) raw(m *member) []byte { return rw.b[m.start:m.end] }

func (rw *rewriter) isNull(m *member) bool { return m == nil || string(rw.raw(m)) == "null" }

// model reads the body's "model" string.
func (rw *rewriter) model(r *Request) error {
	m := rw.root.get("model")
	if rw.isNull(m) {
		return refuse(CodeModelNotAllowed, "the request names no model")
	}
	s, ok := rw.str(m)
	if !ok {
		return refuse(CodeInvalidRequest, "model must be a string")
	}
	r.Model = s
	return nil
}

// str decodes a string member.
func (rw *rewriter) str(m *member) (string, bool) {
	raw := rw.raw(m)
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	s, err := unescape(raw[1 : len(raw)-1])
	return s, err == nil
}

// boolean reads an optional boolean member; null means absent.
func (rw *rewriter) boolean(o *object, key string) (bool, error) {
	m := o.get(key)
	switch {
	case rw.isNull(m):
		return false, nil
	case string(rw.raw(m)) == "true":
		return true, nil
	case string(rw.raw(m)) == "false":
		return false, nil
	}
	return false, refuse(CodeInvalidRequest, "%s must be true or false", key)
}

// hasTools reports whether a tools (or legacy functions) member is a
// non-empty array.
func (rw *rewriter) hasTools(o *object, keys ...string) {
	for _, k := range keys {
		if m := o.get(k); m != nil {
			raw := rw.raw(m)
			if len(raw) > 0 && raw[0] == '[' && strings.TrimSpace(string(raw[1:len(raw)-1])) != "" {
				rw.tools = true
			}
		}
	}
}

// clamp bounds the integer member key of o to the policy's limit and
// returns its value after the edit, or 0 when it is absent or null.
func (rw *rewriter) clamp(o *object, key string) (int64, error) {
	m := o.get(key)
	if rw.isNull(m) {
		return 0, nil
	}
	raw := rw.raw(m)
	v, ok := integer(raw)
	if !ok || v <= 0 {
		return 0, refuse(CodeInvalidRequest, "%s must be a positive integer", key)
	}
	if v > rw.limit {
		v = rw.limit
	}
	if canon := strconv.FormatInt(v, 10); string(raw) != canon {
		// Lowered, or written another way (1e3, 512.0): the upstream gets
		// one plain spelling, so no parser can read another number.
		rw.edits = append(rw.edits, edit{start: m.start, end: m.end, text: []byte(canon)})
	}
	return v, nil
}

// set gives member key of o the value text: it replaces a null member
// (appending one would make the key a duplicate) and appends an absent
// one.
func (rw *rewriter) set(o *object, key string, text []byte) {
	if m := o.get(key); m != nil {
		rw.edits = append(rw.edits, edit{start: m.start, end: m.end, text: text})
		return
	}
	rw.edits = append(rw.edits, insertMember(o, key, text))
}

// count reads an optional multiplier (n, candidateCount): a positive
// integer, 1 when absent or null.
func (rw *rewriter) count(o *object, key string) (int64, error) {
	m := o.get(key)
	if rw.isNull(m) {
		return 1, nil
	}
	v, ok := integer(rw.raw(m))
	if !ok || v <= 0 {
		return 0, refuse(CodeInvalidRequest, "%s must be a positive integer", key)
	}
	return v, nil
}

// integer reads a JSON number that is a whole number, however written
// (512, 5.12e2, 512.0), saturating beyond int64.
func integer(raw []byte) (int64, bool) {
	s := string(raw)
	if s == "" || (s[0] != '-' && (s[0] < '0' || s[0] > '9')) {
		return 0, false // a string, boolean, object or array
	}
	if !strings.ContainsAny(s, ".eE") {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil { // only ErrRange: the parse already checked the syntax
			if s[0] == '-' {
				return math.MinInt64, true
			}
			return math.MaxInt64, true
		}
		return v, true
	}
	f, err := strconv.ParseFloat(s, 64)
	switch {
	case err != nil && f > 0: // +Inf: ErrRange
		return math.MaxInt64, true
	case err != nil && f < 0:
		return math.MinInt64, true
	case err != nil: // underflow to zero: 1e-400 is not a whole number
		return 0, false
	case f != math.Trunc(f):
		return 0, false
	case f >= math.MaxInt64:
		return math.MaxInt64, true
	case f <= math.MinInt64:
		return math.MinInt64, true
	}
	return int64(f), true
}

var trueJSON = []byte("true")

// openAIChat: max_tokens (deprecated) and max_completion_tokens both
// limit output; n answers are billed; stream_options.include_usage makes
// a stream end with its usage.
func (rw *rewriter) openAIChat(r *Request) error {
	if err := rw.model(r); err != nil {
		return err
	}
	var err error
	if r.Stream, err = rw.boolean(rw.root, "stream"); err != nil {
		return err
	}
	a, err := rw.clamp(rw.root, "max_tokens")
	if err != nil {
		return err
	}
	b, err := rw.clamp(rw.root, "max_completion_tokens")
	if err != nil {
		return err
	}
	out := max(a, b)
	if a == 0 && b == 0 {
		// Only max_completion_tokens is set: OpenAI refuses max_tokens for
		// its reasoning models (it is "not compatible with o-series
		// models"), while every model accepts max_completion_tokens.
		rw.set(rw.root, "max_completion_tokens", []byte(strconv.FormatInt(rw.limit, 10)))
		out = rw.limit
	}
	n, err := rw.count(rw.root, "n")
	if err != nil {
		return err
	}
	out = satMul(out, n)
	if m := rw.root.get("prediction"); !rw.isNull(m) {
		// Predicted tokens that do not appear in the answer are billed at
		// the output price (OpenAI: "rejected_prediction_tokens ... still
		// counted in the total completion tokens for purposes of billing").
		out = satAdd(out, EstimateInput(m.end-m.start, false)-baseTokens)
	}
	r.OutputTokens = out
	rw.hasTools(rw.root, "tools", "functions")
	if r.Stream {
		return rw.includeUsage()
	}
	return nil
}

// includeUsage sets stream_options.include_usage to true, keeping any
// other stream option.
func (rw *rewriter) includeUsage() error {
	so := rw.root.get("stream_options")
	switch {
	case rw.isNull(so):
		rw.set(rw.root, "stream_options", []byte(`{"include_usage":true}`))
		return nil
	case so.obj == nil:
		return refuse(CodeInvalidRequest, "stream_options must be an object")
	}
	if m := so.obj.get("include_usage"); m != nil && string(rw.raw(m)) == "true" {
		return nil
	}
	rw.set(so.obj, "include_usage", trueJSON)
	return nil
}

// openAIResponses: max_output_tokens limits output, reasoning included.
func (rw *rewriter) openAIResponses(r *Request) error {
	if err := rw.model(r); err != nil {
		return err
	}
	var err error
	if r.Stream, err = rw.boolean(rw.root, "stream"); err != nil {
		return err
	}
	v, err := rw.clamp(rw.root, "max_output_tokens")
	if err != nil {
		return err
	}
	if v == 0 {
		rw.set(rw.root, "max_output_tokens", []byte(strconv.FormatInt(rw.limit, 10)))
		v = rw.limit
	}
	r.OutputTokens = v
	rw.hasTools(rw.root, "tools")
	return nil
}

// anthropic: max_tokens is required by the API and bounds output,
// thinking included.
func (rw *rewriter) anthropic(r *Request) error {
	if err := rw.model(r); err != nil {
		return err
	}
	var err error
	if r.Stream, err = rw.boolean(rw.root, "stream"); err != nil {
		return err
	}
	v, err := rw.clamp(rw.root, "max_tokens")
	if err != nil {
		return err
	}
	if v == 0 {
		rw.set(rw.root, "max_tokens", []byte(strconv.FormatInt(rw.limit, 10)))
		v = rw.limit
	}
	r.OutputTokens = v
	rw.hasTools(rw.root, "tools")
	return nil
}

// gemini: the model and the method are in the path; the body's
// generationConfig.maxOutputTokens bounds output (thoughts included) and
// candidateCount multiplies it. Google's JSON mapping of protocol buffers
// accepts a field's proto name as well as its JSON name
// (generation_config, max_output_tokens), so both spellings are read and
// a body with both is refused: which one the upstream would use is not
// defined.
func (rw *rewriter) gemini(r *Request, path string) error {
	model, method, err := geminiTarget(path)
	if err != nil {
		return err
	}
	r.Model = model
	r.Stream = method == "streamGenerateContent"
	if m := rw.root.get("model"); m != nil {
		// The path names the model; a body that names another one is
		// ambiguous.
		s, ok := rw.str(m)
		if !ok || (s != model && s != "models/"+model) {
			return refuse(CodeModelNotAllowed, "the body's model differs from the model in the path")
		}
	}
	gc, key, err := rw.spelled(rw.root, "generationConfig", "generation_config")
	if err != nil {
		return err
	}
	limit := []byte(strconv.FormatInt(rw.limit, 10))
	switch {
	case rw.isNull(gc):
		rw.set(rw.root, key, append(append([]byte(`{"maxOutputTokens":`), limit...), '}'))
		r.OutputTokens = rw.limit
	case gc.obj == nil:
		return refuse(CodeInvalidRequest, "%s must be an object", key)
	default:
		_, mkey, err := rw.spelled(gc.obj, "maxOutputTokens", "max_output_tokens")
		if err != nil {
			return err
		}
		v, err := rw.clamp(gc.obj, mkey)
		if err != nil {
			return err
		}
		if v == 0 {
			rw.set(gc.obj, mkey, limit)
			v = rw.limit
		}
		cc, ckey, err := rw.spelled(gc.obj, "candidateCount", "candidate_count")
		if err != nil {
			return err
		}
		n := int64(1)
		if cc != nil {
			if n, err = rw.count(gc.obj, ckey); err != nil {
				return err
			}
		}
		r.OutputTokens = satMul(v, n)
	}
	rw.hasTools(rw.root, "tools")
	return nil
}

// spelled finds the member spelled json or proto in o and returns it
// with the key it uses (json when absent). Both present is refused.
func (rw *rewriter) spelled(o *object, json, proto string) (*member, string, error) {
	a, b := o.get(json), o.get(proto)
	switch {
	case a != nil && b != nil:
		return nil, "", refuse(CodeInvalidRequest, "both %s and %s are set: the upstream could read either", json, proto)
	case b != nil:
		return b, proto, nil
	}
	return a, json, nil
}

// geminiTarget reads MODEL and METHOD from an upstream path that ends in
// /models/MODEL:METHOD.
func geminiTarget(path string) (model, method string, err error) {
	i := strings.LastIndexByte(path, '/')
	if i < 0 || !strings.HasSuffix(path[:i], "/models") && path[:i] != "models" {
		return "", "", refuse(CodeModelNotAllowed, "the upstream path names no model: want .../models/MODEL:generateContent")
	}
	seg, uerr := url.PathUnescape(path[i+1:])
	if uerr != nil {
		return "", "", refuse(CodeInvalidRequest, "the upstream path is not a valid escaped path")
	}
	model, method, ok := strings.Cut(seg, ":")
	if !ok || model == "" {
		return "", "", refuse(CodeModelNotAllowed, "the upstream path names no model: want .../models/MODEL:generateContent")
	}
	if method != "generateContent" && method != "streamGenerateContent" {
		return "", "", refuse(CodeInvalidRequest, "%q is not metered: only generateContent and streamGenerateContent are", truncate(method))
	}
	return model, method, nil
}
