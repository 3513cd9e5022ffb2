// Package clientip decides which address a request comes from, so that
// limits key on the real client and not on a load balancer, and so that a
// client can never pick its own identity by sending a forwarding header.
//
// The socket peer is the client unless the peer is a trusted proxy. Only
// then is the forwarding header consulted, walking it right to left: each
// hop was appended by the proxy to its right, so an entry is believable
// only while every hop to its right is trusted. The first untrusted hop is
// the client. Everything to its left was written by the client and is
// ignored.
//
// An IPv6 client is keyed by its prefix (the /64 by default), not its
// address, because one subscriber holds a whole /64. That still leaves a
// holder of a larger allocation with many identities: a /48, a common
// allocation for a site, holds 65,536 /64s. So a Resolver can also name
// the client's wide network (the /48 by default), and the rate limiter
// counts the client against a wider, scaled-up limit there too: a /48
// together gets a few clients' allowance, not 65,536 of them. The /48 is
// the wide default because it is the largest prefix one end site commonly
// receives (RFC 6177; RIPE-690 gives businesses a /48 and homes a /56), so
// a home's /56 sits inside one too. IPv4 addresses are scarce enough to be
// keyed alone.
package clientip

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultIPv6Prefix is the IPv6 prefix length clients are keyed by when none
// is configured. A single IPv6 subscriber is usually given a whole /64 (RFC
// 6177, RFC 7421 SLAAC), so keying on the full address would let one host
// rotate through 2^64 identities.
const DefaultIPv6Prefix = 64

// DefaultIPv6WidePrefix is the prefix length of the wide network a
// configuration uses unless it says otherwise (see Options.IPv6WidePrefix).
const DefaultIPv6WidePrefix = 48

// Header names the forwarding header a Resolver reads from trusted proxies.
//
// Exactly one header is read, chosen by configuration, because mixing them
// is spoofable: if the proxy appends to X-Forwarded-For but passes a
// client-sent Forwarded header through untouched, a resolver reading both
// could take the client's word for its own address.
type Header int

const (
	// XForwardedFor reads the de facto X-Forwarded-For list. It is the zero
	// value because nearly every load balancer writes it.
	XForwardedFor Header = iota
	// Forwarded reads the for= parameter of the RFC 7239 Forwarded header.
	Forwarded
)

// String returns the configuration spelling of h.
func (h Header) String() string {
	switch h {
	case XForwardedFor:
		return "x-forwarded-for"
	case Forwarded:
		return "forwarded"
	}
	return "Header(" + strconv.Itoa(int(h)) + ")"
}

// ParseHeader parses the configuration spelling of a forwarding header,
// case-insensitively. The empty string means the default, XForwardedFor.
func ParseHeader(s string) (Header, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "x-forwarded-for":
		return XForwardedFor, nil
	case "forwarded":
		return Forwarded, nil
	}
	return 0, fmt.Errorf("unknown forwarding header %q: want x-forwarded-for or forwarded", s)
}

// Resolver finds the client address of a request. It is immutable after New
// and safe for concurrent use; a config reload builds a new one.
type Resolver struct {
	trusted        []netip.Prefix
	ipv6Prefix     int
	ipv6WidePrefix int // 0: no wide key
	header         Header
}

// Options configures a Resolver. NewResolver's errors name the fields by
// their YAML names in the client_ip configuration block.
type Options struct {
	// TrustedProxies lists the proxies whose forwarding headers are
	// believed; nil means none, so the socket peer is always the client.
	// Prefixes are normalised (masked, IPv4-mapped IPv6 turned into IPv4)
	// so callers may pass them straight from configuration.
	TrustedProxies []netip.Prefix
	// Header selects the forwarding header read from trusted peers; the
	// zero value is XForwardedFor.
	Header Header
	// IPv6Prefix is the prefix length IPv6 clients are keyed by, 1 to 128;
	// 0 means DefaultIPv6Prefix.
	IPv6Prefix int
	// IPv6WidePrefix is the prefix length of the wide network an IPv6
	// client is also counted in (AppendWideKey), shorter than IPv6Prefix.
	// 0 means none: clients are counted alone. The configuration's
	// default is DefaultIPv6WidePrefix; the zero value here is "none" so
	// that 0 in the configuration can switch it off.
	IPv6WidePrefix int
}

