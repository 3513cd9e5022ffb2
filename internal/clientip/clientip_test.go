package clientip

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func mustPrefixes(t *testing.T, s ...string) []netip.Prefix {
	t.Helper()
	p, err := ParsePrefixes(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestClientIP(t *testing.T) {
	trusted := []string{"10.0.0.0/8", "192.168.1.1", "fd00::/8"}
	tests := []struct {
		name    string
		header  Header
		remote  string
		headers []string // header field lines for the selected header
		want    string
	}{
		{name: "untrusted peer no header", remote: "203.0.113.7:5555", want: "203.0.113.7"},
		{name: "spoofed XFF from untrusted peer is ignored", remote: "203.0.113.7:5555",
			headers: []string{"1.2.3.4"}, want: "203.0.113.7"},
		{name: "spoofed Forwarded from untrusted peer is ignored", header: Forwarded, remote: "203.0.113.7:5555",
			headers: []string{"for=1.2.3.4"}, want: "203.0.113.7"},
		{name: "trusted peer without header is the client", remote: "10.1.1.1:80", want: "10.1.1.1"},
		{name: "trusted peer forwards client", remote: "10.1.1.1:80",
			headers: []string{"198.51.100.9"}, want: "198.51.100.9"},
		{name: "client spoof left of proxy entry is ignored", remote: "10.1.1.1:80",
			headers: []string{"1.2.3.4, 198.51.100.9"}, want: "198.51.100.9"},
		{name: "walk past several trusted hops", remote: "10.1.1.1:80",
			headers: []string{"1.2.3.4, 198.51.100.9, 10.2.2.2, 192.168.1.1"}, want: "198.51.100.9"},
		{name: "multiple field lines are one list", remote: "10.1.1.1:80",
			headers: []string{"1.2.3.4, 198.51.100.9", "10.2.2.2"}, want: "198.51.100.9"},
		{name: "all hops trusted gives leftmost", remote: "10.1.1.1:80",
			headers: []string{"10.9.9.9, 10.2.2.2"}, want: "10.9.9.9"},
		{name: "single trusted host entry", remote: "192.168.1.1:80",
			headers: []string{"198.51.100.9"}, want: "198.51.100.9"},
		{name: "host next to single trusted host is not trusted", remote: "192.168.1.2:80",
			headers: []string{"198.51.100.9"}, want: "192.168.1.2"},
		{name: "garbage stops walk at last trusted address", remote: "10.1.1.1:80",
			headers: []string{"198.51.100.9, not-an-ip"}, want: "10.1.1.1"},
		{name: "garbage after trusted hop keeps trusted hop", remote: "10.1.1.1:80",
			headers: []string{"198.51.100.9, garbage, 10.2.2.2"}, want: "10.2.2.2"},
		{name: "garbage left of client is ignored", remote: "10.1.1.1:80",
			headers: []string{"<script>, 198.51.100.9"}, want: "198.51.100.9"},
		{name: "unknown stops walk", remote: "10.1.1.1:80",
			headers: []string{"unknown"}, want: "10.1.1.1"},
		{name: "empty list elements are skipped", remote: "10.1.1.1:80",
			headers: []string{" , 198.51.100.9 ,, "}, want: "198.51.100.9"},
		{name: "empty header line", remote: "10.1.1.1:80",
			headers: []string{""}, want: "10.1.1.1"},
		{name: "XFF entry with port", remote: "10.1.1.1:80",
			headers: []string{"198.51.100.9:4711"}, want: "198.51.100.9"},
		{name: "XFF bracketed IPv6 with port", remote: "10.1.1.1:80",
			headers: []string{"[2001:db8::1]:4711"}, want: "2001:db8::1"},
		{name: "XFF bare IPv6", remote: "10.1.1.1:80",
			headers: []string{"2001:db8::1"}, want: "2001:db8::1"},
		{name: "XFF bad port is garbage", remote: "10.1.1.1:80",
			headers: []string{"198.51.100.9:http"}, want: "10.1.1.1"},
		{name: "XFF bracketed IPv4 is garbage", remote: "10.1.1.1:80",
			headers: []string{"[198.51.100.9]"}, want: "10.1.1.1"},
		{name: "mapped peer is unmapped and trusted", remote: "[::ffff:10.1.1.1]:80",
			headers: []string{"198.51.100.9"}, want: "198.51.100.9"},
		{name: "mapped untrusted peer is unmapped", remote: "[::ffff:203.0.113.7]:80",
			want: "203.0.113.7"},
		{name: "mapped forwarded client is unmapped", remote: "10.1.1.1:80",
			headers: []string{"::ffff:198.51.100.9"}, want: "198.51.100.9"},
		{name: "mapped trusted hop is trusted", remote: "10.1.1.1:80",
			headers: []string{"198.51.100.9, ::ffff:10.2.2.2"}, want: "198.51.100.9"},
		{name: "IPv6 trusted peer", remote: "[fd00::1]:80",
			headers: []string{"2001:db8::7"}, want: "2001:db8::7"},
		{name: "zone is dropped", remote: "[fe80::1%eth0]:80", want: "fe80::1"},
		{name: "bare remote address", remote: "203.0.113.7", want: "203.0.113.7"},
		{name: "unix socket peer is invalid", remote: "@", want: "invalid IP"},

		{name: "Forwarded basic", header: Forwarded, remote: "10.1.1.1:80",
			headers: []string{"for=198.51.100.9;proto=https"}, want: "198.51.100.9"},
		{name: "Forwarded case-insensitive name", header: Forwarded, remote: "10.1.1.1:80",
			headers: []string{"proto=https;For=198.51.100.9"}, want: "198.51.100.9"},
		{name: "Forwarded quoted IPv6 with port", header: Forwarded, remote: "10.1.1.1:80",
			headers: []string{`for="[2001:db8:cafe::17]:4711"`}, want: "2001:db8:cafe::17"},
		{name: "Forwarded list walks right to left", header: Forwarded, remote: "10.1.1.1:80",
			headers: []string{"for=1.2.3.4, for=198.51.100.9;by=10.1.1.1, for=10.2.2.2"}, want: "198.51.100.9"},
		{name: "Forwarded multiple lines", header: Forwarded, remote: "10.1.1.1:80",
			headers: []string{"for=1.2.3.4, for=198.51.100.9", "for=10.2.2.2"}, want: "198.51.100.9"},
		{name: "Forwarded quoted comma does not split", header: Forwarded, remote: "10.1.1.1:80",
			headers: []string{`for=198.51.100.9;host="a,b"`}, want: "198.51.100.9"},
		{name: "Forwarded obfuscated stops walk", header: Forwarded, remote: "10.1.1.1:80",
			headers: []string{"for=_hidden, for=10.2.2.2"}, want: "10.2.2.2"},
		{name: "Forwarded unknown stops walk", header: Forwarded, remote: "10.1.1.1:80",
			headers: []string{"for=unknown"}, want: "10.1.1.1"},
		{name: "Forwarded element without for stops walk", header: Forwarded, remote: "10.1.1.1:80",
			headers: []string{"for=198.51.100.9, proto=https"}, want: "10.1.1.1"},
		{name: "Forwarded unterminated quote", header: Forwarded, remote: "10.1.1.1:80",
			headers: []string{`for="198.51.100.9`}, want: "10.1.1.1"},
		{name: "Forwarded escapes refused", header: Forwarded, remote: "10.1.1.1:80",
			headers: []string{`for="198.51.100\.9"`}, want: "10.1.1.1"},
		{name: "Forwarded garbage", header: Forwarded, remote: "10.1.1.1:80",
			headers: []string{"=;;==,"}, want: "10.1.1.1"},
		{name: "Forwarded duplicate for is ambiguous", header: Forwarded, remote: "10.1.1.1:80",
			headers: []string{"for=198.51.100.9;for=1.2.3.4"}, want: "10.1.1.1"},
		{name: "XFF ignored when Forwarded is configured", header: Forwarded, remote: "10.1.1.1:80",
			want: "10.1.1.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(mustPrefixes(t, trusted...), 0, tt.header)
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.RemoteAddr = tt.remote
			// The other header always carries a spoof, to prove it is never read.
			if tt.header == Forwarded {
				req.Header.Set("X-Forwarded-For", "6.6.6.6")
			} else {
				req.Header.Set("Forwarded", "for=6.6.6.6")
			}
			for _, h := range tt.headers {
				req.Header.Add(r.headerKey(), h)
			}
			got := r.ClientIP(req).String()
			if got != tt.want {
				t.Errorf("ClientIP = %s, want %s", got, tt.want)
			}
		})
	}
}

// TestRotatingForwardedClients checks the acceptance rule that a trusted
// proxy forwarding many clients yields one key per client, while the same
// rotation from an untrusted peer yields one key.
func TestRotatingForwardedClients(t *testing.T) {
	r := New(mustPrefixes(t, "10.0.0.0/8"), 0, XForwardedFor)
	tests := []struct {
		name   string
		remote string
		want   int
	}{
		{name: "trusted proxy", remote: "10.0.0.1:1234", want: 20},
		{name: "untrusted peer", remote: "203.0.113.7:1234", want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys := map[string]bool{}
			for i := range 20 {
				req := httptest.NewRequest(http.MethodGet, "/", nil)
				req.RemoteAddr = tt.remote
				req.Header.Set("X-Forwarded-For", netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String())
				keys[r.Key(r.ClientIP(req))] = true
			}
			if len(keys) != tt.want {
				t.Errorf("got %d distinct keys, want %d: %v", len(keys), tt.want, keys)
			}
		})
	}
}

