package llm

import (
	"bytes"
	"encoding/json"
	"io"
)

// Meter reads the usage a model API reports in a response, as the
// response's body passes: a JSON body, a JSON array streamed element by
// element (Gemini without alt=sse), or a server-sent event stream, told
// apart by the body's first byte. Each SSE line is scanned as it
// arrives; nothing is held back, and nothing is copied but the values
// read (a usage object, a model name) and the first line of an event
// being passed over (at most 4 KiB), so a metered stream's events reach
// the client when they would have without it, and a Meter holds a few
// kilobytes whatever the stream's length. Events that cannot carry what
// is read (most of a stream: a few words each) are recognised by a byte
// search and not scanned.
//
// What each API reports, and when its usage is Complete:
//
//   - openai-chat: the body's "usage", or, in a stream, the last chunk's
//     (sent when stream_options.include_usage is set, as Prepare does).
//   - openai-responses: the body's "usage", or, in a stream, the
//     response.usage of the response.completed, response.incomplete or
//     response.failed event.
//   - anthropic-messages: the body's "usage"; in a stream, message_start's
//     message.usage (input) updated by each message_delta's usage
//     (cumulative), Complete once message_stop arrives.
//   - gemini: the last "usageMetadata" seen (every chunk carries the
//     running totals), Complete when it came with a candidate's
//     finishReason (or the prompt's blockReason): the last chunk.
//
// A Meter is used by one goroutine: the one copying the body.
type Meter struct {
	api  API
	mode uint8
	bom  int  // bytes of a UTF-8 byte order mark skipped at the start
	sp   bool // while sniffing: the current line has a space or tab
	x    scanner
	sse  sse

	model []byte // the model's raw JSON string
	final []byte // the usage object that settles it (all but Anthropic streams)
	start []byte // Anthropic: message_start's message.usage
	delta []byte // Anthropic: the last message_delta's usage
	stop  bool   // Anthropic: message_stop seen
	// finished: Gemini's last usage came with a finishReason (or a
	// blockReason): it is the final one.
	finished bool
}

const (
	modeSniff uint8 = iota
	modeJSON
	modeSSE
)

// NewMeter returns a Meter for responses of api.
func NewMeter(api API) *Meter {
	m := &Meter{api: api}
	m.x.paths = &pathSet{}
	if api > 0 && int(api) < len(apiPaths) {
		m.x.paths = apiPaths[api]
	}
	m.x.capSlot = -1
	m.x.doc = m.doc
	return m
}

// Write scans p. It never fails and never keeps p: a Meter can sit in
// an io.MultiWriter or behind an io.TeeReader.
func (m *Meter) Write(p []byte) (int, error) {
	i := 0
	if m.mode == modeSniff {
		i = m.sniff(p)
	}
	switch m.mode {
	case modeJSON:
		m.x.feed(p[i:])
	case modeSSE:
		m.sse.feed(m, p[i:])
	}
	return len(p), nil
}

// sniff skips a byte order mark and white space, and decides the mode
// from the first other byte: '{' or '[' is JSON, anything else SSE. It
// returns the offset of that byte.
func (m *Meter) sniff(p []byte) int {
	for i, c := range p {
		if m.bom < 3 && c == "\xef\xbb\xbf"[m.bom] {
			m.bom++
			continue
		}
		m.bom = 3 // a byte order mark can only start the body
		switch c {
		case ' ', '\t':
			m.sp = true
		case '\n', '\r':
			m.sp = false
		case '{', '[':
			m.mode = modeJSON
			return i
		default:
			m.mode = modeSSE
			if m.sp {
				// The line starts with white space, so its field name does
				// too: no field keyward reads.
				m.sse.phase = phIgnore
			}
			return i
		}
	}
	return len(p)
}

// Body returns body with every byte read from it passing through m.
// Closing it closes body.
func (m *Meter) Body(body io.ReadCloser) io.ReadCloser {
	return &meteredBody{ReadCloser: body, m: m}
}

type meteredBody struct {
	io.ReadCloser
	m *Meter
}

func (b *meteredBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		_, _ = b.m.Write(p[:n])
	}
	return n, err
}