// NewResolver compiles a Resolver from o, reporting every invalid field at
// once; each error starts with the field's YAML name (ipv6_prefix,
// ipv6_wide_prefix, header) so that the configuration loader can add its
// path.
func NewResolver(o Options) (*Resolver, error) {
	if o.IPv6Prefix == 0 {
		o.IPv6Prefix = DefaultIPv6Prefix
	}
	var errs []error
	if o.IPv6Prefix < 1 || o.IPv6Prefix > 128 {
		errs = append(errs, fmt.Errorf("ipv6_prefix %d is not a prefix length (1-128)", o.IPv6Prefix))
	}
	switch w := o.IPv6WidePrefix; {
	case w < 0 || w > 128:
		errs = append(errs, fmt.Errorf("ipv6_wide_prefix %d is not a prefix length (1-128, or 0 for none)", w))
	case w != 0 && w >= o.IPv6Prefix:
		errs = append(errs, fmt.Errorf("ipv6_wide_prefix %d must be shorter than ipv6_prefix %d: the wide network holds many clients", w, o.IPv6Prefix))
	}
	if o.Header != XForwardedFor && o.Header != Forwarded {
		errs = append(errs, fmt.Errorf("header %v is not a forwarding header", o.Header))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return newResolver(o), nil
}

// New compiles a Resolver without a wide network: trusted, ipv6Prefix and
// header are Options' TrustedProxies, IPv6Prefix and Header, except that an
// ipv6Prefix of 0 or less means DefaultIPv6Prefix and one above 128 means
// 128. It remains until the gateway calls NewResolver, which validates
// and keys the wide network; new code calls NewResolver.
func New(trusted []netip.Prefix, ipv6Prefix int, header Header) *Resolver {
	if ipv6Prefix <= 0 {
		ipv6Prefix = DefaultIPv6Prefix
	}
	return newResolver(Options{TrustedProxies: trusted, IPv6Prefix: min(ipv6Prefix, 128), Header: header})
}

// newResolver builds a Resolver from valid options.
func newResolver(o Options) *Resolver {
	r := &Resolver{ipv6Prefix: o.IPv6Prefix, ipv6WidePrefix: o.IPv6WidePrefix, header: o.Header}
	r.trusted = make([]netip.Prefix, 0, len(o.TrustedProxies))
	for _, p := range o.TrustedProxies {
		if p.IsValid() {
			r.trusted = append(r.trusted, normalizePrefix(p))
		}
	}
	return r
}

// ClientIP returns the address of the client that sent r.
//
// If the socket peer (r.RemoteAddr) is not a trusted proxy it is the
// answer, whatever the headers say. Otherwise the configured forwarding
// header is walked right to left, across all of its field lines, skipping
// trusted hops; the first untrusted hop is the client. If every hop is
// trusted the leftmost one is the client.
//
// A malformed entry (not an IP address, "unknown", an obfuscated RFC 7239
// identifier, a broken quoted string, a Forwarded element without for=)
// stops the walk and the last address that was read successfully is
// returned. That address is a trusted hop, so the answer is conservative:
// a garbled header can make a client share its proxy's limit, but it can
// never make the gateway believe an address nobody vouched for.
//
// The result is IPv4 for IPv4-mapped IPv6 addresses and carries no zone. It
// is the zero Addr only when r.RemoteAddr itself is not an address (a Unix
// socket, for example); Key handles that case.
func (r *Resolver) ClientIP(req *http.Request) netip.Addr {
	peer, ok := parseRemoteAddr(req.RemoteAddr)
	if !ok || !r.Trusted(peer) {
		return peer
	}
	client := peer
	lines := req.Header[r.headerKey()]
	for i := len(lines) - 1; i >= 0; i-- {
		var (
			addr netip.Addr
			more bool
		)
		if r.header == Forwarded {
			addr, more = r.walkForwarded(lines[i], client)
		} else {
			addr, more = r.walkXFF(lines[i], client)
		}
		client = addr
		if !more {
			break
		}
	}
	return client
}

// Trusted reports whether addr is inside one of the trusted proxy prefixes.
func (r *Resolver) Trusted(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range r.trusted {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

func (r *Resolver) headerKey() string {
	if r.header == Forwarded {
		return "Forwarded"
	}
	return "X-Forwarded-For"
}

// walkXFF walks one X-Forwarded-For field line right to left, starting from
// client, the last believable address. It returns the new last believable
// address and whether the walk may continue into the line to the left.
func (r *Resolver) walkXFF(line string, client netip.Addr) (netip.Addr, bool) {
	for len(line) > 0 {
		var entry string
		if i := strings.LastIndexByte(line, ','); i >= 0 {
			entry, line = line[i+1:], line[:i]
		} else {
			entry, line = line, ""
		}
		entry = strings.TrimSpace(entry)
		if entry == "" {
			// RFC 9110 section 5.6.1: recipients ignore empty list elements.
			continue
		}
		addr, ok := parseNode(entry)
		if !ok {
			return client, false
		}
		client = addr
		if !r.Trusted(addr) {
			return client, false
		}
	}
	return client, true
}

// walkForwarded is walkXFF for one RFC 7239 Forwarded field line.
func (r *Resolver) walkForwarded(line string, client netip.Addr) (netip.Addr, bool) {
	// Elements are parsed left to right (quoted strings make right-to-left
	// scanning ambiguous) into a small stack buffer, then walked backwards.
	var buf [8]string
	fors, ok := forwardedFors(line, buf[:0])
	if !ok {
		return client, false
	}
	for i := len(fors) - 1; i >= 0; i-- {
		addr, ok := parseNode(fors[i])
		if !ok {
			return client, false
		}
		client = addr
		if !r.Trusted(addr) {
			return client, false
		}
	}
	return client, true
}

// forwardedFors appends the for= value of every element of a Forwarded
// field line to dst. An element without for= contributes "" so that the
// walk stops there: that hop did not say whom it received the request from.
// ok is false if the line does not parse.
func forwardedFors(line string, dst []string) ([]string, bool) {
	i := 0
	forValue, sawPair := "", false
	hasFor := false
	endElement := func() {
		if sawPair {
			if hasFor {
				dst = append(dst, forValue)
			} else {
				dst = append(dst, "")
			}
		}
		forValue, sawPair, hasFor = "", false, false
	}
	for {
		i = skipOWS(line, i)
		if i >= len(line) {
			endElement()
			return dst, true
		}
		switch line[i] {
		case ',':
			endElement()
			i++
			continue
		case ';':
			i++
			continue
		}
		// forwarded-pair = token "=" value
		start := i
		for i < len(line) && isTokenChar(line[i]) {
			i++
		}
		name := line[start:i]
		if name == "" || i >= len(line) || line[i] != '=' {
			return dst, false
		}
		i++
		var value string
		if i < len(line) && line[i] == '"' {
			end := strings.IndexByte(line[i+1:], '"')
			if end < 0 {
				return dst, false
			}
			value = line[i+1 : i+1+end]
			if strings.IndexByte(value, '\\') >= 0 {
				// No valid node needs quoted-pair escapes; refusing them
				// keeps the parser simple and the walk conservative.
				return dst, false
			}
			i += end + 2
		} else {
			start := i
			for i < len(line) && isTokenChar(line[i]) {
				i++
			}
			value = line[start:i]
		}
		sawPair = true
		if strings.EqualFold(name, "for") {
			if hasFor {
				return dst, false // two for= in one element: ambiguous
			}
			forValue, hasFor = value, true
		}
		i = skipOWS(line, i)
		if i < len(line) && line[i] != ';' && line[i] != ',' {
			return dst, false
		}
	}
}

func skipOWS(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return i
}

// isTokenChar reports whether c is an RFC 9110 tchar. ':' and '[' ']' are
// not tchars, but they are accepted so that an unquoted IPv4 "1.2.3.4:80"
// or a sloppy unquoted IPv6 node is still read.
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~:[]", c) >= 0
}

// parseNode parses one forwarding entry: an IP address, optionally with a
// port ("192.0.2.1:8080", "[2001:db8::1]:443") or brackets ("[2001:db8::1]"),
// as load balancers write them into X-Forwarded-For and RFC 7239 section 6
// writes them into for=.
func parseNode(s string) (netip.Addr, bool) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return netip.Addr{}, false
		}
		if rest := s[end+1:]; rest != "" && !validPort(rest) {
			return netip.Addr{}, false
		}
		addr, err := netip.ParseAddr(s[1:end])
		if err != nil || !addr.Is6() {
			return netip.Addr{}, false
		}
		return normalizeAddr(addr), true
	}
	if addr, err := netip.ParseAddr(s); err == nil {
		return normalizeAddr(addr), true
	}
	// IPv4 with a port; an IPv6 address with a port must be bracketed.
	if i := strings.IndexByte(s, ':'); i >= 0 && validPort(s[i:]) {
		if addr, err := netip.ParseAddr(s[:i]); err == nil && addr.Is4() {
			return addr, true
		}
	}
	return netip.Addr{}, false
}

