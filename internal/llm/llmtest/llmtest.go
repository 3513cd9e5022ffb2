// Package llmtest runs stand-ins for the model APIs keyward meters
// (OpenAI chat completions and responses, Anthropic messages, Gemini
// generateContent and streamGenerateContent), for the tests of the llm
// package, the gateway and the security suite.
//
// A stand-in reads a request the way its API does (the model from the
// body, or from the path for Gemini; the fields that limit output;
// stream and stream_options) and answers in the API's documented JSON or
// SSE shapes, with the usage a Config sets: a test knows to the token
// what a request must cost. Modes add what real streams do: end without
// usage, stop midway, fail after the headers, or go slowly.
package llmtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Mode is how a stand-in ends its answer.
type Mode int

// The modes.
const (
	// Complete reports usage where the API puts it: in the body, or in a
	// stream's last chunk (for OpenAI chat, only when the request set
	// stream_options.include_usage, as the real API does).
	Complete Mode = iota
	// Cut stops after half the answer's chunks (or half a JSON body) by
	// aborting the connection: the client sees the body end early,
	// before any final usage.
	Cut
	// NoUsage ends normally but reports no usage (a stream without its
	// usage chunk; usage null or absent in a body), as OpenAI-compatible
	// servers that ignore stream_options do.
	NoUsage
	// ErrorAfterHeaders answers 200 and the stream's first events, then
	// the API's error event, and ends the stream without usage. A
	// request without stream is answered as with Cut.
	ErrorAfterHeaders
)

// Config says how a Server answers.
type Config struct {
	// API is the API the stand-in speaks: "openai-chat",
	// "openai-responses", "anthropic-messages" or "gemini". Required.
	API string
	// Mode is how answers end. Default Complete.
	Mode Mode
	// Input is the input tokens reported, cached ones included. Default
	// 10.
	Input int64
	// CachedInput is the part of Input reported as read from the cache.
	// Default 0.
	CachedInput int64
	// CacheWrite is the part of Input reported as written to the cache
	// (anthropic-messages only). Default 0.
	CacheWrite int64
	// Output is the tokens the model "wants" to generate per answer; the
	// request's limit lowers it, and n or candidateCount multiplies it.
	// Each token is one chunk of a stream. Default 5.
	Output int64
	// Delay is waited before each chunk of a stream (and before a body):
	// a slow model. Default 0.
	Delay time.Duration
	// Pace, when set, is called before each chunk of a stream with its
	// index (0 is the first content chunk), so a test can hold a stream
	// at a point; an error it returns cuts the connection.
	Pace func(ctx context.Context, chunk int) error
	// Status, when set to other than 200, answers every request with
	// that status and the API's error body. Default 200.
	Status int
	// Text returns the text of output token i. Default "w{i} ".
	Text func(i int) string
}

// Request is one request a Server received.
type Request struct {
	// Method is the request method.
	Method string
	// Path is the URL path, as received.
	Path string
	// RawQuery is the query string, without '?'.
	RawQuery string
	// Header is a copy of the request's headers.
	Header http.Header
	// Body is the request body, as received.
	Body []byte
}

// Server is a running stand-in.
type Server struct {
	// URL is the stand-in's base URL, "http://127.0.0.1:PORT".
	URL string

	cfg Config
	srv *httptest.Server

	mu       sync.Mutex
	requests []Request
	inFlight int
	peak     int
}

// NewServer starts a stand-in; it is closed when the test ends.
func NewServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	switch cfg.API {
	case "openai-chat", "openai-responses", "anthropic-messages", "gemini":
	default:
		t.Fatalf("llmtest: unknown API %q", cfg.API)
	}
	if cfg.Input == 0 {
		cfg.Input = 10
	}
	if cfg.Output == 0 {
		cfg.Output = 5
	}
	if cfg.Text == nil {
		cfg.Text = func(i int) string { return "w" + strconv.Itoa(i) + " " }
	}
	s := &Server{cfg: cfg}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	t.Cleanup(s.Close)
	return s
}

// Close stops the stand-in, cutting streams in progress.
func (s *Server) Close() {
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// Requests returns the requests received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// InFlight returns how many requests are being answered now.
func (s *Server) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight
}

// MaxInFlight returns the most requests ever answered at once.
func (s *Server) MaxInFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// Usage returns the tokens the stand-in reports for a request whose
// output is limited to limit (0: no limit) with n answers (n and
// candidateCount): what a test expects the meter to read.
func (s *Server) Usage(limit, n int64) (input, cached, cacheWrite, output int64) {
	return s.cfg.Input, s.cfg.CachedInput, s.cfg.CacheWrite, s.outputOf(limit) * max(n, 1)
}

