package llm

import "bytes"

// scanner finds the values at a few member paths of JSON documents as
// their bytes arrive, in any pieces, without holding the documents: it
// keeps the nesting depth, the state of the current string, a short key
// and the bytes of the one value being captured (at most maxCapture).
// It does not validate: a value it captures is decoded later, and bytes
// that are not JSON only stop it until the next reset.
//
// What it must never do is mistake text for structure: a model's answer
// (which a client can steer) travels inside JSON strings, so a string's
// end is found exactly, escapes across pieces included; a "usage" inside
// a string is text.
type scanner struct {
	paths *pathSet
	depth int // open containers
	// base is 1 when the top-level value is an array whose elements are
	// the documents (Gemini's JSON stream), 0 when it is the document.
	base   int
	frames [5]frame // frames[d] describes the container at depth d, for d <= base+3
	state  uint8
	esc    bool // in a string: the previous byte was an unescaped backslash
	// skipFrom is the depth of the inert container being skipped (see
	// inert), 0 when none: strings inside it return to stSkip.
	skipFrom int
	// awaiting is set while a tracked member's value has not started:
	// plain bytes (digits, letters) are looked at only then, or while
	// capturing.
	awaiting bool

	key    [maxKey]byte
	keyLen int
	keyBad bool // longer than maxKey, or escaped: matches no path

	capSlot  int8 // the slot being captured, or -1
	capDepth int  // the depth its value started at
	capKind  byte // '{', '[', '"' or 's' (a scalar)
	slots    [nSlots][]byte
	got      uint16 // slots captured in the current document
	over     uint16 // slots whose value was longer than maxCapture

	// doc is called when a document's root object closes, with its
	// captures in slots/got.
	doc func()
}

const (
	stNormal uint8 = iota
	stKey
	stString
	stSkip // inside an inert container: only depth and strings matter
	stDead
)

const (
	maxKey     = 24   // longer keys match no path
	maxCapture = 4096 // longer values are not captured (usage objects are a few hundred bytes)
)

type frame struct {
	object    bool
	expectKey bool // an object before a key
	await     bool // after ':': the next value byte starts the member's value
	slot      int8 // the slot of the current member's value, or -1
	parent    int8 // the current member's parent id, or -1
	// pid is the parent id of this container: set when it is the value
	// of a member that is a parent, or an element of an array that has
	// one (Gemini's candidates[*]); its members are matched against the
	// parent's children. -1 otherwise.
	pid int8
}

// The slots: every path any API reads.
const (
	slotType = iota
	slotModel
	slotUsage
	slotResponseUsage
	slotResponseModel
	slotMessageUsage
	slotMessageModel
	slotUsageMetadata
	slotModelVersion
	slotFinishReason
	slotBlockReason
	nSlots
)

// pathSet is the paths one API reads: level-1 keys that are values to
// capture, or parents whose value's members (or, for an array, its
// elements' members) are matched against children.
type pathSet struct {
	level1   []key1
	children [][]key2 // by parent id
}

type key1 struct {
	name   string
	slot   int8 // -1: not captured itself
	parent int8 // -1: no children read
}

type key2 struct {
	name string
	slot int8
}

var apiPaths = [...]*pathSet{
	OpenAIChat: {level1: []key1{
		{"model", slotModel, -1},
		{"usage", slotUsage, -1},
	}},
	OpenAIResponses: {
		level1: []key1{
			{"type", slotType, -1},
			{"model", slotModel, -1},
			{"usage", slotUsage, -1},
			{"response", -1, 0},
		},
		children: [][]key2{{{"usage", slotResponseUsage}, {"model", slotResponseModel}}},
	},
	AnthropicMessages: {
		level1: []key1{
			{"type", slotType, -1},
			{"model", slotModel, -1},
			{"usage", slotUsage, -1},
			{"message", -1, 0},
		},
		children: [][]key2{{{"usage", slotMessageUsage}, {"model", slotMessageModel}}},
	},
	Gemini: {
		level1: []key1{
			{"usageMetadata", slotUsageMetadata, -1},
			{"modelVersion", slotModelVersion, -1},
			{"candidates", -1, 0},
			{"promptFeedback", -1, 1},
		},
		children: [][]key2{{{"finishReason", slotFinishReason}}, {{"blockReason", slotBlockReason}}},
	},
}

// reset readies the scanner for a new stream of documents (an SSE
// event's data), keeping its buffers.
func (s *scanner) reset() {
	s.depth, s.base, s.state, s.esc = 0, 0, stNormal, false
	s.skipFrom, s.awaiting = 0, false
	s.capSlot = -1
	s.got, s.over = 0, 0
}