// validPort reports whether s is ":" followed by 1-5 digits.
func validPort(s string) bool {
	if len(s) < 2 || len(s) > 6 || s[0] != ':' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// parseRemoteAddr parses http.Request.RemoteAddr, which is "host:port" for
// TCP but may be a bare address in tests or other servers.
func parseRemoteAddr(s string) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return normalizeAddr(ap.Addr()), true
	}
	if addr, err := netip.ParseAddr(s); err == nil {
		return normalizeAddr(addr), true
	}
	return netip.Addr{}, false
}

// normalizeAddr unmaps IPv4-mapped IPv6 so that a dual-stack listener and an
// IPv4 listener key the same client identically, and drops the zone, which
// is local to this host and not part of the client's identity.
func normalizeAddr(a netip.Addr) netip.Addr {
	return a.Unmap().WithZone("")
}

// normalizePrefix masks p and turns an IPv4-mapped IPv6 prefix of at least
// 96 bits into the IPv4 prefix it covers, because addresses are unmapped
// before they are matched.
func normalizePrefix(p netip.Prefix) netip.Prefix {
	addr, bits := p.Addr().WithZone(""), p.Bits()
	if addr.Is4In6() && bits >= 96 {
		addr, bits = addr.Unmap(), bits-96
	}
	return netip.PrefixFrom(addr, bits).Masked()
}

