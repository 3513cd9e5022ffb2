package listener

import (
	"bytes"
	"net/http"
)

// violation is one reason a connection is refused. Violations are
// package-level values so that finding one allocates nothing; the message is
// sent to the client, so it never quotes the request.
type violation struct {
	status int
	code   string
	msg    string
}

func bad(msg string) *violation { return &violation{http.StatusBadRequest, "bad_framing", msg} }

var (
	errBareLF         = bad("line ends with a bare LF; HTTP/1.1 requires CRLF")
	errEmptyLine      = bad("empty line before the request line")
	errRequestLine    = bad("malformed request line")
	errMethod         = bad("malformed method")
	errTarget         = bad("malformed request target")
	errAsterisk       = bad("the * request target is only allowed with OPTIONS")
	errVersion        = bad("unsupported HTTP version; this listener speaks HTTP/1.0 and HTTP/1.1")
	errPreface        = bad("HTTP/2 with prior knowledge is not supported on this listener")
	errFold           = bad("header line starts with whitespace (obsolete line folding)")
	errNoColon        = bad("header line without a colon")
	errFieldName      = bad("malformed header name")
	errSpaceName      = bad("whitespace between header name and colon")
	errUnderscore     = bad("header name contains an underscore")
	errFieldValue     = bad("header value contains a control character")
	errContentLength  = bad("malformed Content-Length")
	errConflictingCL  = bad("conflicting Content-Length headers")
	errTransferCoding = bad("malformed or unsupported Transfer-Encoding; only a single \"chunked\" is accepted")
	errRepeatedTE     = bad("repeated Transfer-Encoding header")
	errCLAndTE        = bad("both Content-Length and Transfer-Encoding")
	errTEInHTTP10     = bad("Transfer-Encoding in an HTTP/1.0 request")
	errHost           = bad("missing or repeated Host header")
	errChunkSize      = bad("malformed chunk size line")
	errChunkEnd       = bad("chunk data not followed by CRLF")
	errChunkOverhead  = bad("chunked encoding contains too much non-data")
	errTrailer        = bad("trailer section too large")
	errTrailerField   = bad("Trailer names a framing field")

	errTooManyHeaders = &violation{http.StatusRequestHeaderFieldsTooLarge, "too_many_headers", "too many header lines"}
	errHeadTooLarge   = &violation{http.StatusRequestHeaderFieldsTooLarge, "headers_too_large", "request line and headers too large"}
)

// Body phases of the parser. A request head and a chunked body's trailer
// section are both "sections": held until complete, then checked line by line.
const (
	phHead     = iota // reading a request head
	phLength          // Content-Length body: remain bytes to go
	phChunk           // chunked body: inside chunk framing (see chunk states)
	phData            // chunked body: remain bytes of chunk data to go
	phTrailer         // chunked body: the trailer section after the last chunk
	phRejected        // a violation was found; nothing more is parsed
)

// Chunk framing states (RFC 9112 §7.1): chunk-size [ chunk-ext ] CRLF
// chunk-data CRLF.
const (
	csSize   = iota // hex digits of chunk-size
	csExt           // inside chunk-ext, up to CR
	csSizeLF        // CR seen after size line, LF required
	csDataCR        // chunk data done, CR required
	csDataLF        // CR seen after chunk data, LF required
)

const (
	// maxChunkLine bounds a chunk-size line with its CRLF. It is the size of
	// the server's read buffer (http1.ReadBufferSize): net/http's chunked
	// reader fails on a line that does not fit in it. TestDifferential
	// fails if the two stop agreeing.
	maxChunkLine = 4096
	// maxTrailerBytes bounds the trailer section with its final CRLF:
	// net/http only reads a trailer whose end it can see in the server's
	// read buffer (checked by TestDifferential too).
	maxTrailerBytes = 4096
	// maxChunkOverhead mirrors net/http's limit on framing bytes beyond
	// 16 per chunk plus twice the data (CVE-2023-39326): a sender may not
	// make us read much more framing than data.
	maxChunkOverhead = 16 << 10
)

// framing is what a passed request head says about its body, reported to
// tests through conn.onHead.
type framing struct {
	headLen       int
	contentLength int64 // -1 when chunked
	chunked       bool
}

// parser follows one connection's byte stream: request heads, then the body
// each one implies, so it always knows where the next request starts. It
// never allocates; all positions in a section are relative to its first byte.
type parser struct {
	maxHeaderBytes int
	maxHeaders     int

	phase int

	// The section (head or trailer) being read.
	searched  int // bytes of the section known to hold no unprocessed LF
	lineStart int // start of the current line
	fields    int // field lines so far

	// Head facts.
	http10   bool
	nCL      int
	cl       int64
	clDigits int
	nTE      int
	nHost    int

	// Body.
	remain   uint64 // bytes left (phLength, phData)
	cs       int    // chunk state
	size     uint64 // chunk size being read
	digits   int
	lineLen  int   // bytes of the chunk-size line so far
	overhead int64 // excess framing bytes, as net/http counts them
}