// doc is called by the scanner at the end of each JSON document: the
// body, an element of a JSON array stream, or an SSE event's data.
func (m *Meter) doc() {
	x := &m.x
	obj := func(slot int) ([]byte, bool) {
		b, ok := x.captured(slot)
		return b, ok && len(b) > 0 && b[0] == '{'
	}
	str := func(slot int) []byte {
		if b, ok := x.captured(slot); ok && len(b) > 0 && b[0] == '"' {
			return b
		}
		return nil
	}
	keep := func(dst *[]byte, slot int) {
		if dst == &m.model && len(m.model) > 0 {
			// The first model named wins, as in wants, which passes
			// over later events once the model is known: whether a
			// later one is read must not depend on how the bytes were
			// split (FuzzUsageMeter).
			x.got &^= 1 << slot
			return
		}
		// Swap rather than copy: the scanner reuses the old buffer.
		*dst, x.slots[slot] = x.slots[slot], (*dst)[:0]
		x.got &^= 1 << slot
	}
	switch m.api {
	case OpenAIChat:
		if _, ok := obj(slotUsage); ok {
			keep(&m.final, slotUsage)
		}
		if str(slotModel) != nil {
			keep(&m.model, slotModel)
		}
	case OpenAIResponses:
		switch t := string(str(slotType)); t {
		case `"response.completed"`, `"response.incomplete"`, `"response.failed"`:
			if _, ok := obj(slotResponseUsage); ok {
				keep(&m.final, slotResponseUsage)
			}
			fallthrough
		case `"response.created"`, `"response.in_progress"`, `"response.queued"`:
			if str(slotResponseModel) != nil {
				keep(&m.model, slotResponseModel)
			}
		case "":
			// Not an event: the body of a request without stream.
			if _, ok := obj(slotUsage); ok {
				keep(&m.final, slotUsage)
			}
			if str(slotModel) != nil {
				keep(&m.model, slotModel)
			}
		}
	case AnthropicMessages:
		switch string(str(slotType)) {
		case `"message"`: // the body of a request without stream
			if _, ok := obj(slotUsage); ok {
				keep(&m.final, slotUsage)
			}
			if str(slotModel) != nil {
				keep(&m.model, slotModel)
			}
		case `"message_start"`:
			if _, ok := obj(slotMessageUsage); ok {
				keep(&m.start, slotMessageUsage)
			}
			if str(slotMessageModel) != nil {
				keep(&m.model, slotMessageModel)
			}
		case `"message_delta"`:
			if _, ok := obj(slotUsage); ok {
				keep(&m.delta, slotUsage)
			}
		case `"message_stop"`:
			m.stop = true
		}
	case Gemini:
		if _, ok := obj(slotUsageMetadata); ok {
			keep(&m.final, slotUsageMetadata)
			// Every chunk carries the running totals; the chunk that ends
			// the answer carries a finishReason, or a blockReason when the
			// prompt was refused.
			m.finished = str(slotFinishReason) != nil || str(slotBlockReason) != nil
		}
		if str(slotModelVersion) != nil {
			keep(&m.model, slotModelVersion)
		}
	}
}

// Usage returns what the response reported so far. Call it once the
// body has been copied (or abandoned).
func (m *Meter) Usage() Usage {
	var u Usage
	if len(m.model) > 0 {
		var s string
		if json.Unmarshal(m.model, &s) == nil {
			u.Model = s
		}
	}
	switch m.api {
	case OpenAIChat:
		var c struct {
			Prompt     *int64 `json:"prompt_tokens"`
			Completion *int64 `json:"completion_tokens"`
			Details    struct {
				Cached     int64 `json:"cached_tokens"`
				CacheWrite int64 `json:"cache_write_tokens"`
			} `json:"prompt_tokens_details"`
		}
		if decode(m.final, &c) && c.Prompt != nil && c.Completion != nil {
			u.Input, u.Output = *c.Prompt, *c.Completion
			u.CachedInput, u.CacheWrite = c.Details.Cached, c.Details.CacheWrite
			u.Complete = true
		}
	case OpenAIResponses:
		var r struct {
			Input   *int64 `json:"input_tokens"`
			Output  *int64 `json:"output_tokens"`
			Details struct {
				Cached     int64 `json:"cached_tokens"`
				CacheWrite int64 `json:"cache_write_tokens"`
			} `json:"input_tokens_details"`
		}
		if decode(m.final, &r) && r.Input != nil && r.Output != nil {
			u.Input, u.Output = *r.Input, *r.Output
			u.CachedInput, u.CacheWrite = r.Details.Cached, r.Details.CacheWrite
			u.Complete = true
		}
	case AnthropicMessages:
		u = m.anthropic(u)
	case Gemini:
		var g struct {
			Prompt     int64 `json:"promptTokenCount"`
			Candidates int64 `json:"candidatesTokenCount"`
			Thoughts   int64 `json:"thoughtsTokenCount"`
			ToolPrompt int64 `json:"toolUsePromptTokenCount"`
			Cached     int64 `json:"cachedContentTokenCount"`
		}
		if decode(m.final, &g) {
			// promptTokenCount includes the cached content; tool-use
			// prompts (grounding results) and thoughts are billed too.
			u.Input = satAdd(g.Prompt, g.ToolPrompt)
			u.Output = satAdd(g.Candidates, g.Thoughts)
			u.CachedInput = g.Cached
			u.Complete = m.finished
		}
	}
	if u.Input < 0 || u.Output < 0 || u.CachedInput < 0 || u.CacheWrite < 0 {
		// A negative count is no count: charge the reservation.
		return Usage{Model: u.Model}
	}
	return u
}

