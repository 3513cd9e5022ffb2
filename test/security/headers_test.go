package security_test

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// hostRecorder is an upstream handler that remembers the Host each
// request arrived with (net/http moves it out of the header map).
type hostRecorder struct {
	mu    sync.Mutex
	hosts []string
}

func (hr *hostRecorder) serve(w http.ResponseWriter, r *http.Request) {
	hr.mu.Lock()
	hr.hosts = append(hr.hosts, r.Host)
	hr.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"ok":true}`))
}

func (hr *hostRecorder) take() []string {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	h := hr.hosts
	hr.hosts = nil
	return h
}

// TestHeadersClientCredentialsDropped: what identifies or authorises the
// client never reaches a third party, and the route's own credential is
// sent exactly once, whatever the client adds.
func TestHeadersClientCredentialsDropped(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	dropped := []string{"Cookie", "Proxy-Authorization", "X-Forwarded-For", "X-Forwarded-Host",
		"X-Forwarded-Proto", "X-Real-Ip", "Forwarded", "X-Original-Url", "X-Rewrite-Url", "X-Http-Method-Override",
		"X_forwarded_for", "Connection", "Upgrade", "Te", "Keep-Alive"}
	tests := []struct {
		name   string
		header http.Header
	}{
		{"client Authorization replaced by the route's", http.Header{"Authorization": {"Bearer attacker"}}},
		{"two client Authorization headers", http.Header{"Authorization": {"Bearer a", "Basic YTpi"}}},
		{"lower-case authorization", http.Header{"authorization": {"Bearer attacker"}}},
		{"Cookie and Proxy-Authorization", http.Header{"Cookie": {"session=victim"}, "Proxy-Authorization": {"Basic YTpi"}}},
		{"forwarding headers spoof the client", http.Header{"X-Forwarded-For": {"127.0.0.1"}, "X-Forwarded-Host": {"evil.test"},
			"X-Forwarded-Proto": {"http"}, "X-Real-Ip": {"127.0.0.1"}, "Forwarded": {"for=127.0.0.1;host=evil.test"}}},
		{"Connection names the set header to strip it", http.Header{"Connection": {"Authorization"}}},
		{"Connection names the set Accept", http.Header{"Connection": {"Accept, Authorization"}, "Accept": {"text/evil"}}},
		{"X-Original-URL and X-Rewrite-URL ask for another path", http.Header{"X-Original-Url": {"/admin"}, "X-Rewrite-Url": {"/admin"}}},
		{"method override header", http.Header{"X-Http-Method-Override": {"DELETE"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := h.Get("/my-repos", tt.header)
			if _, conn := tt.header["Connection"]; conn && refusesConnectionHeaders(h) {
				connectionRefused(t, h, res)
				return
			}
			s := ok(t, h, res)
			authorizedOnce(t, s)
			if diff := cmp.Diff([]string{"application/vnd.github+json"}, s.Header["Accept"]); diff != "" {
				t.Errorf("Accept (-want +got):\n%s", diff)
			}
			if s.Path != "/api/user/repos" || s.Method != "GET" {
				t.Errorf("upstream got %s %s", s.Method, s.Path)
			}
			for _, name := range dropped {
				if v, found := s.Header[name]; found {
					t.Errorf("%s reached the upstream: %q", name, v)
				}
			}
		})
	}
	// Some servers read X_Forwarded_For as X-Forwarded-For; the framing
	// guard refuses underscores in header names before anything parses them.
	t.Run("underscore spelling of a forwarding header is refused", func(t *testing.T) {
		res := h.Get("/my-repos", http.Header{"X_Forwarded_For": {"127.0.0.1"}})
		refused(t, h, res, http.StatusBadRequest, "bad_framing")
	})
}

// TestHeadersHostTricks: the Host a client names, or an absolute-form
// target, never changes where the request goes or the Host it carries.
func TestHeadersHostTricks(t *testing.T) {
	hr := &hostRecorder{}
	h := newHarness(t, baseConfig, hr.serve)
	upHost := strings.TrimPrefix(h.Up.Server.URL, "http://")

	t.Run("Host: evil does not change the upstream", func(t *testing.T) {
		res := h.RawBytes("GET", "GET /my-repos HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n")
		s := ok(t, h, res)
		authorizedOnce(t, s)
		if got := hr.take(); !cmp.Equal(got, []string{upHost}) {
			t.Errorf("upstream Host %q, want %q", got, upHost)
		}
	})
	t.Run("absolute-form target naming another host is refused", func(t *testing.T) {
		res := h.RawBytes("GET", "GET http://evil.test/my-repos HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
		refused(t, h, res, http.StatusBadRequest, "bad_request")
	})
	t.Run("absolute-form target naming the upstream itself is refused", func(t *testing.T) {
		res := h.RawBytes("GET", "GET "+h.Up.Server.URL+"/api/admin HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
		refused(t, h, res, http.StatusBadRequest, "bad_request")
	})
	t.Run("X-Forwarded-Host does not change the upstream Host", func(t *testing.T) {
		s := ok(t, h, h.Get("/my-repos", http.Header{"X-Forwarded-Host": {"evil.test"}, "X-Host": {"evil.test"}}))
		authorizedOnce(t, s)
		if got := hr.take(); !cmp.Equal(got, []string{upHost}) {
			t.Errorf("upstream Host %q, want %q", got, upHost)
		}
	})
}

// TestHeadersInjection: CR LF in a parameter cannot add a header or a
// second request upstream.
func TestHeadersInjection(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	t.Run("CR LF in a path param is refused", func(t *testing.T) {
		refused(t, h, h.Get("/repos/a%0d%0aX-Injected:%201/b/issues", nil), http.StatusBadRequest, "bad_path")
	})
	t.Run("CR LF smuggling a second request in a path param is refused", func(t *testing.T) {
		refused(t, h, h.Get("/repos/a%0d%0a%0d%0aGET%20/admin%20HTTP/1.1/b/issues", nil), http.StatusBadRequest, "bad_path")
	})
	t.Run("raw CR in a header value is refused by the listener", func(t *testing.T) {
		res := h.RawBytes("GET", "GET /my-repos HTTP/1.1\r\nHost: gw.test\r\nAccept: a\rX-Injected: 1\r\nConnection: close\r\n\r\n")
		if res.Status != http.StatusBadRequest && !h2Reset(h, res) {
			// net/http may accept a lone CR inside a value; if it does, the
			// value must still not split into a header upstream.
			s := only(t, h)
			if _, bad := s.Header["X-Injected"]; bad {
				t.Errorf("a lone CR split a header upstream")
			}
			return
		}
		refused(t, h, res, http.StatusBadRequest, "")
	})
}

// TestHeadersUpgrade: a client cannot turn the exchange into a WebSocket
// or h2c tunnel to the upstream: the upstream sees no Upgrade, the client
// never gets 101, and an upstream that switches anyway gets 502.
func TestHeadersUpgrade(t *testing.T) {
	var mu sync.Mutex
	switchAnyway := false
	h := newHarness(t, baseConfig, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sw := switchAnyway
		mu.Unlock()
		if sw {
			w.Header().Set("Connection", "Upgrade")
			w.Header().Set("Upgrade", "websocket")
			w.WriteHeader(http.StatusSwitchingProtocols)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	})
	for _, tt := range []struct {
		name   string
		header http.Header
	}{
		{"websocket upgrade", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"},
			"Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}, "Sec-Websocket-Version": {"13"}}},
		{"h2c upgrade", http.Header{"Connection": {"Upgrade, HTTP2-Settings"}, "Upgrade": {"h2c"}, "Http2-Settings": {"AAMAAABkAARAAAAAAAIAAAAA"}}},
	} {
		t.Run(tt.name+" is not passed on", func(t *testing.T) {
			res := h.Get("/my-repos", tt.header)
			if refusesConnectionHeaders(h) {
				connectionRefused(t, h, res)
				return
			}
			s := ok(t, h, res)
			authorizedOnce(t, s)
			for _, name := range []string{"Upgrade", "Connection", "Sec-Websocket-Key", "Http2-Settings"} {
				if v, found := s.Header[name]; found {
					t.Errorf("%s reached the upstream: %q", name, v)
				}
			}
		})
	}
	t.Run("an upstream that switches protocols anyway gets 502", func(t *testing.T) {
		mu.Lock()
		switchAnyway = true
		mu.Unlock()
		asks := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}
		if refusesConnectionHeaders(h) {
			asks = nil // HTTP/2 would refuse the request; the upstream switches unasked
		}
		res := h.Get("/my-repos", asks)
		if res.Status != http.StatusBadGateway || errCode(res.Body) != "upstream_unavailable" {
			t.Errorf("status %d body %q, want 502 upstream_unavailable", res.Status, res.Body)
		}
		s := only(t, h)
		if _, found := s.Header["Upgrade"]; found {
			t.Errorf("Upgrade reached the upstream")
		}
	})
}

// TestHeadersQueryInjectionViaHeaderValue: a header value never turns
// into a query parameter or path.
func TestHeadersQueryInjectionViaHeaderValue(t *testing.T) {
	h := newHarness(t, baseConfig, nil)
	s := ok(t, h, h.Get("/geocode?address=x", http.Header{"Accept": {"a?key=evil#"}}))
	q, _ := url.ParseQuery(s.RawQuery)
	if len(q["key"]) != 1 || s.Path != "/api/geocode" {
		t.Errorf("upstream got path %q query keys %d", s.Path, len(q["key"]))
	}
}