// AppendKey appends the limiter key of addr to dst and returns the extended
// buffer. IPv4 addresses are keyed by the full address, IPv6 addresses by
// their configured prefix ("2001:db8:1:2::/64"), so that one subscriber
// cannot multiply its limit by rotating through its own prefix. An invalid
// addr (ClientIP could not read the peer) appends "unknown", so all such
// requests share one limit rather than escaping it.
//
// It does not allocate when dst has room, which keeps key building off the
// garbage collector on the request path.
func (r *Resolver) AppendKey(dst []byte, addr netip.Addr) []byte {
	if !addr.IsValid() {
		return append(dst, "unknown"...)
	}
	addr = normalizeAddr(addr)
	if addr.Is4() || r.ipv6Prefix >= 128 {
		return addr.AppendTo(dst)
	}
	p, err := addr.Prefix(r.ipv6Prefix)
	if err != nil {
		// Unreachable: ipv6Prefix is kept within 1..128.
		return addr.AppendTo(dst)
	}
	dst = p.Addr().AppendTo(dst)
	dst = append(dst, '/')
	return strconv.AppendInt(dst, int64(r.ipv6Prefix), 10)
}

// Key returns the limiter key of addr as a string; see AppendKey.
func (r *Resolver) Key(addr netip.Addr) string {
	var buf [64]byte
	return string(r.AppendKey(buf[:0], addr))
}

// AppendWideKey appends the limiter key of the wide network addr belongs
// to ("2001:db8:1::/48") to dst and returns the extended buffer. It returns
// dst unchanged when there is no wide network: for an IPv4 address
// (including an IPv4-mapped one), an invalid one, or a Resolver without
// Options.IPv6WidePrefix. A wide key never equals a client key of the same
// Resolver, because its prefix length differs.
//
// It does not allocate when dst has room.
func (r *Resolver) AppendWideKey(dst []byte, addr netip.Addr) []byte {
	if r.ipv6WidePrefix == 0 || !addr.IsValid() {
		return dst
	}
	addr = normalizeAddr(addr)
	if addr.Is4() {
		return dst
	}
	p, err := addr.Prefix(r.ipv6WidePrefix)
	if err != nil {
		return dst // unreachable: ipv6WidePrefix is kept within 1..127
	}
	dst = p.Addr().AppendTo(dst)
	dst = append(dst, '/')
	return strconv.AppendInt(dst, int64(r.ipv6WidePrefix), 10)
}

// WideKey returns the limiter key of addr's wide network as a string, or
// "" when there is none; see AppendWideKey.
func (r *Resolver) WideKey(addr netip.Addr) string {
	var buf [64]byte
	return string(r.AppendWideKey(buf[:0], addr))
}

// ParsePrefix parses one trusted proxy entry: a CIDR prefix ("10.0.0.0/8",
// "2001:db8::/32") or a plain address, which means that single host (/32 or
// /128). Host bits in a prefix are masked off ("10.1.2.3/8" is 10.0.0.0/8),
// as operators often write a proxy's own address with its subnet length.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.IndexByte(s, '%') >= 0 {
		return netip.Prefix{}, fmt.Errorf("%q: zones are not allowed in trusted proxies", s)
	}
	if strings.IndexByte(s, '/') >= 0 {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q: not a CIDR prefix", s)
		}
		return normalizePrefix(p), nil
	}
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q: not an IP address or CIDR prefix", s)
	}
	return normalizePrefix(netip.PrefixFrom(addr, addr.BitLen())), nil
}

// ParsePrefixes parses a list of trusted proxy entries with ParsePrefix and
// reports every bad entry at once, each prefixed with its index ("[2] ...")
// so the configuration loader can add the field path.
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	var errs []error
	for i, s := range list {
		p, err := ParsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("[%d] %w", i, err))
			continue
		}
		out = append(out, p)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}