// anthropicUsage is the usage object of Anthropic's Messages API, whose
// input_tokens exclude the tokens read from or written to the cache. In
// a message_delta every field is cumulative and those absent or null
// keep their earlier value.
type anthropicUsage struct {
	Input       *int64 `json:"input_tokens"`
	Output      *int64 `json:"output_tokens"`
	CacheRead   *int64 `json:"cache_read_input_tokens"`
	CacheCreate *int64 `json:"cache_creation_input_tokens"`
}

func (a *anthropicUsage) merge(b anthropicUsage) {
	for _, f := range [...]struct{ dst, src **int64 }{
		{&a.Input, &b.Input}, {&a.Output, &b.Output}, {&a.CacheRead, &b.CacheRead}, {&a.CacheCreate, &b.CacheCreate},
	} {
		if *f.src != nil {
			*f.dst = *f.src
		}
	}
}

func (m *Meter) anthropic(u Usage) Usage {
	var a anthropicUsage
	complete := false
	switch {
	case len(m.final) > 0:
		complete = decode(m.final, &a) && a.Input != nil && a.Output != nil
	default:
		var start, delta anthropicUsage
		okStart := decode(m.start, &start)
		okDelta := decode(m.delta, &delta)
		if okStart {
			a.merge(start)
		}
		if okDelta {
			a.merge(delta)
		}
		complete = okStart && okDelta && m.stop && a.Input != nil && a.Output != nil
	}
	n := func(p *int64) int64 {
		if p == nil {
			return 0
		}
		return *p
	}
	u.CachedInput, u.CacheWrite = n(a.CacheRead), n(a.CacheCreate)
	u.Input = satAdd(satAdd(n(a.Input), u.CachedInput), u.CacheWrite)
	u.Output = n(a.Output)
	u.Complete = complete
	return u
}

// decode decodes a captured usage object; an empty or malformed one (a
// fraction, a number beyond int64) decodes as nothing.
func decode(b []byte, v any) bool {
	if len(b) == 0 {
		return false
	}
	d := json.NewDecoder(bytes.NewReader(b))
	return d.Decode(v) == nil
}

// sse splits a server-sent event stream into lines and feeds the data
// lines of each event to the scanner, as one JSON document per event
// (https://html.spec.whatwg.org/multipage/server-sent-events.html,
// "Interpreting an event stream"): lines end in CRLF, LF or CR; a line
// "data: V" or "data:V" adds V; a blank line ends the event; lines of
// other fields and comments are skipped.
type sse struct {
	phase   uint8
	name    [5]byte // the field name so far, if it can still be "data"
	nameLen int
	nameBad bool
	cr      bool // the last line ended with CR: a following LF is part of it
	lines   int  // data lines in the current event
	fed     bool // bytes of the current data line went to the scanner
	// skip is set when the event's first data line arrived whole and
	// holds nothing the meter reads (wants): the event is not scanned,
	// unless another data line follows, and then held, a copy of that
	// first line, is scanned first.
	skip bool
	held []byte
}

// maxHeld bounds the first data line an event may skip: a longer one is
// scanned as it arrives.
const maxHeld = 4096

const (
	phLineStart uint8 = iota
	phName
	phSpace // after "data:": one optional space
	phData
	phIgnore
)

func (s *sse) feed(m *Meter, p []byte) {
	for i := 0; i < len(p); {
		c := p[i]
		if s.cr {
			s.cr = false
			if c == '\n' {
				i++
				continue
			}
		}
		switch s.phase {
		case phLineStart:
			switch c {
			case '\n', '\r':
				s.dispatch(m)
				s.cr = c == '\r'
				i++
				continue
			case ':':
				s.phase = phIgnore // a comment
				i++
				continue
			}
			s.phase, s.nameLen, s.nameBad = phName, 0, false
		case phName:
			switch c {
			case ':':
				if s.isData() {
					s.phase = phSpace
					s.dataLine(m)
				} else {
					s.phase = phIgnore
				}
				i++
			case '\n', '\r':
				// A line with no colon is a field with an empty value:
				// "data" alone adds an empty line to the event's data.
				if s.isData() {
					s.dataLine(m)
				}
				s.endLine(c)
				i++
			default:
				if s.nameLen < len(s.name) {
					s.name[s.nameLen] = c
					s.nameLen++
				} else {
					s.nameBad = true
				}
				i++
			}
		case phSpace:
			s.phase, s.fed = phData, false
			if c == ' ' {
				i++
			}
		case phData, phIgnore:
			j := lineEnd(p[i:])
			line := p[i:]
			if j >= 0 {
				line = p[i : i+j]
			}
			if s.phase == phData {
				if j >= 0 && !s.fed && s.lines == 1 && len(line) <= maxHeld && !m.wants(line) {
					s.skip = true
					s.held = append(s.held[:0], line...)
				}
				if !s.skip {
					m.x.feed(line)
					s.fed = true
				}
			}
			if j < 0 {
				return
			}
			s.endLine(p[i+j])
			i += j + 1
		}
	}
}

