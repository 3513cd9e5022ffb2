package server

import (
	"net/http/httptest"
	"testing"
)

// TestAdminRefusal: changes through the admin API come only from a
// loopback peer that is not a browser, even when admin.listen is open to
// the network for probes.
func TestAdminRefusal(t *testing.T) {
	for _, c := range []struct {
		remote, header, code string
	}{
		{"127.0.0.1:5000", "", ""},
		{"[::1]:5000", "", ""},
		{"10.0.0.7:5000", "", "loopback_only"},
		{"[2001:db8::1]:5000", "", "loopback_only"},
		{"127.0.0.1:5000", "Origin", "browser_refused"},
		{"127.0.0.1:5000", "Sec-Fetch-Site", "browser_refused"},
		{"127.0.0.1:5000", "X-Forwarded-For", "loopback_only"},
		{"127.0.0.1:5000", "Forwarded", "loopback_only"},
		{"127.0.0.1:5000", "Via", "loopback_only"},
	} {
		r := httptest.NewRequest("POST", "/admin/pause", nil)
		r.RemoteAddr = c.remote
		if c.header != "" {
			r.Header.Set(c.header, "x")
		}
		if code, _ := adminRefusal(r); code != c.code {
			t.Errorf("%s with %q: %q, want %q", c.remote, c.header, code, c.code)
		}
	}
}