func (s *Server) outputOf(limit int64) int64 {
	if limit > 0 && limit < s.cfg.Output {
		return limit
	}
	return s.cfg.Output
}

// call is one request being answered.
type call struct {
	s      *Server
	w      http.ResponseWriter
	r      *http.Request
	body   map[string]any
	model  string
	limit  int64 // 0: none
	n      int64
	stream bool
	sse    bool // Gemini: alt=sse; every other stream is SSE
	usage  bool // OpenAI chat streams: include_usage
	out    int64
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, err := readAll(r)
	s.mu.Lock()
	s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header.Clone(), Body: body})
	s.inFlight++
	s.peak = max(s.peak, s.inFlight)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()
	c := &call{s: s, w: w, r: r, n: 1}
	if err != nil {
		c.fail(http.StatusBadRequest, "could not read the body")
		return
	}
	if msg := c.read(body); msg != "" {
		c.fail(http.StatusBadRequest, msg)
		return
	}
	if s.cfg.Status != 0 && s.cfg.Status != http.StatusOK {
		c.fail(s.cfg.Status, "the stand-in answers "+strconv.Itoa(s.cfg.Status))
		return
	}
	c.out = s.outputOf(c.limit)
	if c.stream {
		c.answerStream()
		return
	}
	c.answerBody()
}

func readAll(r *http.Request) ([]byte, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(r.Body)
	return b.Bytes(), err
}

// read checks the request as the API would, and returns what it would
// refuse, if anything.
func (c *call) read(raw []byte) string {
	path := c.r.URL.Path
	api := c.s.cfg.API
	switch {
	case api == "openai-chat" && !strings.HasSuffix(path, "/chat/completions"),
		api == "openai-responses" && !strings.HasSuffix(path, "/responses"),
		api == "anthropic-messages" && !strings.HasSuffix(path, "/messages"):
		return "unknown path " + path
	case c.r.Method != http.MethodPost:
		return "method not allowed"
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if err := d.Decode(&c.body); err != nil {
		return "the body is not a JSON object: " + err.Error()
	}
	num := func(m map[string]any, keys ...string) int64 {
		for _, k := range keys {
			if v, ok := m[k].(json.Number); ok {
				if i, err := v.Int64(); err == nil {
					return i
				}
			}
		}
		return 0
	}
	if api == "gemini" {
		i := strings.LastIndex(path, "/models/")
		if i < 0 {
			return "unknown path " + path
		}
		model, method, _ := strings.Cut(path[i+len("/models/"):], ":")
		switch method {
		case "generateContent":
		case "streamGenerateContent":
			c.stream, c.sse = true, c.r.URL.Query().Get("alt") == "sse"
		default:
			return "unknown method " + method
		}
		c.model = model
		gc, _ := c.body["generationConfig"].(map[string]any)
		if gc == nil {
			gc, _ = c.body["generation_config"].(map[string]any)
		}
		if gc != nil {
			c.limit = num(gc, "maxOutputTokens", "max_output_tokens")
			if n := num(gc, "candidateCount", "candidate_count"); n > 1 {
				c.n = n
			}
		}
		return ""
	}
	c.model, _ = c.body["model"].(string)
	if c.model == "" {
		return "model: field required"
	}
	c.stream, _ = c.body["stream"].(bool)
	c.sse = c.stream
	switch api {
	case "openai-chat":
		a, b := num(c.body, "max_tokens"), num(c.body, "max_completion_tokens")
		c.limit = a
		if b > 0 && (a == 0 || b < a) {
			c.limit = b
		}
		if n := num(c.body, "n"); n > 1 {
			c.n = n
		}
		if so, ok := c.body["stream_options"].(map[string]any); ok {
			c.usage, _ = so["include_usage"].(bool)
		}
	case "openai-responses":
		c.limit = num(c.body, "max_output_tokens")
	case "anthropic-messages":
		c.limit = num(c.body, "max_tokens")
		if c.limit <= 0 {
			return "max_tokens: field required"
		}
	}
	return ""
}

// wait is the pause before chunk i; false means cut the connection.
func (c *call) wait(i int) bool {
	if d := c.s.cfg.Delay; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-c.r.Context().Done():
			t.Stop()
			return false
		}
	}
	if p := c.s.cfg.Pace; p != nil {
		if err := p(c.r.Context(), i); err != nil {
			return false
		}
	}
	return true
}

