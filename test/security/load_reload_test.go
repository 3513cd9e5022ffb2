package security_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestReloadAppliesServerSettings (issue 15.4): a reload that lowers
// server.max_connections, idle_timeout, write_timeout and max_headers
// applies them without a restart. The lowered limit closes the idle
// connection over it but not the busy one, which finishes; a new client
// waits until the busy one is done; new connections get the new idle and
// write timeouts and header limit.
func TestReloadAppliesServerSettings(t *testing.T) {
	up := newLoadUpstream(t)
	in := startInstance(t, loadConfig(up.srv.URL, "max_connections: 100, idle_timeout: 1h, write_timeout: 30s"))
	idle := dialLoad(t, in)
	if res, _ := idle.get("/fast"); res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	busy := dialLoad(t, in)
	busy.send("/slow")
	<-up.arrived

	in.reload(t, loadConfig(up.srv.URL, "max_connections: 1, idle_timeout: 200ms, write_timeout: 300ms, max_headers: 10"))
	if !strings.Contains(in.logs.String(), "server settings changed") {
		t.Errorf("the reload did not log the server settings it changed:\n%s", in.logs.String())
	}
	if !idle.closed() {
		t.Fatal("the idle connection over the lowered limit is still open")
	}
	waiting := dialLoad(t, in)
	waiting.send("/fast")
	waitUntil(t, "the new client to wait for the busy connection", func() bool {
		code, _ := in.readyz(t)
		return code == http.StatusServiceUnavailable
	})

	up.unblock()
	if res := busy.head(); res.StatusCode != 200 {
		t.Errorf("the busy connection's request: status %d; want it finished, not cut", res.StatusCode)
	}
	res := waiting.head()
	if b, _ := io.ReadAll(res.Body); res.StatusCode != 200 || string(b) != "from /fast" {
		t.Fatalf("the waiting client: status %d, body %q", res.StatusCode, b)
	}
	// The new idle timeout: closed 200ms after its response, not in an hour.
	if !waiting.closed() {
		t.Fatal("a new connection outlived the reloaded idle_timeout")
	}

	// The new header limit, for a new connection.
	c := dialLoad(t, in)
	var hdrs strings.Builder
	for i := range 12 {
		fmt.Fprintf(&hdrs, "X-H%d: v\r\n", i)
	}
	if _, err := io.WriteString(c.conn, "GET /fast HTTP/1.1\r\nHost: gw.test\r\n"+hdrs.String()+"\r\n"); err != nil {
		t.Fatal(err)
	}
	if res := c.head(); res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("13 header lines after max_headers: 10: status %d, want 431", res.StatusCode)
	} else {
		_, _ = io.ReadAll(res.Body)
	}
	if !c.closed() {
		t.Fatal("the refused connection is still open")
	}

	// The new write timeout: a client that never reads a download is cut,
	// and its upstream request stopped, within a second, not 30.
	stalled := dialLoad(t, in)
	start := time.Now()
	stalled.send("/download")
	if got := <-up.arrived; got != "/download" {
		t.Fatalf("upstream saw %s", got)
	}
	select {
	case <-up.stopped:
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("the stalled download was cut after %v; want about 300-375ms", d)
		}
	case <-time.After(loadSafety):
		t.Fatal("the stalled download was not cut by the reloaded write_timeout")
	}
}
