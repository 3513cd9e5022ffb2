package security_test

import (
	"net/http"
	"testing"
)

// TestFullConnectionTableAdmitsNewClients (issue 15.1): with every
// server.max_connections slot held by an idle keep-alive connection, a new
// client is served at once, not after idle_timeout, and the connection
// closed for it is the one idle the longest; the others keep working.
func TestFullConnectionTableAdmitsNewClients(t *testing.T) {
	up := newLoadUpstream(t)
	in := startInstance(t, loadConfig(up.srv.URL, "max_connections: 3, idle_timeout: 1h"))
	var idle []*loadClient
	for range 3 {
		c := dialLoad(t, in)
		if res, body := c.get("/fast"); res.StatusCode != 200 || body != "from /fast" {
			t.Fatalf("status %d, body %q", res.StatusCode, body)
		}
		idle = append(idle, c)
	}
	waitUntil(t, "three connections open", func() bool { return in.metric(t, "keyward_connections_open") == "keyward_connections_open 3" })

	fresh := dialLoad(t, in)
	if res, body := fresh.get("/fast"); res.StatusCode != 200 || body != "from /fast" {
		t.Fatalf("new client: status %d, body %q", res.StatusCode, body)
	}
	if !idle[0].closed() {
		t.Error("the longest-idle connection is still open")
	}
	for i, c := range idle[1:] {
		if res, _ := c.get("/fast"); res.StatusCode != 200 {
			t.Errorf("connection %d: status %d", i+2, res.StatusCode)
		}
	}
	if got := in.metric(t, "keyward_connections_reclaimed_total"); got != "keyward_connections_reclaimed_total 1" {
		t.Errorf("metric: %q", got)
	}
}

// TestWaitingConnectionsShow (issue 15.1): while every slot is busy and a
// new client waits, the gauges show it and /readyz answers 503 with the
// reason, so that a load balancer sends new clients elsewhere; once it is
// served, /readyz is 200 again.
func TestWaitingConnectionsShow(t *testing.T) {
	up := newLoadUpstream(t)
	in := startInstance(t, loadConfig(up.srv.URL, "max_connections: 2"))
	var busy []*loadClient
	for range 2 {
		c := dialLoad(t, in)
		c.send("/slow")
		<-up.arrived
		busy = append(busy, c)
	}
	waiting := dialLoad(t, in)
	waiting.send("/fast")
	waitUntil(t, "the gauge to show a waiting connection", func() bool {
		return in.metric(t, "keyward_connections_waiting") == "keyward_connections_waiting 1"
	})
	if got := in.metric(t, "keyward_connections_open"); got != "keyward_connections_open 2" {
		t.Errorf("metric: %q", got)
	}
	if code, reason := in.readyz(t); code != http.StatusServiceUnavailable || reason != "connections_waiting" {
		t.Errorf("/readyz while a client waits: %d %q; want 503 connections_waiting", code, reason)
	}

	up.unblock()
	closes := 0
	for _, c := range busy {
		res := c.head()
		if res.StatusCode != 200 {
			t.Errorf("busy connection: status %d", res.StatusCode)
		}
		if res.Close {
			closes++
		}
	}
	// A busy connection that ends its response while a client waits
	// closes, so that the client gets its slot.
	if closes == 0 {
		t.Error("no busy connection closed for the waiting client")
	}
	if res := waiting.head(); res.StatusCode != 200 {
		t.Errorf("waiting client: status %d", res.StatusCode)
	}
	waitUntil(t, "/readyz to be 200", func() bool { code, _ := in.readyz(t); return code == http.StatusOK })
	if got := in.metric(t, "keyward_connections_waiting"); got != "keyward_connections_waiting 0" {
		t.Errorf("metric: %q", got)
	}
}
