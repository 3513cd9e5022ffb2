package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/keyward/keyward/internal/upstream"
)

// outboundPolicy says which addresses an upstream host name may resolve
// to. It exists because DNS is outside the config: a name that resolves
// to 169.254.169.254 would turn a route into a reader of cloud metadata.
type outboundPolicy struct {
	deny, allow []netip.Prefix
}

// defaultDeny are addresses no upstream name should resolve to.
var defaultDeny = mustPrefixes(
	"0.0.0.0/8", "::/128", // unspecified: "this host" on many stacks
	"169.254.0.0/16", "fe80::/10", // link-local, home of cloud metadata
	"fd00:ec2::254/128",       // AWS metadata over IPv6
	"100.100.100.200/32",      // Alibaba Cloud metadata
	"224.0.0.0/4", "ff00::/8", // multicast
	"255.255.255.255/32",
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// parsePrefix accepts a CIDR or a single address.
func parsePrefix(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.ParsePrefix(s)
}

func (p *outboundPolicy) allows(a netip.Addr) bool {
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

// deniedError is returned when every address of a host is denied.
type deniedError struct {
	host string
	addr netip.Addr
}

// Denied marks the error for the proxy's classification.
func (e *deniedError) Denied() bool { return true }

func (e *deniedError) Error() string {
	return fmt.Sprintf("upstream %s resolved to %s, which the outbound policy denies", e.host, e.addr)
}

// NewTransport returns the upstream client: internal/upstream, an
// HTTP/1.1 client built for a gateway (no goroutine pair per connection,
// no header clones; measured in docs/PERFORMANCE.md), with up to 512 idle
// connections per host, the outbound address policy enforced when
// dialling, 64 KiB of response headers at most, and no proxy environment
// variables. It never follows redirects and never asks for compressed
// responses, so bodies arrive as the scrubber can read them.
func NewTransport() http.RoundTripper {
	return upstream.New(upstream.Options{DialContext: dial, MaxResponseHeaderBytes: 64 << 10})
}

var dialer = &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}

// dial connects to an upstream, enforcing the outbound policy of the
// gateway serving the request (found in ctx). Names are resolved here and
// the checked address is dialled, so a second DNS answer cannot differ
// from the one checked.
func dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return dialer.DialContext(ctx, network, addr) // written in the config
	}
	policy := &outboundPolicy{deny: defaultDeny}
	if x, ok := ctx.Value(exchangeKey{}).(*exchange); ok && x.g.outbound != nil {
		policy = x.g.outbound
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	var denied *deniedError
	var errs []error
	for _, a := range addrs {
		if !policy.allows(a) {
			denied = &deniedError{host: host, addr: a}
			continue
		}
		c, err := dialer.DialContext(ctx, network, net.JoinHostPort(a.Unmap().String(), port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 && denied != nil {
		return nil, denied
	}
	return nil, errors.Join(errs...)
}

// slowBodyGuard bounds how long a client may take to send its body. The
// deadline is lifted once the body has been read: it must not cut a long
// response that follows (net/http keeps reading the connection in the
// background to notice a client that goes away).
func (g *Gateway) slowBodyGuard(w http.ResponseWriter, body io.ReadCloser) io.ReadCloser {
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(g.opts.Now().Add(g.settings.ReadBodyTimeout)) != nil {
		return body // not a net/http connection (a test recorder): nothing to bound
	}
	return &deadlineBody{ReadCloser: body, rc: rc}
}

type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}
