package security_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/gatewaytest"
)

// baseConfig is the config most classes attack: a static route, a route
// with two one-segment parameters, a rest route, a route with a query
// secret, each upstream path under a prefix so a climb is visible.
const baseConfig = `
secrets:
  github: { env: GITHUB_TOKEN }
  maps:   { file: maps_key }
cors:
  allow_origins: ["https://app.example.com", "https://*.example.com"]
routes:
  - name: my-repos
    path: /my-repos
    upstream: "{{UP}}/api/user/repos"
    query: { allow: [page] }
    headers:
      set: { Authorization: "Bearer {secret.github}", Accept: "application/vnd.github+json" }
  - name: issues
    path: /repos/{owner}/{repo}/issues
    methods: [GET, POST]
    upstream: "{{UP}}/api/repos/{owner}/{repo}/issues"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
  - name: files
    path: /files/{rest...}
    upstream: "{{UP}}/api/contents/{rest}"
    headers: { set: { Authorization: "Bearer {secret.github}" } }
  - name: geocode
    path: /geocode
    upstream: "{{UP}}/api/geocode"
    query: { allow: [address, page], set: { key: "{secret.maps}" } }
`

// bearer is the Authorization value the routes of baseConfig set.
const bearer = "Bearer " + gatewaytest.GitHub

// newHarness starts a gateway for yaml in front of a recording upstream
// and scans everything it emitted when the test ends.
func newHarness(t *testing.T, yaml string, up http.HandlerFunc) *gatewaytest.Harness {
	t.Helper()
	h := gatewaytest.New(t, yaml, up)
	t.Cleanup(h.Scan)
	return h
}

// errCode returns the code of a gateway JSON error body, or "".
func errCode(body string) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal([]byte(body), &e) != nil {
		return ""
	}
	return e.Error.Code
}

// refused asserts the client got status with the JSON error code (code ""
// for a refusal net/http writes itself, which is not JSON) and that the
// upstream received nothing. Under HTTP/2 a 400 may instead be a stream
// reset (Status 0): net/http's HTTP/2 server refuses a :path it cannot
// parse, or a header value with a control character, before any handler
// runs (a documented difference: no JSON body).
func refused(t *testing.T, h *gatewaytest.Harness, res gatewaytest.Response, status int, code string) {
	t.Helper()
	if status == http.StatusBadRequest && h2Reset(h, res) {
		if got := h.Up.Take(); len(got) != 0 {
			t.Errorf("upstream received %d requests, want none: %s", len(got), targets(got))
		}
		return
	}
	if res.Status != status {
		t.Errorf("status %d, want %d (body %q)", res.Status, status, res.Body)
	}
	if code != "" && errCode(res.Body) != code {
		t.Errorf("error code %q, want %q (body %q)", errCode(res.Body), code, res.Body)
	}
	if got := h.Up.Take(); len(got) != 0 {
		t.Errorf("upstream received %d requests, want none: %s", len(got), targets(got))
	}
}

// h2Reset reports whether res is HTTP/2's refusal at the protocol level:
// the stream reset before any response.
func h2Reset(h *gatewaytest.Harness, res gatewaytest.Response) bool {
	return h.GW.Engine == gatewaytest.H2 && res.Status == 0
}

// refusesConnectionHeaders reports whether the suite's engine refuses a
// request that carries connection-specific headers (Connection, Upgrade,
// Keep-Alive, Transfer-Encoding, TE other than "trailers") outright:
// HTTP/2 forbids them (RFC 9113 section 8.2.2), and net/http answers 400,
// where HTTP/1.1 drops them as hop-by-hop.
func refusesConnectionHeaders(h *gatewaytest.Harness) bool {
	return h.GW.Engine == gatewaytest.H2
}

// connectionRefused asserts net/http's HTTP/2 refusal of a
// connection-specific header: 400, and nothing upstream.
func connectionRefused(t *testing.T, h *gatewaytest.Harness, res gatewaytest.Response) {
	t.Helper()
	if res.Status != http.StatusBadRequest && !h2Reset(h, res) {
		t.Errorf("status %d, want HTTP/2's refusal of a connection-specific header (body %q)", res.Status, res.Body)
	}
	if got := h.Up.Take(); len(got) != 0 {
		t.Errorf("upstream received %d requests, want none: %s", len(got), targets(got))
	}
}

// targets lists what the upstream received by method and path only, so a
// failure message never prints a credential.
func targets(got []gatewaytest.Seen) string {
	var b strings.Builder
	for _, s := range got {
		b.WriteString(s.Method + " " + s.Path + "; ")
	}
	return b.String()
}

// only asserts the upstream received exactly one request and returns it.
func only(t *testing.T, h *gatewaytest.Harness) gatewaytest.Seen {
	t.Helper()
	got := h.Up.Take()
	if len(got) != 1 {
		t.Fatalf("upstream received %d requests, want 1: %s", len(got), targets(got))
	}
	return got[0]
}

