package security_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestBufferedBodiesBounded (issue 15.5): bodies read whole (validated,
// transformed, or on a route with a budget) count against
// server.max_buffered_bytes; a request that would cross it gets 503 busy
// with Retry-After instead of growing memory, and the bound frees up when
// the body that held it is done.
func TestBufferedBodiesBounded(t *testing.T) {
	const yaml = `
server: { max_buffered_bytes: 1MiB }
routes:
  - name: submit
    path: /submit
    methods: [POST]
    max_body: 1MiB
    upstream: "{{UP}}/api/submit"
    validate: { body: { type: object } }
`
	h := newHarness(t, yaml, nil)
	// A client declares 900 KiB and sends a little: the gateway holds the
	// reservation while it waits for the rest.
	conn := h.GW.DialH1(t)
	defer conn.Close()
	const declared = 900 << 10
	fmt.Fprintf(conn, "POST /submit HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"a\":\"", declared)

	body := `{"b":"` + strings.Repeat("x", 300<<10) + `"}`
	json := http.Header{"Content-Type": {"application/json"}}
	var res = h.Raw("POST", "/submit", json, body)
	for deadline := time.Now().Add(5 * time.Second); res.Status == http.StatusOK && time.Now().Before(deadline); {
		// The first request may not have been read yet: retry until its
		// reservation is visible.
		h.Up.Take()
		res = h.Raw("POST", "/submit", json, body)
	}
	refused(t, h, res, http.StatusServiceUnavailable, "busy")
	if res.Header.Get("Retry-After") == "" {
		t.Errorf("503 busy without Retry-After")
	}

	// The first client finishes; its reservation is given back.
	rest := strings.Repeat("y", declared-len(`{"a":"`)-2) + `"}`
	if _, err := io.WriteString(conn, rest); err != nil {
		t.Fatal(err)
	}
	first, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	first.Body.Close()
	if first.StatusCode != http.StatusOK {
		t.Fatalf("the first request: %d", first.StatusCode)
	}
	h.Up.Take()
	ok(t, h, h.Raw("POST", "/submit", json, body))
}

// TestOversizeChunkedUploads (issue 15.7): on a route with a budget the
// body is complete and within max_body before the upstream is dialled, so
// an oversize chunked upload costs no upstream call and no budget; on any
// route an overrun is the client's error (413), never an upstream error.
func TestOversizeChunkedUploads(t *testing.T) {
	const yaml = `
routes:
  - name: metered
    path: /metered
    methods: [POST]
    max_body: 64KiB
    upstream: "{{UP}}/api/metered"
    limits: { budget: 1/day }
  - name: plain
    path: /plain
    methods: [POST]
    max_body: 64KiB
    upstream: "{{UP}}/api/plain"
`
	h := newHarness(t, yaml, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	})
	chunked := func(target string, size int) (int, string) {
		t.Helper()
		conn := h.GW.DialH1(t)
		defer conn.Close()
		go func() {
			fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n", target)
			chunk := strings.Repeat("z", 8<<10)
			for sent := 0; sent < size; sent += len(chunk) {
				if _, err := fmt.Fprintf(conn, "%x\r\n%s\r\n", len(chunk), chunk); err != nil {
					return
				}
			}
			io.WriteString(conn, "0\r\n\r\n")
		}()
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	for range 3 {
		status, body := chunked("/metered", 256<<10)
		if status != http.StatusRequestEntityTooLarge || errCode(body) != "body_too_large" {
			t.Errorf("metered: %d %s, want 413 body_too_large", status, body)
		}
	}
	if got := h.Up.Take(); len(got) != 0 {
		t.Errorf("the upstream got %d oversize uploads on a metered route", len(got))
	}
	if status, body := chunked("/metered", 32<<10); status != http.StatusOK {
		t.Errorf("a body within max_body after the refusals: %d %s (the budget of 1 was spent by refusals?)", status, body)
	}
	h.Up.Take()

	status, body := chunked("/plain", 256<<10)
	if status != http.StatusRequestEntityTooLarge || errCode(body) != "body_too_large" {
		t.Errorf("plain: %d %s, want 413 body_too_large", status, body)
	}
	h.Up.Take()
	if m := metricsText(h); strings.Contains(m, "keyward_upstream_errors_total{") {
		t.Errorf("an oversize upload was counted as an upstream error:\n%s", grepLines(m, "keyward_upstream_errors_total"))
	}
}
