package listener

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/http1"
)

// verdict is what a parser made of a byte stream: where each message it
// accepted ended, and whether it refused the stream after them.
type verdict struct {
	Ends    []int
	Refused bool
}

// guardVerdict runs the guard's parser over stream, as a connection's scan
// does when the whole stream has arrived.
func guardVerdict(stream []byte) verdict {
	ps := parser{maxHeaderBytes: http.DefaultMaxHeaderBytes, maxHeaders: defaultMaxHeaders}
	var v verdict
	for i := 0; i < len(stream); {
		var n int
		var bad *violation
		switch ps.phase {
		case phHead, phTrailer:
			n, bad = ps.section(stream[i:])
			if n < 0 {
				return v // incomplete: the cases end with whole requests
			}
		default:
			n, bad = ps.body(stream[i:])
		}
		if bad != nil {
			v.Refused = true
			return v
		}
		i += n
		if ps.phase == phHead {
			v.Ends = append(v.Ends, i)
		}
	}
	return v
}

// stdlibVerdict reads stream as internal/http1 does behind the guard:
// http.ReadRequest and its body reader over a read buffer of the server's
// size, whose limits on a chunk-size line and a trailer section come from
// that size.
func stdlibVerdict(stream []byte) verdict {
	cr := &countingReader{r: bytes.NewReader(stream)}
	br := bufio.NewReaderSize(cr, http1.ReadBufferSize)
	var v verdict
	for {
		req, err := http.ReadRequest(br)
		if err == io.EOF {
			return v
		}
		if err != nil {
			v.Refused = true
			return v
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			v.Refused = true
			return v
		}
		v.Ends = append(v.Ends, cr.n-br.Buffered())
	}
}

// TestDifferential feeds the guard and the standard library's parser the
// same chunked bodies at the boundaries of net/http's limits, which the
// guard copies (maxChunkLine, maxTrailerBytes, maxChunkOverhead, 16 hex
// digits): two parsers in series must agree on where a body ends and
// whether it is refused. If net/http's limits or http1's read buffer
// change, this fails. Where the guard is stricter on purpose, the case
// says so, and the test checks that it is only stricter.
func TestDifferential(t *testing.T) {
	const (
		limit = http1.ReadBufferSize
		// stdlibOverhead is net/http's bound on excess chunk framing
		// (net/http/internal/chunked.go); the guard's copy is what is
		// tested, so it is not used here.
		stdlibOverhead = 16 << 10
	)
	// line returns a chunk-size line for size with an extension padding
	// it, CRLF included, to exactly n bytes.
	line := func(size string, n int) string {
		return size + ";" + strings.Repeat("e", n-len(size)-3) + "\r\n"
	}
	// field returns a trailer field line of exactly n bytes.
	field := func(n int) string { return "X-T: " + strings.Repeat("t", n-7) + "\r\n" }
	// overhead returns chunks of one byte of data each whose framing
	// beyond net/http's allowance (16 bytes per chunk plus twice the data)
	// adds up to excess.
	overhead := func(excess int) string {
		var b strings.Builder
		for excess > 0 {
			// net/http counts a line of n bytes with its CRLF as n-2,
			// plus 2 for the data's CRLF, less the allowance of 18.
			d := min(excess, limit-18)
			b.WriteString(line("1", d+18) + "x\r\n")
			excess -= d
		}
		return b.String()
	}
	tests := []struct {
		name     string
		body     string
		stricter bool // the guard refuses it, net/http accepts it
	}{
		{"plain", "5\r\nhello\r\n0\r\n\r\n", false},
		{"chunk-size line at the limit", line("1", limit) + "x\r\n0\r\n\r\n", false},
		{"chunk-size line one over", line("1", limit+1) + "x\r\n0\r\n\r\n", false},
		{"last chunk line at the limit", line("0", limit) + "\r\n", false},
		{"last chunk line one over", line("0", limit+1) + "\r\n", false},
		{"16 hex digits", "0000000000000001\r\nx\r\n0\r\n\r\n", false},
		{"17 hex digits", "00000000000000001\r\nx\r\n0\r\n\r\n", false},
		{"extensions", "1;a=b;c=\"quoted; value\"\r\nx\r\n0;last\r\n\r\n", false},
		{"whitespace before an extension", "1 ;a\r\nx\r\n0\r\n\r\n", false},
		{"whitespace after the size", "1 \r\nx\r\n0\r\n\r\n", true},
		{"control byte in an extension", "1;a=\x01\r\nx\r\n0\r\n\r\n", true},
		{"0x prefix", "0x5\r\nhello\r\n0\r\n\r\n", false},
		{"chunk data without CRLF", "5\r\nhelloXX0\r\n\r\n", false},
		{"bare LF after the size", "5\nhello\r\n0\r\n\r\n", false},
		{"trailer section at the limit", "0\r\n" + field(limit-2) + "\r\n", false},
		{"trailer section one over", "0\r\n" + field(limit-1) + "\r\n", false},
		{"trailer fields at the guard's count", "0\r\n" + strings.Repeat("X: y\r\n", defaultMaxHeaders) + "\r\n", false},
		{"trailer fields over the guard's count", "0\r\n" + strings.Repeat("X: y\r\n", defaultMaxHeaders+1) + "\r\n", true},
		{"overhead at the limit", overhead(stdlibOverhead) + "0\r\n\r\n", false},
		{"overhead one over", overhead(stdlibOverhead+1) + "0\r\n\r\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream := []byte("POST /a HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n" + tt.body + next)
			guard, stdlib := guardVerdict(stream), stdlibVerdict(stream)
			if tt.stricter {
				if !guard.Refused || stdlib.Refused {
					t.Errorf("guard %+v, net/http %+v; want the guard to refuse what net/http accepts", guard, stdlib)
				}
				return
			}
			if diff := cmp.Diff(stdlib, guard); diff != "" {
				t.Errorf("the guard and net/http disagree (-net/http +guard):\n%s", diff)
			}
		})
	}
}
