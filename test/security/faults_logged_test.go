package security_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

const streamFaultsConfig = `
routes:
  - name: events
    path: /events
    idle_timeout: 150ms
    upstream: "{{UP}}/events"
    query: { allow: [keep] }
`

// accessLine returns the access-log line of the request with the given
// X-Request-Id, waiting for it to be written.
func accessLine(t *testing.T, logs interface{ String() string }, id string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for line := range strings.SplitSeq(logs.String(), "\n") {
			var e map[string]any
			if json.Unmarshal([]byte(line), &e) == nil && e["msg"] == "request" && e["id"] == id {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no access-log line for request %s in:\n%s", id, logs.String())
		}
		time.Sleep(10 * time.Millisecond) // the log is written after the response ends
	}
}

// TestFaultsAfterTheHeadAreLoggedAsFaults (issue 15.2): a stream whose
// upstream stalls after its head was sent can only be cut; the access log
// and the metrics still say what happened (504 upstream_stalled), never
// 200. A client that closes a stream is 499, not 200.
func TestFaultsAfterTheHeadAreLoggedAsFaults(t *testing.T) {
	release := make(chan struct{})
	h := newHarness(t, streamFaultsConfig, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		if r.URL.Query().Get("keep") == "" {
			<-r.Context().Done() // stall past idle_timeout
			return
		}
		for {
			select {
			case <-r.Context().Done():
				return
			case <-release:
				return
			case <-time.After(20 * time.Millisecond):
				if _, err := io.WriteString(w, "data: more\n\n"); err != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
		}
	})
	defer close(release)

	t.Run("stall after the head", func(t *testing.T) {
		res, err := h.GW.Client().Get(h.GW.URL + "/events")
		if err != nil {
			t.Fatal(err)
		}
		body, rerr := io.ReadAll(res.Body)
		res.Body.Close()
		h.Record(res, body)
		if rerr == nil {
			t.Errorf("the stalled stream ended cleanly after %q", body)
		}
		e := accessLine(t, h.Logs, res.Header.Get("X-Request-Id"))
		if e["status"] != float64(504) || e["error"] != "upstream_stalled" {
			t.Errorf("access log: status %v error %v, want 504 upstream_stalled", e["status"], e["error"])
		}
		if m := metricsText(h); !strings.Contains(grepLines(m, "keyward_upstream_errors_total"), `kind="upstream_stalled"`) {
			t.Errorf("stall not counted:\n%s", grepLines(m, "keyward_upstream_errors_total"))
		}
		h.Up.Take()
	})

	t.Run("client closes the stream", func(t *testing.T) {
		conn := h.GW.DialH1(t)
		io.WriteString(conn, "GET /events?keep=1 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
		br := bufio.NewReader(conn)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		id := res.Header.Get("X-Request-Id")
		if _, err := br.ReadString('\n'); err != nil { // the first chunk has arrived
			t.Fatal(err)
		}
		conn.Close()
		e := accessLine(t, h.Logs, id)
		if e["status"] != float64(499) {
			t.Errorf("access log: status %v error %v, want 499", e["status"], e["error"])
		}
		if m := metricsText(h); strings.Contains(grepLines(m, "keyward_upstream_errors_total"), "client") {
			t.Errorf("a client leaving was counted as an upstream error:\n%s", grepLines(m, "keyward_upstream_errors_total"))
		}
		h.Up.Take()
	})
}
