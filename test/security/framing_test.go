package security_test

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/gatewaytest"
	"github.com/keyward/keyward/internal/server"
)

// smuggled is a complete second request hidden after an ambiguous body. If
// any framing let it through, the upstream would receive a request for
// /api/contents/smuggled.
const smuggled = "GET /files/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n"

// framingCase is one request sent as raw bytes on its own connection.
type framingCase struct {
	name    string
	method  string // for reading the response
	request string
	status  int
	code    string
	// guardOnly marks the cases where net/http alone accepts the bytes
	// (it frames them one way, a front end might frame them another) and
	// only listener.Guard refuses them.
	guardOnly bool
}

var framingCases = []framingCase{
	{name: "CL.TE: Content-Length and Transfer-Encoding together", method: "POST",
		request: "POST /repos/a/b/issues HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
		status:  400, code: "bad_framing", guardOnly: true},
	{name: "TE.CL: Transfer-Encoding before Content-Length", method: "POST",
		request: "POST /repos/a/b/issues HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 52\r\n\r\n0\r\n\r\n" + smuggled,
		status:  400, code: "bad_framing", guardOnly: true},
	{name: "conflicting Content-Length headers", method: "POST",
		request: "POST /repos/a/b/issues HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nContent-Length: 52\r\n\r\nhello" + smuggled,
		status:  400, code: "bad_framing"},
	{name: "Content-Length list", method: "POST",
		request: "POST /repos/a/b/issues HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5, 52\r\n\r\nhello" + smuggled,
		status:  400, code: "bad_framing"},
	{name: "signed Content-Length", method: "POST",
		request: "POST /repos/a/b/issues HTTP/1.1\r\nHost: gw.test\r\nContent-Length: +5\r\n\r\nhello",
		status:  400, code: "bad_framing"},
	{name: "Transfer-Encoding list chunked, identity", method: "POST",
		request: "POST /repos/a/b/issues HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
		status:  400, code: "bad_framing", guardOnly: true},
	{name: "Transfer-Encoding xchunked", method: "POST",
		request: "POST /repos/a/b/issues HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
		status:  400, code: "bad_framing", guardOnly: true},
	{name: "Transfer-Encoding with a tab before chunked", method: "POST",
		request: "POST /repos/a/b/issues HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding:\tchunked\r\nContent-Length: 52\r\n\r\n0\r\n\r\n" + smuggled,
		status:  400, code: "bad_framing", guardOnly: true},
	{name: "space between Transfer-Encoding and colon", method: "POST",
		request: "POST /repos/a/b/issues HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
		status:  400, code: "bad_framing"},
	{name: "repeated Transfer-Encoding headers", method: "POST",
		request: "POST /repos/a/b/issues HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		status:  400, code: "bad_framing", guardOnly: true},
	{name: "Transfer-Encoding in HTTP/1.0", method: "POST",
		request: "POST /repos/a/b/issues HTTP/1.0\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
		status:  400, code: "bad_framing", guardOnly: true},
	{name: "obs-fold continues a header on the next line", method: "GET",
		request: "GET /my-repos HTTP/1.1\r\nHost: gw.test\r\nAccept: a\r\n Transfer-Encoding: chunked\r\n\r\n",
		status:  400, code: "bad_framing", guardOnly: true},
	{name: "underscore header name (X_Forwarded_For)", method: "GET",
		request: "GET /my-repos HTTP/1.1\r\nHost: gw.test\r\nX_Forwarded_For: 127.0.0.1\r\n\r\n",
		status:  400, code: "bad_framing", guardOnly: true},
	{name: "bare LF line endings", method: "GET",
		request: "GET /my-repos HTTP/1.1\nHost: gw.test\n\n",
		status:  400, code: "bad_framing", guardOnly: true},
	{name: "NUL in a header value", method: "GET",
		request: "GET /my-repos HTTP/1.1\r\nHost: gw.test\r\nAccept: a\x00b\r\n\r\n",
		status:  400, code: "bad_framing"},
	{name: "two Host headers", method: "GET",
		request: "GET /my-repos HTTP/1.1\r\nHost: gw.test\r\nHost: evil.test\r\n\r\n",
		status:  400, code: "bad_framing"},
	{name: "HTTP/2 prior-knowledge preface", method: "GET",
		request: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		status:  400, code: "bad_framing", guardOnly: true},
	{name: "CONNECT tunnels to another host", method: "CONNECT",
		request: "CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n",
		status:  400, code: "bad_framing", guardOnly: true},
	{name: "TRACE reflects the request", method: "TRACE",
		request: "TRACE /my-repos HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
		status:  400, code: "bad_request"},
	{name: "absolute-form target names another host", method: "GET",
		request: "GET http://evil.test/my-repos HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
		status:  400, code: "bad_request"},
}

// TestFramingGuarded sends each ambiguous request over raw TCP to the
// gateway behind listener.Guard, as keyward serves it: the answer is a 400
// (from the guard, with the connection closed, or from the gateway for
// odd methods and targets), the upstream receives nothing, and nothing
// after the ambiguity is read as another request.
func TestFramingGuarded(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	l := serveLiveOn(t, h, true)
	for _, tt := range framingCases {
		t.Run(tt.name, func(t *testing.T) {
			res := l.raw(t, tt.method, tt.request)
			checkFraming(t, h, res, tt)
			if !res.Closed {
				t.Errorf("connection left open after a refused request")
			}
		})
	}
	t.Run("valid pipelined requests still pass the guard", func(t *testing.T) {
		req := "POST /repos/a/b/issues HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" +
			"GET /my-repos HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
		res := l.raw(t, "POST", req)
		if res.Status != 200 || res.Next == nil || res.Next.Status != 200 {
			t.Fatalf("statuses %d, %+v; want 200 twice", res.Status, res.Next)
		}
		got := h.Up.Take()
		if len(got) != 2 || got[0].Body != "{}" || got[0].Path != "/api/repos/a/b/issues" || got[1].Path != "/api/user/repos" {
			t.Errorf("upstream got %s", targets(got))
		}
	})
}

// TestFramingUnguarded runs the cases the HTTP/1.1 server refuses by
// itself (internal/http1: http.ReadRequest and the checks net/http's
// server adds) against an unguarded listener, so it is clear which
// defences depend on listener.Guard being wired in (those marked
// guardOnly).
func TestFramingUnguarded(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	l := serveLive(t, h)
	for _, tt := range framingCases {
		if tt.guardOnly {
			continue
		}
		t.Run(tt.name, func(t *testing.T) {
			res := l.raw(t, tt.method, tt.request)
			if tt.code == "bad_framing" {
				tt.code = "" // the server's own 400 (bad_request), not the guard's
			}
			checkFraming(t, h, res, tt)
		})
	}
	t.Run("CL.TE without the guard: http.ReadRequest frames by Transfer-Encoding, the smuggled request is routed like any other", func(t *testing.T) {
		if l.gw.Engine.TLSServed() {
			t.Skip("the guard cannot be taken out of a TLS listener: there is no unguarded case to show")
		}
		res := l.raw(t, "POST", framingCases[0].request)
		if res.Status != 200 {
			t.Errorf("status %d", res.Status)
		}
		for _, s := range h.Up.Take() {
			if !strings.HasPrefix(s.Path, "/api/") {
				t.Errorf("upstream reached outside the routes: %q", s.Path)
			}
		}
	})
}

// TestFramingOptionsAsterisk: "OPTIONS *" never reaches an upstream, even
// without the guard (net/http's server would answer it itself, 200 and
// empty, unless told not to; internal/http1 passes it to the gateway,
// which refuses it).
func TestFramingOptionsAsterisk(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	l := serveLive(t, h)
	res := l.send(t, "OPTIONS", "OPTIONS * HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
	if res.Status != 400 && res.Status != 200 || res.Body != "" && errCode(res.Body) != "bad_request" {
		t.Errorf("status %d body %q", res.Status, res.Body)
	}
	if got := h.Up.Take(); len(got) != 0 {
		t.Errorf("upstream received %s", targets(got))
	}
	ok(t, h, h.Get("/my-repos", nil)) // a metric for the scan
}

// serveKeyward runs baseConfig through internal/server as `keyward serve`
// runs it (server.New, Listen, Serve), configured for the suite's engine
// (server.engine, tls with certificate files), and returns it.
func serveKeyward(t *testing.T, h *gatewaytest.Harness) *gatewaytest.Server {
	t.Helper()
	dir := t.TempDir()
	e := gatewaytest.CurrentEngine()
	field, top := gatewaytest.EngineConfig(t, e, dir)
	cfg := "listen: 127.0.0.1:0\n" + top + "server: { " + field + " }\n" + strings.ReplaceAll(baseConfig, "{{UP}}", h.Up.Server.URL)
	if err := os.WriteFile(filepath.Join(dir, "keyward.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "maps_key"), []byte(gatewaytest.Maps+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(filepath.Join(dir, "keyward.yaml"), gateway.Options{Getenv: gatewaytest.Getenv, Logger: slog.New(slog.NewJSONHandler(h.Logs, nil)), Metrics: h.Metrics})
	if err != nil {
		t.Fatal(err)
	}
	public, admin, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, public, admin) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return gatewaytest.Remote(t, e, public.Addr().String())
}

// TestFramingServedByKeyward: the listener `keyward serve` opens refuses
// the cases only listener.Guard catches, so the guard is wired in.
func TestFramingServedByKeyward(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	gw := serveKeyward(t, h)
	for _, tt := range framingCases {
		if !tt.guardOnly {
			continue
		}
		t.Run(tt.name, func(t *testing.T) {
			checkFraming(t, h, rawAt(t, h, gw, tt.method, tt.request), tt)
		})
	}
	ok(t, h, h.Get("/my-repos", nil)) // a metric for the scan
}

// TestOptionsAsteriskRefusedByKeyward: as served by keyward, "OPTIONS *"
// gets the JSON 400 the README promises.
func TestOptionsAsteriskRefusedByKeyward(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	gw := serveKeyward(t, h)
	res := sendTo(t, h, gw, "OPTIONS", "OPTIONS * HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
	refused(t, h, res.Response, http.StatusBadRequest, "bad_request")
	ok(t, h, h.Get("/my-repos", nil)) // a metric for the scan
}

func checkFraming(t *testing.T, h *gatewaytest.Harness, res rawResult, tt framingCase) {
	t.Helper()
	refused(t, h, res.Response, tt.status, tt.code)
	if res.Next != nil {
		t.Errorf("a second response followed on the same connection: %d %q", res.Next.Status, res.Next.Body)
	}
	if res.Status == http.StatusOK {
		t.Errorf("ambiguous request served")
	}
}