func (ps *parser) resetSection() {
	ps.searched, ps.lineStart, ps.fields = 0, 0, 0
}

// body consumes b as bytes of the current body, returning how many belong to
// it. When the body ends the parser turns to the next request head (or to
// the trailer section, which the caller reads like a head).
func (ps *parser) body(b []byte) (int, *violation) {
	i := 0
	for i < len(b) {
		switch ps.phase {
		case phLength, phData:
			n := uint64(len(b) - i)
			if n > ps.remain {
				n = ps.remain
			}
			i += int(n)
			ps.remain -= n
			if ps.remain == 0 {
				if ps.phase == phLength {
					ps.phase = phHead
					ps.resetSection()
					return i, nil
				}
				ps.phase, ps.cs = phChunk, csDataCR
			}
		case phChunk:
			c := b[i]
			i++
			switch ps.cs {
			case csSize:
				ps.lineLen++
				if v := unhex[c]; v != 0xff {
					if ps.digits == 16 {
						return i, errChunkSize
					}
					ps.size = ps.size<<4 | uint64(v)
					ps.digits++
				} else if ps.digits > 0 && c == ';' {
					ps.cs = csExt
				} else if ps.digits > 0 && c == '\r' {
					ps.cs = csSizeLF
				} else {
					return i, errChunkSize
				}
			case csExt:
				// Extensions are ignored by net/http; we only keep them
				// free of control bytes and bounded (RFC 9112 §7.1.1).
				ps.lineLen++
				if c == '\r' {
					ps.cs = csSizeLF
				} else if !valueOK[c] {
					return i, errChunkSize
				}
			case csSizeLF:
				if c != '\n' {
					return i, errChunkSize
				}
				// lineLen counts the line and its CR; the LF is the +1.
				if ps.lineLen+1 > maxChunkLine {
					return i, errChunkSize
				}
				ps.overhead += int64(ps.lineLen + 1)
				if ps.size < 1<<40 {
					ps.overhead -= 16 + 2*int64(ps.size)
				} else {
					ps.overhead = 0
				}
				ps.overhead = max(ps.overhead, 0)
				if ps.overhead > maxChunkOverhead {
					return i, errChunkOverhead
				}
				if ps.size == 0 {
					ps.phase = phTrailer
					ps.resetSection()
					return i, nil
				}
				ps.phase, ps.remain = phData, ps.size
			case csDataCR:
				if c != '\r' {
					return i, errChunkEnd
				}
				ps.cs = csDataLF
			case csDataLF:
				if c != '\n' {
					return i, errChunkEnd
				}
				ps.cs, ps.size, ps.digits, ps.lineLen = csSize, 0, 0, 0
			}
		default:
			return i, nil
		}
	}
	return i, nil
}

// section reads a request head (phHead) or trailer section (phTrailer) that
// starts at s[0]. It returns the section's length once its empty line has
// arrived and every line is valid, or -1 while more bytes are needed.
// s[:searched] is never examined twice, so a head trickling in one byte at a
// time costs linear time.
func (ps *parser) section(s []byte) (int, *violation) {
	limit, tooLarge := ps.maxHeaderBytes, errHeadTooLarge
	if ps.phase == phTrailer {
		limit, tooLarge = maxTrailerBytes, errTrailer
	}
	for {
		nl := bytes.IndexByte(s[ps.searched:], '\n')
		if nl < 0 {
			ps.searched = len(s)
			if len(s) > limit {
				return 0, tooLarge
			}
			return -1, nil
		}
		end := ps.searched + nl + 1
		if end > limit {
			return 0, tooLarge
		}
		line := s[ps.lineStart : end-1]
		// RFC 9112 §2.2: a bare CR or bare LF is not a line ending; we refuse
		// rather than guess, since a front end may have guessed differently.
		if len(line) == 0 || line[len(line)-1] != '\r' {
			return 0, errBareLF
		}
		line = line[:len(line)-1]
		first := ps.lineStart == 0
		ps.lineStart, ps.searched = end, end
		switch {
		case first && ps.phase == phHead:
			if v := ps.requestLine(line); v != nil {
				return 0, v
			}
		case len(line) == 0:
			if ps.phase == phHead {
				if v := ps.endHead(); v != nil {
					return 0, v
				}
			} else {
				ps.phase = phHead
				ps.resetSection()
			}
			return end, nil
		default:
			ps.fields++
			if ps.fields > ps.maxHeaders {
				if ps.phase == phTrailer {
					return 0, errTrailer
				}
				return 0, errTooManyHeaders
			}
			if v := ps.fieldLine(line); v != nil {
				return 0, v
			}
		}
	}
}