// inert reports whether nothing inside the container just opened at
// depth d can be read: it is below the members of a document (level 2
// or deeper) and is not the value, or an element of the value, of a
// parent member. Such a container is skipped by counting brackets and
// jumping over strings, which is most of a long answer.
func (s *scanner) inert(d int) bool {
	if d-s.base < 2 || s.capSlot >= 0 {
		return false
	}
	f := s.frame(d)
	return f == nil || f.pid < 0
}

// frame returns the tracked frame of the container at depth d, or nil.
func (s *scanner) frame(d int) *frame {
	if d >= 1 && d <= s.base+3 && d < len(s.frames) {
		return &s.frames[d]
	}
	return nil
}

// captured returns the bytes captured for slot in the current document.
func (s *scanner) captured(slot int) ([]byte, bool) {
	if s.got&(1<<slot) == 0 {
		return nil, false
	}
	return s.slots[slot], true
}

// feed scans p.
func (s *scanner) feed(p []byte) {
	for i := 0; i < len(p); {
		switch s.state {
		case stString:
			n, closed := s.skipString(p[i:])
			if s.capSlot >= 0 {
				s.capture(p[i : i+n])
				if closed && s.capKind == '"' && s.depth == s.capDepth {
					s.endCapture()
				}
			}
			i += n
			if closed {
				s.state = stNormal
				if s.skipFrom > 0 {
					s.state = stSkip
				}
			}
		case stSkip:
			i += s.skip(p[i:])
		case stKey:
			n := s.scanKey(p[i:])
			if s.capSlot >= 0 {
				s.capture(p[i : i+n])
			}
			i += n
		case stNormal:
			// Plain bytes (white space, digits, letters of literals) change
			// nothing unless a value is awaited or a scalar is being
			// captured; inside a captured object they are copied in bulk.
			// (A value awaited inside a captured object is never one to
			// capture, so its await may lapse until the next ',' or '}'.)
			if s.capSlot < 0 && !s.awaiting || s.capSlot >= 0 && s.capKind != 's' {
				j := i
				for j < len(p) && plain[p[j]] {
					j++
				}
				if s.capSlot >= 0 {
					s.capture(p[i:j])
				}
				if i = j; i == len(p) {
					return
				}
			}
			s.normal(p[i])
			i++
		default: // stDead
			return
		}
	}
}

// skipString consumes string bytes up to and including the closing
// quote, finding it with IndexByte: a quote is escaped when an odd run of
// backslashes precedes it, and a run cut by the end of p carries over in
// esc.
func (s *scanner) skipString(b []byte) (n int, closed bool) {
	i := 0
	for {
		if s.esc {
			if i >= len(b) {
				return i, false
			}
			s.esc = false
			i++
			continue
		}
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			s.esc = backslashes(b[i:], len(b)-i)%2 == 1
			return len(b), false
		}
		q := i + j
		if backslashes(b[i:], j)%2 == 0 {
			return q + 1, true
		}
		i = q + 1
	}
}

// plain marks the bytes that are neither structure nor quotes.
var plain = func() (t [256]bool) {
	for c := range t {
		t[c] = true
	}
	for _, c := range []byte("{}[]:,\"") {
		t[c] = false
	}
	return t
}()

// brackets marks what matters while skipping: brackets and quotes.
var brackets = func() (t [256]bool) {
	for _, c := range []byte("{}[]\"") {
		t[c] = true
	}
	return t
}()

// skip consumes the bytes of an inert container up to its end.
func (s *scanner) skip(b []byte) int {
	for i := 0; i < len(b); i++ {
		for i < len(b) && !brackets[b[i]] {
			i++
		}
		if i == len(b) {
			break
		}
		switch b[i] {
		case '"':
			s.state = stString
			return i + 1
		case '{', '[':
			s.depth++
		default: // '}', ']'
			s.depth--
			if s.depth < s.skipFrom {
				s.state, s.skipFrom = stNormal, 0
				return i + 1
			}
		}
	}
	return len(b)
}

// backslashes counts the backslashes that end b[:end].
func backslashes(b []byte, end int) int {
	n := 0
	for end-n > 0 && b[end-n-1] == '\\' {
		n++
	}
	return n
}

// scanKey consumes the bytes of a key at a tracked level.
func (s *scanner) scanKey(b []byte) int {
	if !s.esc {
		// The common case: the key's end is in b and it has no escape.
		j := bytes.IndexByte(b, '"')
		if seg := b[:max(j, 0)]; j >= 0 && bytes.IndexByte(seg, '\\') < 0 {
			if s.keyLen+len(seg) > maxKey {
				s.keyBad = true
			} else {
				s.keyLen += copy(s.key[s.keyLen:], seg)
			}
			s.state = stNormal
			s.endKey()
			return j + 1
		}
	}
	for i, c := range b {
		switch {
		case s.esc:
			s.esc = false
		case c == '\\':
			s.esc, s.keyBad = true, true
		case c == '"':
			s.state = stNormal
			s.endKey()
			return i + 1
		case s.keyLen < maxKey:
			s.key[s.keyLen] = c
			s.keyLen++
		default:
			s.keyBad = true
		}
	}
	return len(b)
}