func (s *sse) isData() bool { return !s.nameBad && string(s.name[:s.nameLen]) == "data" }

// dataLine starts a data line: the lines of one event's data are joined
// with LF, which JSON reads as white space.
func (s *sse) dataLine(m *Meter) {
	if s.skip {
		// A second line: the event is one document after all, scanned
		// from its start.
		m.x.feed(s.held)
		s.skip = false
	}
	if s.lines > 0 {
		m.x.feed(newline)
	}
	s.lines++
}

var newline = []byte{'\n'}

func (s *sse) endLine(c byte) {
	s.phase = phLineStart
	s.cr = c == '\r'
}

// dispatch ends an event: the next one's data is a new document.
func (s *sse) dispatch(m *Meter) {
	if s.lines > 0 {
		m.x.reset()
		s.lines, s.skip = 0, false
	}
}

// wants reports whether an event whose data is line (all of it, in one
// piece) can hold anything the meter reads. Most events of a stream are
// a few words of the answer: recognising them by a byte search costs a
// fraction of scanning them. The patterns are the exact bytes the
// scanner matches (keys and type values without escapes), so an event
// passed over here is one the scanner would have read nothing from.
func (m *Meter) wants(line []byte) bool {
	needModel := len(m.model) == 0
	switch m.api {
	case OpenAIChat:
		// "usage":{ but not "usage":null, which every chunk carries.
		for i := 0; ; {
			j := index(line[i:], `"usage"`, 4)
			if j < 0 {
				break
			}
			i += j + len(`"usage"`)
			rest := bytes.TrimLeft(line[i:], " \t")
			if len(rest) > 0 && rest[0] == ':' {
				if rest = bytes.TrimLeft(rest[1:], " \t"); len(rest) > 0 && rest[0] == '{' {
					return true
				}
			}
		}
		return needModel && index(line, `"model"`, 3) >= 0
	case OpenAIResponses:
		for i := 0; ; {
			j := index(line[i:], `"response.`, 9)
			if j < 0 {
				break
			}
			i += j + len(`"response.`)
			for _, t := range [...]string{`completed"`, `incomplete"`, `failed"`} {
				if bytes.HasPrefix(line[i:], []byte(t)) {
					return true
				}
			}
		}
		return needModel && index(line, `"model"`, 3) >= 0
	case AnthropicMessages:
		// `"message` and not only `"message_`: a line the scanner reads
		// in pieces (cut by a write) is matched against the body's
		// "type":"message" too, so a whole line must be (FuzzUsageMeter).
		return index(line, `"message`, 6) >= 0
	case Gemini:
		// Every chunk carries the running totals. The first gives the
		// input count (which the body may not show: files and cached
		// content are referenced); the ones in between only raise the
		// output, which an incomplete answer is charged at its worst
		// anyway; the last has a finishReason. After one, every chunk is
		// read, in case another candidate or a usage chunk follows.
		return len(m.final) == 0 || m.finished || needModel ||
			index(line, `"finishReason"`, 7) >= 0 || index(line, `"blockReason"`, 6) >= 0
	}
	return true
}

// index returns the first index of word in b, or -1. It searches for
// the word's byte at pivot, chosen rare in a stream's events (not a
// quote, which is everywhere), with IndexByte, and checks each hit.
func index(b []byte, word string, pivot int) int {
	for i := pivot; i < len(b); {
		j := bytes.IndexByte(b[i:], word[pivot])
		if j < 0 {
			return -1
		}
		i += j
		if start := i - pivot; start+len(word) <= len(b) && string(b[start:start+len(word)]) == word {
			return start
		}
		i++
	}
	return -1
}

// lineEnd returns the index of the first CR or LF in b, or -1.
func lineEnd(b []byte) int {
	j := bytes.IndexByte(b, '\n')
	lim := len(b)
	if j >= 0 {
		lim = j
	}
	if k := bytes.IndexByte(b[:lim], '\r'); k >= 0 {
		return k
	}
	return j
}