// requestLine checks method SP request-target SP HTTP-version
// (RFC 9112 §3) and resets the head facts.
func (ps *parser) requestLine(line []byte) *violation {
	ps.nCL, ps.cl, ps.clDigits, ps.nTE, ps.nHost = 0, 0, 0, 0, 0
	if len(line) == 0 {
		// RFC 9112 §2.2 lets a server skip empty lines before a request;
		// net/http does not, so neither do we: both must agree.
		return errEmptyLine
	}
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return errRequestLine
	}
	method, rest := line[:sp], line[sp+1:]
	sp = bytes.IndexByte(rest, ' ')
	if sp < 0 {
		return errRequestLine
	}
	target, version := rest[:sp], rest[sp+1:]
	switch string(version) {
	case "HTTP/1.1":
		ps.http10 = false
	case "HTTP/1.0":
		ps.http10 = true
	case "HTTP/2.0":
		if string(method) == "PRI" {
			return errPreface
		}
		return errVersion
	default:
		return errVersion
	}
	for _, c := range method {
		if !tchar[c] {
			return errMethod
		}
	}
	return checkTarget(method, target)
}

// checkTarget accepts the request-target forms keyward serves (RFC 9112
// §3.2): origin-form, absolute-form with an http(s) scheme and a plain
// host[:port], and "*" for OPTIONS. Authority-form (CONNECT host:port) is
// refused: a CONNECT that succeeded would turn the connection into a tunnel
// the guard cannot frame. Everything accepted here is accepted by
// url.ParseRequestURI, so net/http never fails on a target we passed.
func checkTarget(method, t []byte) *violation {
	if len(t) == 0 {
		return errTarget
	}
	if t[0] == '/' {
		return checkPathQuery(t)
	}
	if len(t) == 1 && t[0] == '*' {
		if string(method) != "OPTIONS" {
			return errAsterisk
		}
		return nil
	}
	var rest []byte
	switch {
	case hasPrefixFold(t, "http://"):
		rest = t[len("http://"):]
	case hasPrefixFold(t, "https://"):
		rest = t[len("https://"):]
	default:
		return errTarget
	}
	// Userinfo, IP literals and percent-encoding in the authority are
	// refused: none has a use in a request to a gateway.
	i, colon := 0, -1
	for ; i < len(rest) && rest[i] != '/' && rest[i] != '?'; i++ {
		c := rest[i]
		switch {
		case c == ':' && colon < 0:
			colon = i
		case colon >= 0 && (c < '0' || c > '9'):
			return errTarget
		case colon < 0 && !hostChar[c]:
			return errTarget
		}
	}
	if i == 0 || colon == 0 {
		return errTarget
	}
	return checkPathQuery(rest[i:])
}

// checkPathQuery checks path-abempty [ "?" query ]: visible ASCII only, no
// fragment, and percent-encoding in the path well formed (net/url refuses a
// path with a bad escape, and a front end might decode it differently).
func checkPathQuery(s []byte) *violation {
	query := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !targetChar[c] {
			return errTarget
		}
		switch {
		case c == '?':
			query = true
		case c == '%' && !query:
			if i+2 >= len(s) || unhex[s[i+1]] == 0xff || unhex[s[i+2]] == 0xff {
				return errTarget
			}
		}
	}
	return nil
}

// fieldLine checks field-name ":" OWS field-value OWS (RFC 9112 §5) and,
// in a head, notes the fields that decide framing.
func (ps *parser) fieldLine(line []byte) *violation {
	if line[0] == ' ' || line[0] == '\t' {
		// RFC 9112 §5.2: obs-fold may be refused with 400. Right after the
		// request line it is whitespace before the first field (§2.2).
		return errFold
	}
	colon := bytes.IndexByte(line, ':')
	if colon < 0 {
		return errNoColon
	}
	if colon == 0 {
		return errFieldName
	}
	name, value := line[:colon], line[colon+1:]
	for _, c := range name {
		if !nameChar[c] {
			switch c {
			case ' ', '\t':
				// RFC 9112 §5.1: MUST be rejected with 400.
				return errSpaceName
			case '_':
				// Legal in a token, but CGI-style servers and some proxies
				// read X_Forwarded_For as X-Forwarded-For; refusing it
				// keeps one field from having two names.
				return errUnderscore
			}
			return errFieldName
		}
	}
	for _, c := range value {
		if !valueOK[c] {
			// RFC 9110 §5.5: CR, LF and NUL are invalid in a value; other
			// controls are refused too, as net/textproto does.
			return errFieldValue
		}
	}
	if ps.phase != phHead {
		return nil
	}
	switch {
	case equalFold(name, "content-length"):
		return ps.contentLength(trimOWS(value))
	case equalFold(name, "transfer-encoding"):
		ps.nTE++
		if ps.nTE > 1 {
			return errRepeatedTE
		}
		// Only "chunked", with nothing but spaces before it: a tab, a
		// trailing space or a list are valid syntax that some front ends
		// read differently (RFC 9112 §6.1, §11.2), which is how requests
		// are smuggled.
		v := value
		for len(v) > 0 && v[0] == ' ' {
			v = v[1:]
		}
		if !equalFold(v, "chunked") {
			return errTransferCoding
		}
	case equalFold(name, "host"):
		ps.nHost++
		if ps.nHost > 1 {
			return errHost
		}
	case equalFold(name, "trailer"):
		// RFC 9110 §6.5.1: framing fields may not be trailers; net/http
		// refuses such a request, so we refuse it first.
		for len(value) > 0 {
			var elem []byte
			elem, value, _ = bytes.Cut(value, []byte(","))
			elem = trimOWS(elem)
			if equalFold(elem, "content-length") || equalFold(elem, "transfer-encoding") || equalFold(elem, "trailer") {
				return errTrailerField
			}
		}
	}
	return nil
}