// endKey resolves the key just read against the paths.
func (s *scanner) endKey() {
	f := s.frame(s.depth)
	if f == nil {
		return
	}
	f.expectKey, f.slot, f.parent = false, -1, -1
	if s.keyBad {
		return
	}
	k := s.key[:s.keyLen]
	switch level := s.depth - s.base; {
	case level == 1:
		for _, e := range s.paths.level1 {
			if string(k) == e.name {
				f.slot, f.parent = e.slot, e.parent
				return
			}
		}
	case level >= 2 && f.pid >= 0:
		for _, e := range s.paths.children[f.pid] {
			if string(k) == e.name {
				f.slot = e.slot
				return
			}
		}
	}
}

// normal handles one byte outside strings.
func (s *scanner) normal(c byte) {
	if s.capSlot >= 0 && s.capKind == 's' && s.depth == s.capDepth {
		switch c {
		case ' ', '\t', '\n', '\r', ',', '}', ']':
			s.endCapture() // the scalar ended before c
		}
	}
	if s.capSlot >= 0 {
		s.captureByte(c)
	}
	switch c {
	case ' ', '\t', '\n', '\r':
	case '{', '[':
		pid := s.valueStart(c, c)
		if up := s.frame(s.depth); up != nil && !up.object && up.pid >= 0 {
			pid = up.pid // an element of an array whose elements are read
		}
		if s.depth == 0 {
			s.base = 0
			if c == '[' {
				s.base = 1
			}
		}
		s.depth++
		if s.depth-s.base == 1 && c == '{' {
			s.got, s.over, s.capSlot = 0, 0, -1 // a document starts
		}
		if f := s.frame(s.depth); f != nil {
			*f = frame{object: c == '{', expectKey: c == '{', slot: -1, parent: -1, pid: -1}
			if s.depth-s.base >= 2 {
				f.pid = pid
			}
		}
		if s.inert(s.depth) {
			s.state, s.skipFrom = stSkip, s.depth
		}
	case '}', ']':
		s.depth--
		switch {
		case s.depth < 0:
			s.state = stDead
			return
		case s.capSlot >= 0 && s.depth == s.capDepth:
			s.endCapture()
		}
		if s.depth == s.base && c == '}' && s.doc != nil {
			s.doc()
		}
	case '"':
		if f := s.frame(s.depth); f != nil && f.object && f.expectKey {
			s.state, s.keyLen, s.keyBad = stKey, 0, false
			return
		}
		s.valueStart('"', c)
		s.state = stString
	case ':':
		if f := s.frame(s.depth); f != nil && f.object {
			f.expectKey, f.await = false, true
			s.awaiting = true
		}
	case ',':
		if f := s.frame(s.depth); f != nil && f.object {
			f.expectKey, f.await, f.slot, f.parent = true, false, -1, -1
		}
		s.awaiting = false
	default:
		s.valueStart('s', c)
	}
}

// valueStart notes that a value of kind ('{', '[', '"' or 's') begins
// with c at the current depth: when it is the value of a member whose
// path is read, capturing starts. It returns the member's parent id, for
// an object that opens here.
func (s *scanner) valueStart(kind, c byte) int8 {
	s.awaiting = false
	f := s.frame(s.depth)
	if f == nil || !f.await {
		return -1
	}
	f.await = false
	if f.slot >= 0 && s.capSlot < 0 {
		s.capSlot, s.capDepth, s.capKind = f.slot, s.depth, kind
		s.slots[f.slot] = append(s.slots[f.slot][:0], c)
		s.got &^= 1 << f.slot
		s.over &^= 1 << f.slot
	}
	return f.parent
}

// capture appends b to the value being captured, up to maxCapture.
func (s *scanner) capture(b []byte) {
	slot := s.capSlot
	if s.over&(1<<slot) != 0 {
		return
	}
	if len(s.slots[slot])+len(b) > maxCapture {
		s.over |= 1 << slot
		return
	}
	s.slots[slot] = append(s.slots[slot], b...)
}

func (s *scanner) captureByte(c byte) {
	slot := s.capSlot
	if s.over&(1<<slot) != 0 {
		return
	}
	if len(s.slots[slot]) >= maxCapture {
		s.over |= 1 << slot
		return
	}
	s.slots[slot] = append(s.slots[slot], c)
}

func (s *scanner) endCapture() {
	slot := s.capSlot
	s.capSlot = -1
	if s.over&(1<<slot) == 0 {
		s.got |= 1 << slot
	}
}
