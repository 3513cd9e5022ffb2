package gatewaytest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/keyward/keyward/internal/certs/certtest"
)

// Engine is how the harness serves the gateway: which server, over which
// protocol. The security suite runs under each (see Engines), so that a
// defence that holds on one and not another shows up.
type Engine string

// The engines.
const (
	// Keyward is plain HTTP/1.1: the framing guard and internal/http1,
	// keyward's default.
	Keyward Engine = "keyward"
	// Stdlib is plain HTTP/1.1: the framing guard and net/http's server
	// (server.engine: stdlib).
	Stdlib Engine = "stdlib"
	// TLS is HTTP/1.1 over TLS: the guard over the decrypted stream and
	// internal/http1.
	TLS Engine = "tls"
	// H2 is HTTP/2 over TLS, net/http's HTTP/2 server.
	H2 Engine = "h2"
)

// Engines are every engine, in the order a suite runs them.
var Engines = []Engine{Keyward, Stdlib, TLS, H2}

var (
	engineMu sync.Mutex
	engine   = Keyward
)

// SetEngine makes the harness serve every gateway it starts from now on
// with e (a TestMain sets it before each run of the suite).
func SetEngine(e Engine) {
	engineMu.Lock()
	defer engineMu.Unlock()
	engine = e
}

// CurrentEngine is the engine the harness serves with.
func CurrentEngine() Engine {
	engineMu.Lock()
	defer engineMu.Unlock()
	return engine
}

// EnginesFromEnv returns the engines a suite should run: those named in
// KEYWARD_ENGINES (comma-separated, e.g. "h2" to debug one), else all.
func EnginesFromEnv() ([]Engine, error) {
	v := os.Getenv("KEYWARD_ENGINES")
	if v == "" {
		return Engines, nil
	}
	var out []Engine
	for _, name := range strings.Split(v, ",") {
		e := Engine(strings.TrimSpace(name))
		switch e {
		case Keyward, Stdlib, TLS, H2:
			out = append(out, e)
		default:
			return nil, fmt.Errorf("KEYWARD_ENGINES: unknown engine %q (want %v)", name, Engines)
		}
	}
	return out, nil
}

// TLSServed reports whether the engine serves over TLS.
func (e Engine) TLSServed() bool { return e == TLS || e == H2 }

// settingsEngine is the server.engine value the engine serves with.
func (e Engine) settingsEngine() string {
	if e == Stdlib {
		return "stdlib"
	}
	return "keyward"
}

// The test CA and the gateway's certificate, made once per process: for
// 127.0.0.1, localhost and the host names the tests send.
var (
	pkiOnce sync.Once
	testCA  *certtest.CA
	gwCert  *certtest.Leaf
)

func pki(t testing.TB) (*certtest.CA, *certtest.Leaf) {
	pkiOnce.Do(func() {
		testCA = certtest.NewCA(t)
		gwCert = testCA.Leaf(t, certtest.Options{Names: []string{"gw.test", "localhost", "127.0.0.1", "::1"}})
	})
	if testCA == nil {
		t.Fatal("the test CA could not be made")
	}
	return testCA, gwCert
}

// CA is the certificate authority that signed the harness's server
// certificates, for a client of a TLS engine to trust.
func CA(t testing.TB) *certtest.CA {
	ca, _ := pki(t)
	return ca
}

// Client returns an HTTP client for the server: it trusts the server's
// certificate and speaks its engine's protocol (HTTP/2 under H2, HTTP/1.1
// otherwise). It follows no redirects.
func (s *Server) Client() *http.Client { return s.client }