// contentLength parses 1*DIGIT (RFC 9110 §8.6). A repeat is accepted only
// with the same digits, as net/http does; anything else is refused
// (RFC 9112 §6.3 rule 5).
func (ps *parser) contentLength(v []byte) *violation {
	if len(v) == 0 {
		return errContentLength
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return errContentLength
		}
		if n > (1<<63-1-9)/10 {
			return errContentLength
		}
		n = n*10 + int64(c-'0')
	}
	ps.nCL++
	if ps.nCL > 1 && (n != ps.cl || len(v) != ps.clDigits) {
		return errConflictingCL
	}
	ps.cl, ps.clDigits = n, len(v)
	return nil
}

// endHead applies the rules that need the whole head and picks the body
// framing (RFC 9112 §6.3).
func (ps *parser) endHead() *violation {
	switch {
	case ps.nTE > 0 && ps.nCL > 0:
		// §6.1: "ought to be handled as an error"; net/http instead drops
		// Content-Length, which a front end framing by Content-Length
		// turns into a smuggled request.
		return errCLAndTE
	case ps.nTE > 0 && ps.http10:
		// §6.1: MUST treat as faulty framing and close the connection.
		return errTEInHTTP10
	case !ps.http10 && ps.nHost != 1:
		// RFC 9112 §3.2: MUST respond 400.
		return errHost
	}
	ps.resetSection()
	switch {
	case ps.nTE > 0:
		ps.phase, ps.cs, ps.size, ps.digits, ps.lineLen, ps.overhead = phChunk, csSize, 0, 0, 0, 0
	case ps.cl > 0:
		ps.phase, ps.remain = phLength, uint64(ps.cl)
	default:
		ps.phase = phHead
	}
	return nil
}

// headFraming reports the framing of the head endHead just accepted.
func (ps *parser) headFraming(headLen int) framing {
	if ps.nTE > 0 {
		return framing{headLen: headLen, contentLength: -1, chunked: true}
	}
	return framing{headLen: headLen, contentLength: ps.cl}
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold reports whether b equals the lower-case ASCII string s, ignoring
// ASCII case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

func hasPrefixFold(b []byte, s string) bool {
	return len(b) >= len(s) && equalFold(b[:len(s)], s)
}

// Byte classes, built once.
var (
	tchar      [256]bool // RFC 9110 §5.6.2 token characters
	nameChar   [256]bool // tchar without '_'
	valueOK    [256]bool // RFC 9110 §5.5 field-vchar, SP, HTAB; obs-text allowed
	targetChar [256]bool // visible ASCII except '#'
	hostChar   [256]bool // RFC 3986 unreserved
	unhex      [256]byte // hex digit value, 0xff if not a hex digit
)

func init() {
	for c := 0; c < 256; c++ {
		b := byte(c)
		alnum := 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9'
		tchar[c] = alnum || bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), b) >= 0
		nameChar[c] = tchar[c] && b != '_'
		valueOK[c] = b == ' ' || b == '\t' || (b > 0x20 && b != 0x7f)
		targetChar[c] = b > 0x20 && b < 0x7f && b != '#'
		hostChar[c] = alnum || b == '-' || b == '.' || b == '_' || b == '~'
		unhex[c] = 0xff
		switch {
		case '0' <= b && b <= '9':
			unhex[c] = b - '0'
		case 'a' <= b && b <= 'f':
			unhex[c] = b - 'a' + 10
		case 'A' <= b && b <= 'F':
			unhex[c] = b - 'A' + 10
		}
	}
}