// ok asserts a 200 and exactly one upstream request, which it returns.
func ok(t *testing.T, h *gatewaytest.Harness, res gatewaytest.Response) gatewaytest.Seen {
	t.Helper()
	if res.Status != http.StatusOK {
		h.Up.Take()
		t.Fatalf("status %d, want 200 (body %q)", res.Status, res.Body)
	}
	return only(t, h)
}

// authorizedOnce asserts the upstream request carries the route's
// credential exactly once.
func authorizedOnce(t *testing.T, s gatewaytest.Seen) {
	t.Helper()
	if got := s.Header["Authorization"]; len(got) != 1 || got[0] != bearer {
		t.Errorf("upstream Authorization %q, want exactly the configured one", redact(got))
	}
}

// redact hides canaries in values a failing test prints, so the failure
// message itself is not a leak in CI logs.
func redact(vs []string) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		for _, c := range gatewaytest.Canaries {
			for _, f := range gatewaytest.Forms(c) {
				v = strings.ReplaceAll(v, f, "<canary>")
			}
		}
		out[i] = v
	}
	return out
}

// live serves the harness's gateway on its own listener, the way
// internal/server does (header timeout and size limits from the config),
// and reports each time the gateway has finished a request, so a test
// can wait for the access-log line instead of sleeping.
type live struct {
	h    *gatewaytest.Harness
	gw   *gatewaytest.Server
	done chan struct{}
}

// serveLive serves the harness's gateway without the framing guard
// (internal/http1 alone), noting each finished request.
func serveLive(t *testing.T, h *gatewaytest.Harness) *live {
	t.Helper()
	return serveLiveOn(t, h, false)
}

// serveLiveOn is serveLive, behind the guard when guarded.
func serveLiveOn(t *testing.T, h *gatewaytest.Harness, guarded bool) *live {
	t.Helper()
	l := &live{h: h, done: make(chan struct{}, 64)}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { l.done <- struct{}{} }()
		h.Gateway.ServeHTTP(w, r)
	})
	serve := gatewaytest.ServeUnguarded
	if guarded {
		serve = gatewaytest.Serve
	}
	l.gw = serve(t, handler, h.Gateway.Settings(), slog.New(slog.NewJSONHandler(h.Logs, nil)))
	return l
}

// waitDone waits until the gateway has finished one request.
func (l *live) waitDone(t *testing.T) {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway never finished the request")
	}
}

// rawResult is what a raw exchange produced.
type rawResult struct {
	gatewaytest.Response
	// Closed reports that the server closed the connection after the
	// response (so nothing after it on the wire was read as a request).
	Closed bool
	// Next is a second response read from the same connection, if the
	// server answered one (a smuggled request would be).
	Next *gatewaytest.Response
}

// raw writes request bytes to the live server, reads one response and
// then whatever else the server sends until it closes or goes quiet.
func (l *live) raw(t *testing.T, method, request string) rawResult {
	t.Helper()
	return rawAt(t, l.h, l.gw, method, request)
}

// send is live.raw for a request whose HTTP/1.1 framing is not the
// point: under H2 it is sent as the HTTP/2 request it means (Closed and
// Next, HTTP/1.1 notions, stay unset).
func (l *live) send(t *testing.T, method, request string) rawResult {
	t.Helper()
	return sendTo(t, l.h, l.gw, method, request)
}

// sendTo is live.send against any gateway, recording into h.
func sendTo(t *testing.T, h *gatewaytest.Harness, gw *gatewaytest.Server, method, request string) rawResult {
	t.Helper()
	if gw.Engine != gatewaytest.H2 {
		return rawAt(t, h, gw, method, request)
	}
	r, err := gatewaytest.ParseRawRequest(request)
	if err != nil {
		t.Fatal(err)
	}
	res, err := gw.Exchange(r)
	if err != nil && res.Status == 0 && !strings.HasPrefix(err.Error(), "stream reset") && !strings.HasPrefix(err.Error(), "GOAWAY") {
		t.Fatalf("%s: %v", method, err)
	}
	h.Record(&http.Response{Status: strconv.Itoa(res.Status), Header: res.Header}, []byte(res.Body))
	return rawResult{Response: res}
}

// rawAt is live.raw against any gateway, recording into h. It writes
// HTTP/1.1 bytes: under H2 the test skips (see Server.DialH1).
func rawAt(t *testing.T, h *gatewaytest.Harness, gw *gatewaytest.Server, method, request string) rawResult {
	t.Helper()
	conn := gw.DialH1(t)
	defer conn.Close()
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	// A deadline, not a sleep: it bounds a server that keeps the
	// connection open after answering.
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%q: reading the response: %v", request, err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	h.Record(res, body)
	out := rawResult{Response: gatewaytest.Response{Status: res.StatusCode, Header: res.Header, Body: string(body)}}
	_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := br.Peek(1); err != nil {
		var ne net.Error
		out.Closed = !(errors.As(err, &ne) && ne.Timeout())
		return out
	}
	next, err := http.ReadResponse(br, nil)
	if err == nil {
		nb, _ := io.ReadAll(next.Body)
		next.Body.Close()
		h.Record(next, nb)
		out.Next = &gatewaytest.Response{Status: next.StatusCode, Header: next.Header, Body: string(nb)}
	}
	return out
}