func newClient(e Engine, ca *certtest.CA) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	var protos http.Protocols
	switch e {
	case H2:
		protos.SetHTTP2(true)
		tr.TLSClientConfig = ca.ClientConfig()
	case TLS:
		protos.SetHTTP1(true)
		tr.TLSClientConfig = ca.ClientConfig()
	default:
		protos.SetHTTP1(true)
	}
	tr.Protocols = &protos
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// DialH1 opens a connection that speaks HTTP/1.1 to the server: plain TCP,
// or TLS that chose http/1.1 by ALPN. Under H2 the test is skipped: it
// writes HTTP/1.1 bytes, whose framing HTTP/2 replaces (the TLS engine
// runs it over TLS; h2_test.go proves HTTP/2's own framing defences).
func (s *Server) DialH1(t testing.TB) net.Conn {
	t.Helper()
	if s.Engine == H2 {
		t.Skip("HTTP/1.1 bytes on the wire: run under the keyward, stdlib and tls engines; HTTP/2 framing has its own tests")
	}
	// The handshake is left to the first read or write: a connection the
	// server holds at its connection limit waits there, as in plaintext.
	c, err := net.DialTimeout("tcp", s.Addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if s.Engine.TLSServed() {
		c = tls.Client(c, s.tlsConfig("http/1.1"))
	}
	return c
}

func (s *Server) tlsConfig(protos ...string) *tls.Config {
	cfg := s.ca.ClientConfig(protos...)
	cfg.ServerName = "gw.test"
	return cfg
}

// dial connects, with TLS under a TLS engine, offering protos by ALPN,
// and completes the handshake.
func (s *Server) dial(protos ...string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", s.Addr, 10*time.Second)
	if err != nil || !s.Engine.TLSServed() {
		return c, err
	}
	tc := tls.Client(c, s.tlsConfig(protos...))
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	_ = tc.SetDeadline(time.Time{})
	return tc, nil
}

// RawRequest is a request written as the client means it, sent on its own
// connection by Server.Exchange: as bytes under HTTP/1.1, as HEADERS and
// DATA frames under HTTP/2.
type RawRequest struct {
	Method, Target string
	Header         http.Header // sent as written: names and values unchecked
	Body           string
}

// Exchange sends r on a new connection and returns the response. Under
// HTTP/1.1 the request is written with Host: gw.test and Connection:
// close; under HTTP/2 its target is the :path as written and gw.test the
// :authority (a Host header in r.Header replaces it). Status 0 means the
// server refused the request without a response: Err says how (an
// RST_STREAM or GOAWAY and its error code, under HTTP/2).
func (s *Server) Exchange(r RawRequest) (Response, error) {
	if s.Engine == H2 {
		return s.exchangeH2(r)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n", r.Method, r.Target)
	for k, vs := range r.Header {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	if r.Body != "" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(r.Body))
	}
	b.WriteString("\r\n" + r.Body)
	return s.exchangeBytes(r.Method, b.String())
}

// exchangeBytes writes an HTTP/1.1 request as it is and reads the
// response.
func (s *Server) exchangeBytes(method, request string) (Response, error) {
	conn, err := s.dial("http/1.1")
	if err != nil {
		return Response{}, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, request); err != nil {
		return Response{}, err
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		return Response{}, fmt.Errorf("%q: %w", request, err)
	}
	defer res.Body.Close()
	rb, err := io.ReadAll(res.Body)
	return Response{Status: res.StatusCode, Header: res.Header, Body: string(rb)}, err
}

// ParseRawRequest splits HTTP/1.1 request bytes into a RawRequest, for
// sending them under HTTP/2: the request line's method and target, each
// header line as written, the body after the empty line. Content-Length,
// Transfer-Encoding and Connection are dropped: HTTP/2 frames the body
// itself, and refuses connection-specific headers outright (h2_test.go).
func ParseRawRequest(request string) (RawRequest, error) {
	head, body, ok := strings.Cut(request, "\r\n\r\n")
	if !ok {
		return RawRequest{}, errors.New("no end of head")
	}
	lines := strings.Split(head, "\r\n")
	parts := strings.SplitN(lines[0], " ", 3)
	if len(parts) != 3 {
		return RawRequest{}, fmt.Errorf("request line %q", lines[0])
	}
	r := RawRequest{Method: parts[0], Target: parts[1], Header: http.Header{}, Body: body}
	for _, l := range lines[1:] {
		name, value, ok := strings.Cut(l, ":")
		if !ok {
			return RawRequest{}, fmt.Errorf("header line %q", l)
		}
		value = strings.TrimSpace(value)
		switch textproto.CanonicalMIMEHeaderKey(name) {
		case "Content-Length", "Connection":
			continue
		case "Transfer-Encoding":
			if strings.EqualFold(value, "chunked") {
				r.Body = dechunk(body)
			}
			continue
		}
		r.Header[name] = append(r.Header[name], value)
	}
	return r, nil
}

// dechunk decodes a well-formed chunked body (a test's own).
func dechunk(body string) string {
	var out strings.Builder
	br := bufio.NewReader(strings.NewReader(body))
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return out.String()
		}
		n, err := strconv.ParseInt(strings.TrimSpace(strings.SplitN(line, ";", 2)[0]), 16, 64)
		if err != nil || n == 0 {
			return out.String()
		}
		chunk := make([]byte, n)
		if _, err := io.ReadFull(br, chunk); err != nil {
			return out.String()
		}
		out.Write(chunk)
		_, _ = br.ReadString('\n')
	}
}

