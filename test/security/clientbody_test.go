package security_test

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/gatewaytest"
	"golang.org/x/net/http2/hpack"
)

const uploadConfig = `
secrets:
  github: { env: GITHUB_TOKEN }
server: { read_body_timeout: 300ms }
routes:
  - name: upload
    path: /upload
    methods: [POST]
    upstream: "{{UP}}/api/upload"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
`

// TestClientBodyFaultsAreClientErrors: a malformed chunked body or a body
// that stops arriving is the client's fault: 400 bad_request or 408
// body_timeout, answered at once, never 502 upstream_unavailable and
// never counted as an upstream error.
func TestClientBodyFaultsAreClientErrors(t *testing.T) {
	cases := []struct {
		name, request string
		status        int
		code          string
	}{
		{"chunk size with 0x prefix", "POST /upload HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
			http.StatusBadRequest, "bad_request"},
		{"chunk data without CRLF", "POST /upload HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
			http.StatusBadRequest, "bad_request"},
		{"body that stops", "POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\nonly a part",
			http.StatusRequestTimeout, "body_timeout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, uploadConfig, func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
			})
			var status int
			var body []byte
			sent := time.Now()
			if h.GW.Engine == gatewaytest.H2 {
				// HTTP/2 has no chunked framing to get wrong; a body
				// that stops is its DATA frames stopping.
				if c.status != http.StatusRequestTimeout {
					t.Skip("chunked framing is HTTP/1.1's")
				}
				status, body = stoppedBodyH2(t, h)
			} else {
				conn := h.GW.DialH1(t)
				defer conn.Close()
				if _, err := io.WriteString(conn, c.request); err != nil {
					t.Fatal(err)
				}
				conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				res, err := http.ReadResponse(bufio.NewReader(conn), nil)
				if err != nil {
					t.Fatalf("reading the answer: %v", err)
				}
				status = res.StatusCode
				body, _ = io.ReadAll(res.Body)
			}
			if status != c.status || errCode(string(body)) != c.code {
				t.Errorf("got %d %s, want %d %s", status, body, c.status, c.code)
			}
			// At once: well within the server's 10 s head timeout, which a
			// drain of the unread body would have waited for.
			if waited := time.Since(sent); waited > 5*time.Second {
				t.Errorf("the answer took %v", waited)
			}
			h.Up.Take()
			if m := metricsText(h); strings.Contains(m, "keyward_upstream_errors_total{") {
				t.Errorf("a client body fault was counted as an upstream error:\n%s", grepLines(m, "keyward_upstream_errors_total"))
			}
		})
	}
}

// stoppedBodyH2 sends a POST over HTTP/2 that declares 100 bytes and
// sends 11, then waits for the answer.
func stoppedBodyH2(t *testing.T, h *gatewaytest.Harness) (int, []byte) {
	t.Helper()
	c := gatewaytest.DialH2(t, h.GW)
	fields := append(gatewaytest.H2Request("POST", "/upload"), hpack.HeaderField{Name: "content-length", Value: "100"})
	if err := c.WriteHeaders(1, false, fields...); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteData(1, []byte("only a part"), false); err != nil {
		t.Fatal(err)
	}
	_ = c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := c.ReadResponse(1)
	if err != nil && res.Status == 0 {
		t.Fatalf("reading the answer: %v", err)
	}
	h.Record(&http.Response{Header: res.Header}, []byte(res.Body))
	return res.Status, []byte(res.Body)
}

func metricsText(h *gatewaytest.Harness) string {
	rec := httptest.NewRecorder()
	h.Metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

func grepLines(text, prefix string) string {
	var out []string
	for line := range strings.SplitSeq(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
