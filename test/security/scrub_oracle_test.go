package security_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/http2"

	"github.com/keyward/keyward/internal/gatewaytest"
)

// reflectConfig puts the GitHub canary on every upstream request of a
// route whose upstream reflects the client's q parameter.
const reflectConfig = `
secrets:
  github: { env: GITHUB_TOKEN }
routes:
  - name: reflect
    path: /reflect/{kind}
    upstream: "{{UP}}/reflect/{kind}"
    query: { allow: [q] }
    headers: { set: { Authorization: "Bearer {secret.github}" } }
`

// reflector is an upstream that streams the client's q parameter back,
// flushes, and then stays silent until the test lets it go on: the pause
// in which a client of the old scrubber saw whether its guess was held.
type reflector struct {
	mu   sync.Mutex
	cont map[string]chan struct{} // by q
}

func (rf *reflector) gate(q string) chan struct{} {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	if rf.cont == nil {
		rf.cont = map[string]chan struct{}{}
	}
	c, ok := rf.cont[q]
	if !ok {
		c = make(chan struct{})
		rf.cont[q] = c
	}
	return c
}

func (rf *reflector) serve(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query().Get("q")
	fl := w.(http.Flusher)
	first, rest := `{"echo":"`+q, `"}`+"\n"
	if strings.HasSuffix(r.URL.Path, "/sse") {
		w.Header().Set("Content-Type", "text/event-stream")
		first, rest = "data: "+q+"\n\n", "data: end\n\n"
	}
	_, _ = io.WriteString(w, first)
	fl.Flush()
	select {
	case <-rf.gate(q):
	case <-r.Context().Done():
		return
	}
	_, _ = io.WriteString(w, rest)
}

// framing requests /reflect/kind?q=guess over a raw connection and
// returns what the client can observe of the stream: the size of each
// chunk, and whether the first part (want bytes) arrived before the
// upstream went on, or the stream stalled instead.
func framing(t *testing.T, h *gatewaytest.Harness, rf *reflector, kind, guess string, want int) []string {
	t.Helper()
	if h.GW.Engine == gatewaytest.H2 {
		return framingH2(t, h, rf, kind, guess, want)
	}
	conn := h.GW.DialH1(t)
	defer conn.Close()
	fmt.Fprintf(conn, "GET /reflect/%s?q=%s HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n", kind, guess)
	br := bufio.NewReader(conn)
	var seen []string
	var body []byte
	released := false
	goOn := func(event string) {
		if !released {
			seen = append(seen, event)
			close(rf.gate(guess))
			released = true
		}
	}
	// A deadline, not a sleep: the gateway holds a tail for 50 ms at
	// most, so the first part arrives well within it. A stream that
	// stalls until the upstream goes on is noted, and let go on.
	readLine := func() string {
		for {
			_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			line, err := br.ReadString('\n')
			if ne, ok := err.(net.Error); ok && ne.Timeout() && !released {
				goOn(fmt.Sprintf("stalled with %d of %d bytes", len(body), want))
				continue
			}
			if err != nil {
				t.Fatalf("reading the response: %v", err)
			}
			return strings.TrimRight(line, "\r\n")
		}
	}
	status := readLine()
	header := http.Header{}
	for {
		line := readLine()
		if line == "" {
			break
		}
		k, v, _ := strings.Cut(line, ":")
		header.Add(k, strings.TrimSpace(v))
	}
	if header.Get("Transfer-Encoding") != "chunked" {
		t.Fatalf("%s: not chunked (%v)", status, header)
	}
	for {
		if len(body) >= want {
			goOn("upstream goes on")
		}
		line := readLine()
		n, err := strconv.ParseInt(line, 16, 64)
		if err != nil {
			t.Fatalf("chunk size %q: %v", line, err)
		}
		if n == 0 {
			break
		}
		chunk := make([]byte, n+2)
		if _, err := io.ReadFull(br, chunk); err != nil {
			t.Fatalf("reading a chunk: %v", err)
		}
		body = append(body, chunk[:n]...)
		seen = append(seen, fmt.Sprintf("chunk of %d", n))
	}
	h.Record(&http.Response{Status: status, Header: header}, body)
	return seen
}