func TestKey(t *testing.T) {
	tests := []struct {
		name   string
		prefix int
		addr   netip.Addr
		want   string
	}{
		{name: "IPv4 full address", addr: netip.MustParseAddr("198.51.100.9"), want: "198.51.100.9"},
		{name: "IPv6 default /64", addr: netip.MustParseAddr("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), want: "2001:db8:1:2::/64"},
		{name: "IPv6 same /64 same key", addr: netip.MustParseAddr("2001:db8:1:2::1"), want: "2001:db8:1:2::/64"},
		{name: "IPv6 /56", prefix: 56, addr: netip.MustParseAddr("2001:db8:1:2ff::1"), want: "2001:db8:1:200::/56"},
		{name: "IPv6 /128 is the address", prefix: 128, addr: netip.MustParseAddr("2001:db8::1"), want: "2001:db8::1"},
		{name: "prefix above 128 clamps", prefix: 200, addr: netip.MustParseAddr("2001:db8::1"), want: "2001:db8::1"},
		{name: "mapped is keyed as IPv4", addr: netip.MustParseAddr("::ffff:198.51.100.9"), want: "198.51.100.9"},
		{name: "zone dropped", addr: netip.MustParseAddr("fe80::1%eth0"), want: "fe80::/64"},
		{name: "invalid", addr: netip.Addr{}, want: "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(nil, tt.prefix, XForwardedFor)
			if got := r.Key(tt.addr); got != tt.want {
				t.Errorf("Key = %q, want %q", got, tt.want)
			}
			if got := string(r.AppendKey([]byte("route:"), tt.addr)); got != "route:"+tt.want {
				t.Errorf("AppendKey = %q, want %q", got, "route:"+tt.want)
			}
		})
	}
}

func TestAppendKeyAllocs(t *testing.T) {
	r := New(nil, 0, XForwardedFor)
	v6 := netip.MustParseAddr("2001:db8:1:2::1")
	buf := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() { buf = r.AppendKey(buf[:0], v6) }); n != 0 {
		t.Errorf("AppendKey allocates %v times, want 0", n)
	}
}

