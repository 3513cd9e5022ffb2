package http1_test

import (
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/keyward/keyward/internal/abort"
	"github.com/keyward/keyward/internal/http1"
)

// TestGuardContracts: the framing guard's connections offer the methods
// the server looks for. Without WaitRead an idle connection would hold a
// read buffer; without WatchRead a bad pipelined head would cancel the
// request before it (see listener's TestPipelinedRefusalWaitsForRunningHandler
// for the behaviour).
func TestGuardContracts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := guard(ln)
	defer g.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := g.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if waits, watches := http1.Contracts(c); !waits || !watches {
		t.Errorf("the guard's %T: WaitRead %v, WatchRead %v; want both", c, waits, watches)
	}
}

// TestAbortSupported: handlers learn from internal/abort that the server
// turns panic(http.ErrAbortHandler) into a cut connection.
func TestAbortSupported(t *testing.T) {
	got := make(chan bool, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- abort.Supported(r.Context())
	})
	ts := start(t, &http1.Server{Handler: h}, guard)
	c := dial(t, ts.addr)
	c.send(get("/"))
	res, _ := c.roundTrip("GET")
	_, _ = io.Copy(io.Discard, res.Body)
	if !<-got {
		t.Error("abort.Supported = false in a request's context; want true")
	}
}