// cut aborts the response: the client sees the body end early.
func (c *call) cut() {
	panic(http.ErrAbortHandler)
}

func (c *call) text(i int64) string { return c.s.cfg.Text(int(i)) }

func (c *call) allText() string {
	var b strings.Builder
	for i := range c.out {
		b.WriteString(c.text(i))
	}
	return b.String()
}

// truncated reports that the limit stopped the answer.
func (c *call) truncated() bool { return c.out < c.s.cfg.Output }

// fail answers status with the API's error body.
func (c *call) fail(status int, msg string) {
	var body any
	switch c.s.cfg.API {
	case "openai-chat", "openai-responses":
		typ := "invalid_request_error"
		if status >= 500 {
			typ = "server_error"
		}
		body = o("error", o("message", msg, "type", typ, "param", nil, "code", nil))
	case "anthropic-messages":
		typ := "invalid_request_error"
		switch {
		case status == http.StatusTooManyRequests:
			typ = "rate_limit_error"
		case status >= 500:
			typ = "api_error"
		}
		body = o("type", "error", "error", o("type", typ, "message", msg))
	default:
		body = o("error", o("code", status, "message", msg, "status", googleStatus(status)))
	}
	c.w.Header().Set("Content-Type", "application/json")
	c.w.WriteHeader(status)
	_ = json.NewEncoder(c.w).Encode(body)
}

func googleStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "INVALID_ARGUMENT"
	case http.StatusTooManyRequests:
		return "RESOURCE_EXHAUSTED"
	case http.StatusServiceUnavailable:
		return "UNAVAILABLE"
	}
	return "INTERNAL"
}

// answerBody answers a request without stream.
func (c *call) answerBody() {
	if !c.wait(0) {
		c.cut()
	}
	var body []byte
	switch c.s.cfg.API {
	case "openai-chat":
		body = marshal(c.chatCompletion())
	case "openai-responses":
		body = marshal(c.response("completed"))
	case "anthropic-messages":
		body = marshal(c.message(c.allText(), c.out))
	default:
		body = marshal(c.geminiChunk(c.allText(), true, c.out))
	}
	c.w.Header().Set("Content-Type", "application/json")
	if c.s.cfg.Mode == Cut || c.s.cfg.Mode == ErrorAfterHeaders {
		_, _ = c.w.Write(body[:len(body)/2])
		http.NewResponseController(c.w).Flush()
		c.cut()
	}
	_, _ = c.w.Write(body)
}

// stream writes the events of a streamed answer.
type stream struct {
	c     *call
	first bool // Gemini's JSON array: no separator before the first element
}

func (st *stream) event(name string, v any) {
	c := st.c
	var b []byte
	switch {
	case c.s.cfg.API == "gemini" && !c.sse:
		if st.first {
			b = append(b, '[')
		} else {
			b = append(b, "\n,\r\n"...)
		}
		b = append(b, marshal(v)...)
	case c.s.cfg.API == "gemini":
		b = append(append(append(b, "data: "...), marshal(v)...), "\r\n\r\n"...)
	case name != "":
		b = fmt.Appendf(b, "event: %s\ndata: %s\n\n", name, marshal(v))
	default:
		b = fmt.Appendf(b, "data: %s\n\n", marshal(v))
	}
	st.first = false
	st.write(b)
}

func (st *stream) write(b []byte) {
	_, _ = st.c.w.Write(b)
	http.NewResponseController(st.c.w).Flush()
}

// answerStream answers a streamed request.
func (c *call) answerStream() {
	ct := "text/event-stream"
	if c.s.cfg.API == "gemini" && !c.sse {
		ct = "application/json"
	}
	c.w.Header().Set("Content-Type", ct)
	c.w.Header().Set("Cache-Control", "no-cache")
	c.w.WriteHeader(http.StatusOK)
	st := &stream{c: c, first: true}
	switch c.s.cfg.API {
	case "openai-chat":
		c.streamChat(st)
	case "openai-responses":
		c.streamResponses(st)
	case "anthropic-messages":
		c.streamAnthropic(st)
	default:
		c.streamGemini(st)
	}
}

// chunks runs the content chunks: each waits, and Cut stops halfway.
func (c *call) chunks(each func(i int64)) {
	for i := range c.out {
		if !c.wait(int(i)) {
			c.cut()
		}
		if c.s.cfg.Mode == Cut && i == c.out/2 {
			c.cut()
		}
		each(i)
	}
}

func marshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // the stand-in's own values always marshal
	}
	return b
}
