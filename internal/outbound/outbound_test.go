package outbound

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParsePrefix(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: "10.0.0.0/8", want: "10.0.0.0/8"},
		{in: "10.0.0.1", want: "10.0.0.1/32"},
		{in: "::1", want: "::1/128"},
		{in: "fd00::/8", want: "fd00::/8"},
		{in: "10.0.0.0/33", wantErr: true},
		{in: "example.com", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParsePrefix(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("ParsePrefix(%q) = %v, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
}

func TestAllows(t *testing.T) {
	pfx := func(s string) netip.Prefix { p, _ := ParsePrefix(s); return p }
	tests := []struct {
		name string
		opts Options
		addr string
		want bool
	}{
		{"public address", Options{}, "93.184.216.34", true},
		{"loopback is not denied by default", Options{}, "127.0.0.1", true},
		{"cloud metadata", Options{}, "169.254.169.254", false},
		{"cloud metadata, IPv4-mapped", Options{}, "::ffff:169.254.169.254", false},
		{"AWS metadata over IPv6", Options{}, "fd00:ec2::254", false},
		{"multicast", Options{}, "239.1.1.1", false},
		{"unspecified", Options{}, "::", false},
		{"denied by the config", Options{Deny: []netip.Prefix{pfx("127.0.0.0/8")}}, "127.0.0.1", false},
		{"deny adds to the defaults", Options{Deny: []netip.Prefix{pfx("10.0.0.0/8")}}, "169.254.169.254", false},
		{"allow wins over deny", Options{Deny: []netip.Prefix{pfx("10.0.0.0/8")}, Allow: []netip.Prefix{pfx("10.1.2.3")}}, "10.1.2.3", true},
		{"allow wins over the defaults", Options{Allow: []netip.Prefix{pfx("169.254.169.254")}}, "169.254.169.254", true},
		{"allow is an exception, not a list", Options{Allow: []netip.Prefix{pfx("10.1.2.3")}}, "93.184.216.34", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := New(tt.opts).Allows(netip.MustParseAddr(tt.addr)); got != tt.want {
				t.Errorf("Allows(%s) = %v, want %v", tt.addr, got, tt.want)
			}
		})
	}
}

func TestDefaultDenyIsACopy(t *testing.T) {
	DefaultDeny()[0] = netip.MustParsePrefix("1.2.3.4/32")
	if New(Options{}).Allows(netip.MustParseAddr("0.0.0.1")) {
		t.Error("changing what DefaultDeny returned changed the policy")
	}
}

func TestEqual(t *testing.T) {
	deny := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	allow := []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
	base := New(Options{Deny: deny, Allow: allow})
	tests := []struct {
		name string
		q    *Policy
		want bool
	}{
		{"same rules", New(Options{Deny: deny, Allow: allow, Resolver: &fakeResolver{}}), true},
		{"default header limit written out", New(Options{Deny: deny, Allow: allow, MaxResponseHeaderBytes: 64 << 10}), true},
		{"tighter deny", New(Options{Deny: append(deny, netip.MustParsePrefix("10.0.0.0/8")), Allow: allow}), false},
		{"no allow", New(Options{Deny: deny}), false},
		{"other header limit", New(Options{Deny: deny, Allow: allow, MaxResponseHeaderBytes: 1 << 10}), false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := base.Equal(tt.q); got != tt.want {
				t.Errorf("Equal = %v, want %v", got, tt.want)
			}
		})
	}
	if !(*Policy)(nil).Equal(nil) {
		t.Error("two nil policies are not equal")
	}
}

// fakeResolver answers from a table that a test may change.
type fakeResolver struct {
	mu    sync.Mutex
	names map[string][]netip.Addr
}

func (r *fakeResolver) set(name string, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.names == nil {
		r.names = map[string][]netip.Addr{}
	}
	r.names[name] = nil
	for _, a := range addrs {
		r.names[name] = append(r.names[name], netip.MustParseAddr(a))
	}
}

func (r *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	addrs, ok := r.names[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return addrs, nil
}

// dialRecorder dials for real and keeps the addresses it was asked for.
type dialRecorder struct {
	mu    sync.Mutex
	addrs []string
	d     net.Dialer
}

func (d *dialRecorder) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, addr)
	d.mu.Unlock()
	return d.d.DialContext(ctx, network, addr)
}

func (d *dialRecorder) take() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.addrs
	d.addrs = nil
	return a
}

// upstreamServer is a raw HTTP/1.1 server on 127.0.0.1 that answers "ok"
// to every request; a request to /slow gets half its body, then the rest
// once more is closed. It counts the connections it accepted and reports
// each one's end on closed.
type upstreamServer struct {
	port     string
	accepted atomic.Int32
	more     chan struct{}
	closed   chan struct{}
	release  sync.Once
}

// finish lets /slow send the rest of its body; a test that failed early
// calls it too, so the server's goroutine ends.
func (s *upstreamServer) finish() { s.release.Do(func() { close(s.more) }) }

func newUpstreamServer(t *testing.T) *upstreamServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	s := &upstreamServer{port: port, more: make(chan struct{}), closed: make(chan struct{}, 8)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		s.finish()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer func() { s.closed <- struct{}{} }()
				defer c.Close()
				s.serve(c)
			})
		}
	})
	return s
}

func (s *upstreamServer) serve(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if req.URL.Path != "/slow" {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			continue
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
		<-s.more
		io.WriteString(c, "cd")
	}
}

// waitClosed waits until the server saw a connection end.
func (s *upstreamServer) waitClosed(t *testing.T, what string) {
	t.Helper()
	select {
	case <-s.closed:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the connection was never closed", what)
	}
}