// exchangeH2 sends r as HTTP/2 frames on a new connection: the
// connection preface and SETTINGS, one HEADERS frame (with CONTINUATION
// frames if it is large) and the body in DATA frames, then reads frames
// until stream 1 ends.
func (s *Server) exchangeH2(r RawRequest) (Response, error) {
	conn, err := s.dial("h2")
	if err != nil {
		return Response{}, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := NewH2Conn(conn)
	if err := c.Handshake(); err != nil {
		return Response{}, err
	}
	authority := "gw.test"
	fields := []hpack.HeaderField{{Name: ":method", Value: r.Method}, {Name: ":scheme", Value: "https"}, {Name: ":path", Value: r.Target}}
	var rest []hpack.HeaderField
	for k, vs := range r.Header {
		if strings.EqualFold(k, "Host") {
			authority = vs[0]
			continue
		}
		for _, v := range vs {
			rest = append(rest, hpack.HeaderField{Name: strings.ToLower(k), Value: v})
		}
	}
	fields = append(fields, hpack.HeaderField{Name: ":authority", Value: authority})
	if r.Body != "" {
		rest = append(rest, hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(len(r.Body))})
	}
	if err := c.WriteHeaders(1, r.Body == "", append(fields, rest...)...); err != nil {
		return Response{}, err
	}
	if r.Body != "" {
		if err := c.WriteData(1, []byte(r.Body), true); err != nil {
			return Response{}, err
		}
	}
	return c.ReadResponse(1)
}

// H2Conn is a client's HTTP/2 connection written frame by frame, for
// tests that send what a well-behaved client never would.
type H2Conn struct {
	Conn   net.Conn
	Framer *http2.Framer
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	// Settings are the server's SETTINGS, once Handshake has read them.
	Settings map[http2.SettingID]uint32
}

// NewH2Conn wraps an established TLS connection that negotiated h2.
func NewH2Conn(c net.Conn) *H2Conn {
	h := &H2Conn{Conn: c, Framer: http2.NewFramer(c, c), Settings: map[http2.SettingID]uint32{}}
	h.Framer.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.Framer.MaxHeaderListSize = 16 << 20
	h.enc = hpack.NewEncoder(&h.encBuf)
	return h
}

// Handshake sends the client preface and empty SETTINGS, then reads the
// server's SETTINGS and acknowledges them.
func (h *H2Conn) Handshake() error {
	if _, err := io.WriteString(h.Conn, http2.ClientPreface); err != nil {
		return err
	}
	if err := h.Framer.WriteSettings(); err != nil {
		return err
	}
	for {
		f, err := h.Framer.ReadFrame()
		if err != nil {
			return fmt.Errorf("reading the server's SETTINGS: %w", err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			_ = sf.ForeachSetting(func(s http2.Setting) error {
				h.Settings[s.ID] = s.Val
				return nil
			})
			return h.Framer.WriteSettingsAck()
		}
	}
}

// EncodeHeaders returns fields as one HPACK header block.
func (h *H2Conn) EncodeHeaders(fields ...hpack.HeaderField) []byte {
	h.encBuf.Reset()
	for _, f := range fields {
		_ = h.enc.WriteField(f)
	}
	return append([]byte(nil), h.encBuf.Bytes()...)
}

// WriteHeaders sends fields on stream as HEADERS and, past 16 KiB,
// CONTINUATION frames.
func (h *H2Conn) WriteHeaders(stream uint32, endStream bool, fields ...hpack.HeaderField) error {
	block := h.EncodeHeaders(fields...)
	const max = 16 << 10
	first := block[:min(len(block), max)]
	block = block[len(first):]
	if err := h.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: first,
		EndStream: endStream, EndHeaders: len(block) == 0}); err != nil {
		return err
	}
	for len(block) > 0 {
		part := block[:min(len(block), max)]
		block = block[len(part):]
		if err := h.Framer.WriteContinuation(stream, len(block) == 0, part); err != nil {
			return err
		}
	}
	return nil
}

// WriteData sends data on stream in frames of at most 16 KiB.
func (h *H2Conn) WriteData(stream uint32, data []byte, endStream bool) error {
	for {
		part := data[:min(len(data), 16<<10)]
		data = data[len(part):]
		if err := h.Framer.WriteData(stream, endStream && len(data) == 0, part); err != nil {
			return err
		}
		if len(data) == 0 {
			return nil
		}
	}
}

