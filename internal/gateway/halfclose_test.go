package gateway_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/gatewaytest"
)

const halfCloseConfig = `
routes:
  - name: slow
    path: /slow
    upstream: "{{UP}}/slow"
  - name: small
    path: /small
    methods: [POST]
    max_body: 1024
    upstream: "{{UP}}/small"
`

// TestHalfClosedClientGetsNoEmpty200: a client that half-closes after
// sending its request (printf ... | nc -N) is taken for gone, as nginx
// does: the upstream call is cancelled and the connection is cut. It must
// never be answered with a clean, empty 200 in place of the upstream's
// answer (found in review: the gateway wrote nothing, the server then
// completed the response).
func TestHalfClosedClientGetsNoEmpty200(t *testing.T) {
	h := gatewaytest.New(t, halfCloseConfig, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(time.Second):
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "the real answer")
	})
	conn, err := net.Dial("tcp", h.GW.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /slow HTTP/1.1\r\nHost: gw.test\r\n\r\n")
	conn.(*net.TCPConn).CloseWrite()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return // cut: the client knows it has no answer
	}
	b, err := io.ReadAll(res.Body)
	if err == nil && res.StatusCode == http.StatusOK && string(b) != "the real answer" {
		t.Errorf("client got a clean 200 with body %q, not the upstream's answer", b)
	}
}

// TestUndrainableBodyRefusalSaysClose: the 413 for a declared body over
// max_body (1 MiB sent, more than the server drains) carries
// Connection: close, since the server closes the connection after it
// (RFC 9112 9.6); found in review.
func TestUndrainableBodyRefusalSaysClose(t *testing.T) {
	h := gatewaytest.New(t, halfCloseConfig, func(w http.ResponseWriter, r *http.Request) {})
	conn, err := net.Dial("tcp", h.GW.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const size = 1 << 20
	fmt.Fprintf(conn, "POST /small HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n", size)
	go conn.Write(make([]byte, size))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading: %v", err)
	}
	if res.StatusCode != http.StatusRequestEntityTooLarge || !res.Close {
		t.Errorf("status %d, Connection: close %v; want 413 and close", res.StatusCode, res.Close)
	}
}