func TestClientIPAllocs(t *testing.T) {
	tests := []struct {
		name   string
		header Header
		value  string
	}{
		{name: "XFF", header: XForwardedFor, value: "1.2.3.4, 198.51.100.9, 10.2.2.2"},
		{name: "Forwarded", header: Forwarded, value: `for=1.2.3.4, for="[2001:db8::1]:80", for=10.2.2.2`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(mustPrefixes(t, "10.0.0.0/8"), 0, tt.header)
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.RemoteAddr = "10.0.0.1:1234"
			req.Header.Set(r.headerKey(), tt.value)
			if n := testing.AllocsPerRun(100, func() { r.ClientIP(req) }); n != 0 {
				t.Errorf("ClientIP allocates %v times, want 0", n)
			}
		})
	}
}

func TestParsePrefixes(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    []netip.Prefix
		wantErr []string // substrings, one per bad entry
	}{
		{name: "empty", in: nil, want: []netip.Prefix{}},
		{name: "CIDRs and hosts", in: []string{"10.0.0.0/8", " 192.168.1.1 ", "2001:db8::/32", "::1"},
			want: []netip.Prefix{
				netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.1/32"),
				netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("::1/128"),
			}},
		{name: "host bits masked", in: []string{"10.1.2.3/8"}, want: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		{name: "mapped prefix unmapped", in: []string{"::ffff:10.0.0.0/104", "::ffff:10.0.0.1"},
			want: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.0.0.1/32")}},
		{name: "all errors reported", in: []string{"10.0.0.0/8", "10.0.0.300", "10.0.0.0/33", "fe80::1%eth0", ""},
			wantErr: []string{`[1] "10.0.0.300": not an IP address`, `[2] "10.0.0.0/33": not a CIDR prefix`,
				`[3] "fe80::1%eth0": zones are not allowed`, `[4] "": not an IP address`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePrefixes(tt.in)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("ParsePrefixes = %v, want error", got)
				}
				lines := strings.Split(err.Error(), "\n")
				if len(lines) != len(tt.wantErr) {
					t.Fatalf("got %d errors, want %d:\n%v", len(lines), len(tt.wantErr), err)
				}
				for i, want := range tt.wantErr {
					if !strings.Contains(lines[i], want) {
						t.Errorf("error %d = %q, want it to contain %q", i, lines[i], want)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("ParsePrefixes mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseHeader(t *testing.T) {
	tests := []struct {
		in      string
		want    Header
		wantErr bool
	}{
		{in: "", want: XForwardedFor},
		{in: "X-Forwarded-For", want: XForwardedFor},
		{in: "forwarded", want: Forwarded},
		{in: "x-real-ip", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseHeader(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseHeader(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func FuzzClientIP(f *testing.F) {
	for _, s := range []string{"1.2.3.4, 10.0.0.2", `for="[2001:db8::1]:80";proto=https, for=10.0.0.2`, "=,;\"", "[::1"} {
		f.Add(s)
	}
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	f.Fuzz(func(t *testing.T, v string) {
		for _, h := range []Header{XForwardedFor, Forwarded} {
			r := New(trusted, 0, h)
			req := &http.Request{RemoteAddr: "10.0.0.1:1", Header: http.Header{r.headerKey(): {v}}}
			got := r.ClientIP(req)
			if !got.IsValid() || got.Is4In6() || got.Zone() != "" {
				t.Fatalf("ClientIP(%q) = %v: want a valid, unmapped, zoneless address", v, got)
			}
			// Untrusted peers are never affected by headers.
			req.RemoteAddr = "203.0.113.1:1"
			if got := r.ClientIP(req); got != netip.MustParseAddr("203.0.113.1") {
				t.Fatalf("untrusted peer resolved to %v", got)
			}
		}
	})
}

func BenchmarkClientIP(b *testing.B) {
	r := New([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, 0, XForwardedFor)
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.RemoteAddr = "10.0.0.1:1234"
	req.Header.Set("X-Forwarded-For", "1.2.3.4, 2001:db8::1, 10.2.2.2")
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		buf = r.AppendKey(buf[:0], r.ClientIP(req))
	}
}

func TestWideKey(t *testing.T) {
	tests := []struct {
		name       string
		prefix     int
		widePrefix int
		addr       netip.Addr
		key, wide  string
	}{
		{name: "IPv6 /64 in its /48", widePrefix: 48, addr: netip.MustParseAddr("2001:db8:1:2:aaaa::1"),
			key: "2001:db8:1:2::/64", wide: "2001:db8:1::/48"},
		{name: "another /64 of the same /48", widePrefix: 48, addr: netip.MustParseAddr("2001:db8:1:ffff::1"),
			key: "2001:db8:1:ffff::/64", wide: "2001:db8:1::/48"},
		{name: "another /48", widePrefix: 48, addr: netip.MustParseAddr("2001:db8:2:2::1"),
			key: "2001:db8:2:2::/64", wide: "2001:db8:2::/48"},
		{name: "/56 clients in a /40", prefix: 56, widePrefix: 40, addr: netip.MustParseAddr("2001:db8:1:2ff::1"),
			key: "2001:db8:1:200::/56", wide: "2001:db8::/40"},
		{name: "addresses in a /64", prefix: 128, widePrefix: 64, addr: netip.MustParseAddr("2001:db8::1"),
			key: "2001:db8::1", wide: "2001:db8::/64"},
		{name: "IPv4 has no wide network", widePrefix: 48, addr: netip.MustParseAddr("198.51.100.9"), key: "198.51.100.9"},
		{name: "mapped IPv4 has no wide network", widePrefix: 48, addr: netip.MustParseAddr("::ffff:198.51.100.9"), key: "198.51.100.9"},
		{name: "zone dropped", widePrefix: 48, addr: netip.MustParseAddr("fe80::1%eth0"), key: "fe80::/64", wide: "fe80::/48"},
		{name: "invalid has no wide network", widePrefix: 48, key: "unknown"},
		{name: "wide keys off", addr: netip.MustParseAddr("2001:db8:1:2::1"), key: "2001:db8:1:2::/64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewResolver(Options{IPv6Prefix: tt.prefix, IPv6WidePrefix: tt.widePrefix})
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Key(tt.addr); got != tt.key {
				t.Errorf("Key = %q, want %q", got, tt.key)
			}
			if got := r.WideKey(tt.addr); got != tt.wide {
				t.Errorf("WideKey = %q, want %q", got, tt.wide)
			}
			if got := string(r.AppendWideKey([]byte("route:"), tt.addr)); got != "route:"+tt.wide {
				t.Errorf("AppendWideKey = %q, want %q", got, "route:"+tt.wide)
			}
		})
	}
}

// TestWideKeyGroupsAllocation: every /64 of one /48 shares a wide key, so
// the 65,536 identities of a /48 are counted together as well.
func TestWideKeyGroupsAllocation(t *testing.T) {
	r, err := NewResolver(Options{IPv6WidePrefix: DefaultIPv6WidePrefix})
	if err != nil {
		t.Fatal(err)
	}
	keys, wides := map[string]bool{}, map[string]bool{}
	for i := range 1 << 16 {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, byte(i >> 8), byte(i), 15: 1})
		keys[r.Key(a)], wides[r.WideKey(a)] = true, true
	}
	if len(keys) != 1<<16 || len(wides) != 1 {
		t.Errorf("%d client keys and %d wide keys, want 65536 and 1", len(keys), len(wides))
	}
}

func TestNewResolverErrors(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want []string
	}{
		{name: "prefix out of range", o: Options{IPv6Prefix: 129, IPv6WidePrefix: -1},
			want: []string{"ipv6_prefix 129 is not a prefix length", "ipv6_wide_prefix -1 is not a prefix length"}},
		{name: "wide not wider", o: Options{IPv6WidePrefix: 64},
			want: []string{"ipv6_wide_prefix 64 must be shorter than ipv6_prefix 64"}},
		{name: "wide out of range", o: Options{IPv6WidePrefix: 200}, want: []string{"ipv6_wide_prefix 200"}},
		{name: "unknown header", o: Options{Header: 7}, want: []string{"header Header(7)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewResolver(tt.o)
			if err == nil {
				t.Fatal("NewResolver succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestAppendWideKeyAllocs(t *testing.T) {
	r, err := NewResolver(Options{IPv6WidePrefix: 48})
	if err != nil {
		t.Fatal(err)
	}
	v6 := netip.MustParseAddr("2001:db8:1:2::1")
	buf := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() { buf = r.AppendWideKey(buf[:0], v6) }); n != 0 {
		t.Errorf("AppendWideKey allocates %v times, want 0", n)
	}
}