// ReadResponse reads frames until stream ends and returns its response,
// giving back flow-control credit for each DATA frame. A stream reset or
// a GOAWAY before the response ends is returned as an error (with the
// response so far).
func (h *H2Conn) ReadResponse(stream uint32) (Response, error) {
	var res Response
	var body bytes.Buffer
	for {
		f, err := h.Framer.ReadFrame()
		if err != nil {
			return res, fmt.Errorf("reading frames: %w", err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID != stream {
				continue
			}
			if res.Status == 0 || res.Status/100 == 1 {
				res.Header = http.Header{}
				for _, hf := range f.RegularFields() {
					k := textproto.CanonicalMIMEHeaderKey(hf.Name)
					res.Header[k] = append(res.Header[k], hf.Value)
				}
				res.Status, _ = strconv.Atoi(f.PseudoValue("status"))
			} else {
				for _, hf := range f.RegularFields() { // trailers
					k := textproto.CanonicalMIMEHeaderKey(hf.Name)
					res.Header[k] = append(res.Header[k], hf.Value)
				}
			}
			if f.StreamEnded() && res.Status/100 != 1 {
				res.Body = body.String()
				return res, nil
			}
		case *http2.DataFrame:
			if f.StreamID != stream {
				continue
			}
			body.Write(f.Data())
			if n := uint32(len(f.Data())); n > 0 {
				_ = h.Framer.WriteWindowUpdate(0, n)
				_ = h.Framer.WriteWindowUpdate(stream, n)
			}
			if f.StreamEnded() {
				res.Body = body.String()
				return res, nil
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == stream {
				res.Body = body.String()
				return res, fmt.Errorf("stream reset: %v", f.ErrCode)
			}
		case *http2.GoAwayFrame:
			if f.LastStreamID < stream || f.ErrCode != http2.ErrCodeNo {
				res.Body = body.String()
				return res, fmt.Errorf("GOAWAY: %v %q", f.ErrCode, f.DebugData())
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = h.Framer.WritePing(true, f.Data)
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = h.Framer.WriteSettingsAck()
			}
		}
	}
}

// DialH2 opens an HTTP/2 connection to gw (a TLS engine's listener,
// choosing h2 by ALPN) and completes the HTTP/2 handshake. The
// connection is closed when the test ends.
func DialH2(t testing.TB, gw *Server) *H2Conn {
	t.Helper()
	if !gw.Engine.TLSServed() {
		t.Fatalf("DialH2 on the %s engine: HTTP/2 is served over TLS only", gw.Engine)
	}
	c, err := gw.dial("h2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if tc, ok := c.(*tls.Conn); !ok || tc.ConnectionState().NegotiatedProtocol != "h2" {
		t.Fatal("the server did not choose h2")
	}
	h := NewH2Conn(c)
	if err := h.Handshake(); err != nil {
		t.Fatal(err)
	}
	return h
}

// H2Request is the pseudo-header fields of a request for path on gw.test.
func H2Request(method, path string) []hpack.HeaderField {
	return []hpack.HeaderField{{Name: ":method", Value: method}, {Name: ":scheme", Value: "https"},
		{Name: ":path", Value: path}, {Name: ":authority", Value: "gw.test"}}
}

// NewTransport returns a new HTTP transport for the server, as Client
// uses, for a test that sets its own connection options.
func (s *Server) NewTransport() *http.Transport {
	return newClient(s.Engine, s.ca).Transport.(*http.Transport)
}

// Remote is a Server value for a gateway served elsewhere (by
// server.New, with EngineConfig) at addr under engine e, for its
// clients: Client, DialH1, Exchange.
func Remote(t testing.TB, e Engine, addr string) *Server {
	t.Helper()
	ca, _ := pki(t)
	scheme := "http://"
	if e.TLSServed() {
		scheme = "https://"
	}
	return &Server{URL: scheme + addr, Addr: addr, Engine: e, client: newClient(e, ca), ca: ca}
}

// EngineConfig returns what a keyward.yaml needs to be served like engine
// e by server.New: the server.engine field (a line under server:, "" for
// the default) and, under a TLS engine, a top-level tls block whose
// certificate files (the harness's certificate) it writes to dir.
func EngineConfig(t testing.TB, e Engine, dir string) (serverField, topLevel string) {
	t.Helper()
	if e == Stdlib {
		serverField = "engine: stdlib"
	}
	if e.TLSServed() {
		_, leaf := pki(t)
		cert, key := leaf.Write(t, dir)
		topLevel = "tls: { cert: \"" + cert + "\", key: \"" + key + "\" }\n"
	}
	return serverField, topLevel
}