// framingH2 is framing over HTTP/2, where what the client observes of
// the stream is the size of each DATA frame.
func framingH2(t *testing.T, h *gatewaytest.Harness, rf *reflector, kind, guess string, want int) []string {
	t.Helper()
	c := gatewaytest.DialH2(t, h.GW)
	if err := c.WriteHeaders(1, true, gatewaytest.H2Request("GET", "/reflect/"+kind+"?q="+guess)...); err != nil {
		t.Fatal(err)
	}
	var seen []string
	var body []byte
	released := false
	goOn := func(event string) {
		if !released {
			seen = append(seen, event)
			close(rf.gate(guess))
			released = true
		}
	}
	res := &http.Response{Header: http.Header{}}
	for {
		if len(body) >= want {
			goOn("upstream goes on")
		}
		_ = c.Conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		f, err := c.Framer.ReadFrame()
		if ne, ok := err.(net.Error); ok && ne.Timeout() && !released {
			goOn(fmt.Sprintf("stalled with %d of %d bytes", len(body), want))
			continue
		}
		if err != nil {
			t.Fatalf("reading the response: %v", err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			res.Status = f.PseudoValue("status")
			for _, hf := range f.RegularFields() {
				res.Header.Add(hf.Name, hf.Value)
			}
		case *http2.DataFrame:
			if n := len(f.Data()); n > 0 {
				body = append(body, f.Data()...)
				seen = append(seen, fmt.Sprintf("chunk of %d", n))
				_ = c.Framer.WriteWindowUpdate(0, uint32(n))
				_ = c.Framer.WriteWindowUpdate(1, uint32(n))
			}
			if f.StreamEnded() {
				h.Record(res, body)
				return seen
			}
		case *http2.RSTStreamFrame:
			t.Fatalf("stream reset: %v", f.ErrCode)
		}
	}
}

// TestScrubStreamNotAnOracle: the attack that recovered any configured
// secret in about 2,000 requests. The client makes the upstream reflect
// a guess at the end of a streamed write, then watches where the
// gateway's stream is split while the upstream pauses. The old scrubber
// held the guess back exactly when it was a prefix of the secret. Now a
// guess that is a prefix of the secret and one that is not must produce
// the same chunks, at every length, and the reflected text must arrive
// while the upstream is silent (after the fixed release delay), not wait
// for more.
//
// This needs the gateway to stream bodies through scrub.Writer
// (NewWriter, Flush after each read, Close at the end).
func TestScrubStreamNotAnOracle(t *testing.T) {
	rf := &reflector{}
	h := newHarness(t, reflectConfig, rf.serve)
	// Prefixes that stop short of the harness's "CANARY" marker.
	const known = "ghp_CA"
	for n := 1; n <= len(known); n++ {
		prefix, other := known[:n], strings.Repeat("x", n)
		first := len(`{"echo":"`) + n
		got := framing(t, h, rf, "json", prefix, first)
		want := framing(t, h, rf, "json", other, first)
		h.Up.Take()
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("guess of %d bytes: the stream tells a secret prefix apart (-other +prefix):\n%s", n, diff)
		}
		for _, e := range got {
			if strings.HasPrefix(e, "stalled") {
				t.Errorf("guess of %d bytes: %s: a held tail must be released after a fixed delay", n, e)
			}
		}
	}
}

// TestScrubStreamEventsNotDelayed: a server-sent event ends with a blank
// line, so it reaches the client at once, whatever it holds, while the
// upstream is still open.
func TestScrubStreamEventsNotDelayed(t *testing.T) {
	rf := &reflector{}
	h := newHarness(t, reflectConfig, rf.serve)
	for _, q := range []string{"ghp_CA", "hello"} {
		event := "data: " + q + "\n\n"
		got := framing(t, h, rf, "sse", q, len(event))
		h.Up.Take()
		want := []string{fmt.Sprintf("chunk of %d", len(event)), "upstream goes on", "chunk of 11"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("q=%s (-want +got):\n%s", q, diff)
		}
	}
}
