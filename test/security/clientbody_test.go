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
			conn := h.GW.DialH1(t)
			defer conn.Close()
			if _, err := io.WriteString(conn, c.request); err != nil {
				t.Fatal(err)
			}
			sent := time.Now()
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			res, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("reading the answer: %v", err)
			}
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != c.status || errCode(string(body)) != c.code {
				t.Errorf("got %d %s, want %d %s", res.StatusCode, body, c.status, c.code)
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
