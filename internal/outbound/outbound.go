// Package outbound is the gateway's outbound address policy: which
// addresses upstream host names may resolve to, enforced where every
// upstream connection is made. It exists because DNS is outside the
// config: a name that resolves to 169.254.169.254 would turn a route into
// a reader of cloud metadata.
//
// A Policy is a value that owns its dialer and its connection pools (an
// internal/upstream Transport). Connections made under one policy are
// never reused under another: a reload that changes the policy compiles
// a new Policy, and retires the old one so that its pooled connections,
// dialled under rules that no longer hold, close instead of serving on.
package outbound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/keyward/keyward/internal/upstream"
)

// defaultDeny are addresses no upstream name should resolve to.
var defaultDeny = prefixes(
	"0.0.0.0/8", "::/128", // unspecified: "this host" on many stacks
	"169.254.0.0/16", "fe80::/10", // link-local, home of cloud metadata
	"fd00:ec2::254/128",       // AWS metadata over IPv6
	"100.100.100.200/32",      // Alibaba Cloud metadata
	"224.0.0.0/4", "ff00::/8", // multicast
	"255.255.255.255/32",
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// DefaultDeny returns the ranges every Policy denies unless its Allow
// says otherwise: unspecified, link-local (where cloud metadata lives),
// the metadata addresses of AWS over IPv6 and of Alibaba Cloud,
// multicast and broadcast. Loopback and private ranges are not in it:
// self-hosted upstreams live there; a config denies them with Deny.
func DefaultDeny() []netip.Prefix { return slices.Clone(defaultDeny) }

// ParsePrefix parses an entry of outbound.deny or outbound.allow: a CIDR
// ("10.0.0.0/8") or a single address ("10.0.0.1", a /32 or /128).
func ParsePrefix(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.ParsePrefix(s)
}

// DeniedError is the error of a request whose upstream host name
// resolved only to addresses the policy denies. It reaches the caller of
// RoundTrip wrapped; errors.As finds it. Its text names the host and the
// address, so it belongs in logs, not in what a client is told.
type DeniedError struct {
	// Host is the upstream host name, as written in the config.
	Host string
	// Addr is a denied address it resolved to.
	Addr netip.Addr
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("upstream %s resolved to %s, which the outbound policy denies", e.Host, e.Addr)
}

// defaultMaxHeaderBytes is the default of Options.MaxResponseHeaderBytes,
// made explicit so that Equal sees a zero and a default as the same.
const defaultMaxHeaderBytes = 64 << 10

// Resolver looks up the addresses of a host name. *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Options configure a Policy. The zero value is the default policy.
type Options struct {
	// Deny lists ranges upstream names may not resolve to, in addition
	// to DefaultDeny. Default: none.
	Deny []netip.Prefix
	// Allow lists exceptions to Deny and to DefaultDeny: an address in
	// both is allowed. Default: none.
	Allow []netip.Prefix
	// MaxResponseHeaderBytes bounds the status line and headers of an
	// upstream response. Default 64 KiB.
	MaxResponseHeaderBytes int64
	// Resolver resolves upstream host names. If nil, net.DefaultResolver
	// is used. Tests set it to answer names without DNS.
	Resolver Resolver
	// Dial connects to an address the policy allows ("ip:port"). If nil,
	// a net.Dialer with a 10 s timeout and a 30 s TCP keep-alive is used.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Policy is a compiled outbound policy with the connection pools of the
// upstream requests sent under it. It is an http.RoundTripper, safe for
// concurrent use and immutable but for its pools.
type Policy struct {
	deny, allow []netip.Prefix // deny holds DefaultDeny too
	maxHeader   int64
	resolver    Resolver
	dialer      func(ctx context.Context, network, addr string) (net.Conn, error)
	transport   *upstream.Transport
}

var _ http.RoundTripper = (*Policy)(nil)

// New compiles o into a Policy. It opens no sockets (a config check
// compiles policies it never uses): connections are made by RoundTrip.
func New(o Options) *Policy {
	p := &Policy{
		deny:      append(DefaultDeny(), o.Deny...),
		allow:     slices.Clone(o.Allow),
		maxHeader: o.MaxResponseHeaderBytes,
		resolver:  o.Resolver,
		dialer:    o.Dial,
	}
	if p.resolver == nil {
		p.resolver = net.DefaultResolver
	}
	if p.maxHeader <= 0 {
		p.maxHeader = defaultMaxHeaderBytes
	}
	if p.dialer == nil {
		d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
		p.dialer = d.DialContext
	}
	p.transport = upstream.New(upstream.Options{DialContext: p.dial, MaxResponseHeaderBytes: p.maxHeader})
	return p
}

// RoundTrip sends req upstream on one of the policy's connections; a new
// connection is made only to an address the policy allows (see
// upstream.Transport.RoundTrip for the exchange itself). A host that
// resolves only to denied addresses fails with an error wrapping a
// *DeniedError, and no connection is attempted.
func (p *Policy) RoundTrip(req *http.Request) (*http.Response, error) {
	return p.transport.RoundTrip(req)
}

// Equal reports whether p and q have the same rules (deny and allow
// lists, in the same order, and header limit), so that a reload may keep
// p and its pools instead of q. The Resolver and Dial hooks are not
// compared. Two nil policies are equal; a nil and a non-nil one are not.
func (p *Policy) Equal(q *Policy) bool {
	if p == nil || q == nil {
		return p == q
	}
	return slices.Equal(p.deny, q.deny) && slices.Equal(p.allow, q.allow) && p.maxHeader == q.maxHeader
}

// Retire ends p's pooling, for a policy a reload has replaced: idle
// connections are closed now, and a connection carrying a request still
// in flight is closed when the request ends instead of being pooled, so
// no connection dialled under p's rules outlives the requests that
// started under them. Requests sent through p afterwards still work,
// each on a connection of its own. Retire is safe to call more than once.
func (p *Policy) Retire() { p.transport.Retire() }

// Allows reports whether p lets an upstream name resolve to a: Allow
// wins, then Deny (with DefaultDeny) refuses. IPv4-mapped IPv6 addresses
// are judged as the IPv4 address they carry.
func (p *Policy) Allows(a netip.Addr) bool {
	a = a.Unmap()
	for _, pfx := range p.allow {
		if pfx.Contains(a) {
			return true
		}
	}
	for _, pfx := range p.deny {
		if pfx.Contains(a) {
			return false
		}
	}
	return true
}

// dial connects to an upstream address ("host:port"), enforcing p. A
// name is resolved here and the address checked is the one dialled, so a
// second DNS answer cannot differ from the one checked. An IP address
// written in the config is the config's own choice and is dialled as is.
func (p *Policy) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("outbound: splitting %q: %w", addr, err)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return p.dialer(ctx, network, addr)
	}
	addrs, err := p.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("outbound: resolving %s: %w", host, err)
	}
	var denied *DeniedError
	var errs []error
	for _, a := range addrs {
		if !p.Allows(a) {
			denied = &DeniedError{Host: host, Addr: a}
			continue
		}
		c, err := p.dialer(ctx, network, net.JoinHostPort(a.Unmap().String(), port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	switch {
	case len(errs) > 0:
		return nil, errors.Join(errs...)
	case denied != nil:
		return nil, denied
	}
	return nil, fmt.Errorf("outbound: %s resolved to no address", host)
}
