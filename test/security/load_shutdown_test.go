package security_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/cli"
)

// TestShutdownEndsStreamsAndExitsZero (issue 15.8): `keyward serve` with
// an event stream open when SIGTERM comes drains until
// server.shutdown_timeout, then ends the stream cleanly (the chunked body
// terminated, not a reset), logs that it ended a request, and exits 0:
// a drain that runs out is a routine stop. Before, the stream was cut
// and the exit code was 1.
func TestShutdownEndsStreamsAndExitsZero(t *testing.T) {
	up := newLoadUpstream(t)
	path := filepath.Join(t.TempDir(), "keyward.yaml")
	if err := os.WriteFile(path, []byte(loadConfig(up.srv.URL, "shutdown_timeout: 1s")), 0o644); err != nil {
		t.Fatal(err)
	}
	stderr := &syncLog{}
	ctx, stop := context.WithCancel(context.Background()) // what SIGTERM cancels in cmd/keyward
	exit := make(chan int, 1)
	go func() { exit <- cli.Run(ctx, []string{"serve", "-c", path}, io.Discard, stderr) }()
	t.Cleanup(func() {
		stop()
		select {
		case <-exit:
		default:
		}
	})
	var addr string
	waitUntil(t, "keyward to serve", func() bool {
		addr = servingAddr(stderr.String())
		return addr != ""
	})

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /events HTTP/1.1\r\nHost: gw.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(2 * loadSafety))
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, type %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	first := make([]byte, len("data: tick\n\n"))
	if _, err := io.ReadFull(res.Body, first); err != nil || string(first) != "data: tick\n\n" {
		t.Fatalf("first event %q: %v", first, err)
	}

	started := time.Now()
	stop()
	rest, err := io.ReadAll(res.Body)
	if err != nil {
		t.Errorf("the stream ended with %v (after %q); want a clean end of the chunked body", err, rest)
	}
	if d := time.Since(started); d < 500*time.Millisecond {
		t.Errorf("the stream ended after %v; want it to run through the drain (shutdown_timeout: 1s)", d)
	}
	if n, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("after the stream: read %q, %v; want the connection closed (EOF)", n, err)
	}

	select {
	case code := <-exit:
		if code != 0 {
			t.Errorf("exit code %d, want 0\n%s", code, stderr.String())
		}
	case <-time.After(2 * loadSafety):
		t.Fatal("keyward serve did not return")
	}
	if d := time.Since(started); d > 1500*time.Millisecond {
		t.Errorf("shutdown took %v with shutdown_timeout: 1s", d)
	}
	logs := stderr.String()
	if !strings.Contains(logs, `"msg":"shutdown timeout reached; requests still running were ended","requests":1`) {
		t.Errorf("the log does not say the drain ended one request:\n%s", logs)
	}
	// The stream's access-log line says it was cut by the shutdown: not a
	// client that left (499), not an upstream fault.
	if !strings.Contains(logs, `"error":"shutdown"`) || strings.Contains(logs, `"status":499`) {
		t.Errorf("the cut stream is not logged as ended by the shutdown:\n%s", logs)
	}
	select {
	case <-up.stopped: // the upstream request was cancelled too
	case <-time.After(loadSafety):
		t.Error("the upstream stream was not stopped")
	}
}

// servingAddr finds the public address in the "serving" log line.
func servingAddr(logs string) string {
	for line := range strings.SplitSeq(logs, "\n") {
		var v struct{ Msg, Listen string }
		if json.Unmarshal([]byte(line), &v) == nil && v.Msg == "serving" {
			return v.Listen
		}
	}
	return ""
}