func get(p *Policy, url string) (string, error) {
	req, _ := http.NewRequest("GET", url, nil)
	resp, err := p.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestRoundTripChecksWhatItDials(t *testing.T) {
	srv := newUpstreamServer(t)
	res := &fakeResolver{}
	res.set("api.test", "169.254.169.254", "127.0.0.1")
	res.set("metadata.test", "169.254.169.254", "fd00:ec2::254")
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

	t.Run("a name is dialled at the address that was checked", func(t *testing.T) {
		d := &dialRecorder{}
		p := New(Options{Resolver: res, Dial: d.dial})
		t.Cleanup(p.Retire)
		if body, err := get(p, "http://api.test:"+srv.port+"/"); err != nil || body != "ok" {
			t.Fatalf("got %q, %v; want ok", body, err)
		}
		if diff := cmp.Diff([]string{"127.0.0.1:" + srv.port}, d.take()); diff != "" {
			t.Errorf("dialled (-want +got):\n%s", diff)
		}
	})
	t.Run("a name resolving only to denied addresses: DeniedError, nothing dialled", func(t *testing.T) {
		d := &dialRecorder{}
		p := New(Options{Resolver: res, Dial: d.dial})
		_, err := get(p, "http://metadata.test:"+srv.port+"/")
		var denied *DeniedError
		if !errors.As(err, &denied) || denied.Host != "metadata.test" || !denied.Addr.IsValid() || p.Allows(denied.Addr) {
			t.Fatalf("err = %v, want a *DeniedError naming metadata.test and a denied address", err)
		}
		if got := d.take(); len(got) != 0 {
			t.Errorf("dialled %v, want nothing", got)
		}
	})
	t.Run("deny from the config", func(t *testing.T) {
		d := &dialRecorder{}
		p := New(Options{Deny: loopback, Resolver: res, Dial: d.dial})
		if _, err := get(p, "http://api.test:"+srv.port+"/"); !errors.As(err, new(*DeniedError)) {
			t.Fatalf("err = %v, want a *DeniedError", err)
		}
		if got := d.take(); len(got) != 0 {
			t.Errorf("dialled %v, want nothing", got)
		}
	})
	t.Run("allow wins over deny", func(t *testing.T) {
		p := New(Options{Deny: loopback, Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Resolver: res})
		t.Cleanup(p.Retire)
		if body, err := get(p, "http://api.test:"+srv.port+"/"); err != nil || body != "ok" {
			t.Fatalf("got %q, %v; want ok", body, err)
		}
	})
	t.Run("an IP address in the URL is the config's own choice", func(t *testing.T) {
		p := New(Options{Deny: loopback, Resolver: res})
		t.Cleanup(p.Retire)
		if body, err := get(p, "http://127.0.0.1:"+srv.port+"/"); err != nil || body != "ok" {
			t.Fatalf("got %q, %v; want ok", body, err)
		}
	})
	t.Run("an unknown name", func(t *testing.T) {
		p := New(Options{Resolver: res})
		if _, err := get(p, "http://nowhere.test:"+srv.port+"/"); !errors.As(err, new(*net.DNSError)) {
			t.Fatalf("err = %v, want the resolver's error", err)
		}
	})
}

// TestReloadTighterDeny is what a reload that adds a range to
// outbound.deny does with policies: the new policy has pools of its own,
// so it refuses a name that resolves into the range even though the old
// one holds a connection to that very address, and retiring the old one
// closes its idle connection at once and its busy one when the request
// in flight ends.
func TestReloadTighterDeny(t *testing.T) {
	srv := newUpstreamServer(t)
	res := &fakeResolver{}
	res.set("api.test", "127.0.0.1")
	url := "http://api.test:" + srv.port

	old := New(Options{Resolver: res})
	t.Cleanup(old.Retire)
	req, _ := http.NewRequest("GET", url+"/slow", nil)
	inFlight, err := old.RoundTrip(req) // busy on a first connection
	if err != nil {
		t.Fatal(err)
	}
	if body, err := get(old, url+"/"); err != nil || body != "ok" { // a second one, now idle
		t.Fatalf("got %q, %v; want ok", body, err)
	}
	if n := srv.accepted.Load(); n != 2 {
		t.Fatalf("the upstream accepted %d connections, want 2", n)
	}

	tighter := New(Options{Deny: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Resolver: res})
	t.Cleanup(tighter.Retire)
	if old.Equal(tighter) {
		t.Fatal("a policy with a tighter deny is Equal to the old one; the reload would keep the old pools")
	}
	old.Retire()
	srv.waitClosed(t, "the old policy's idle connection")

	if _, err := get(tighter, url+"/"); !errors.As(err, new(*DeniedError)) {
		t.Errorf("the new policy: err = %v, want a *DeniedError", err)
	}
	if n := srv.accepted.Load(); n != 2 {
		t.Errorf("the upstream accepted %d connections, want 2: the new policy connected to a denied address", n)
	}

	srv.finish()
	b, err := io.ReadAll(inFlight.Body)
	inFlight.Body.Close()
	if err != nil || string(b) != "abcd" {
		t.Fatalf("the request in flight read %q, %v; want abcd: Retire must let it finish", b, err)
	}
	srv.waitClosed(t, "the old policy's connection returned by the request in flight")

	// A request still routed to the old policy works, on a connection
	// that is not kept.
	if body, err := get(old, url+"/"); err != nil || body != "ok" {
		t.Fatalf("the retired policy: got %q, %v; want ok", body, err)
	}
	srv.waitClosed(t, "a connection the retired policy dialled")
}
