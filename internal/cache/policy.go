package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keyward/keyward/internal/httpsyntax"
)

// DefaultMaxEntry is the largest response body a route stores when its
// policy does not say: large enough for any JSON API page, small enough
// that a few hundred of them fit the default memory bound.
const DefaultMaxEntry = 1 << 20

// PolicyOptions is one route's cache configuration, as the config package
// decodes it from the route's `cache:` block.
type PolicyOptions struct {
	// TTL is how long a stored response is served as fresh. Required and
	// positive.
	TTL time.Duration
	// Vary names client request headers whose values are part of the key
	// whether or not they are forwarded, so that responses that differ by
	// them are stored apart. Headers that are forwarded upstream need not be
	// listed: KeyFor keys on all of them. Nil means none.
	Vary []string
	// StaleWhileRevalidate is how long past TTL a stale response is still
	// served while one background request refreshes it (RFC 5861 section
	// 3). 0 means never.
	StaleWhileRevalidate time.Duration
	// StaleIfError is how long past TTL a stale response is served instead
	// of an upstream failure or 5xx (RFC 5861 section 4). 0 means never.
	StaleIfError time.Duration
	// HonorUpstream makes the upstream's Cache-Control s-maxage, or else
	// max-age, shorten the freshness lifetime: the lifetime is the smaller
	// of TTL and the upstream's, less the upstream's Age. false means TTL
	// alone, whatever the upstream says about lifetimes (no-store, private
	// and no-cache are always honoured).
	HonorUpstream bool
	// MaxEntry is the largest body stored, in bytes; a larger response
	// streams through uncached. 0 means DefaultMaxEntry.
	MaxEntry int64
	// Statuses are the response status codes stored. Nil means only 200.
	// Allowed: 2xx except 206, 3xx except 304, 404 and 410 — the codes
	// whose response is complete without the request (no partial content,
	// no revalidation answer).
	Statuses []int
	// UpstreamTimeout is how long the route waits for its upstream's
	// response head (the route's timeout). With a store shared by several
	// instances (Redis), the instance calling the upstream for a key locks
	// the key for this long plus LockSlack, so that if it dies another
	// instance takes over after at most that. 0 means
	// DefaultUpstreamTimeout.
	UpstreamTimeout time.Duration
}

// DefaultUpstreamTimeout is PolicyOptions.UpstreamTimeout when it is not
// set: the route timeout's default.
const DefaultUpstreamTimeout = 30 * time.Second

// LockSlack is added to a route's upstream timeout to make the lock's
// lifetime: once the head has arrived within the timeout, the body (at
// most max_entry) is read and stored; the lock should outlive that on a
// healthy upstream, since a lock that expires early lets a second
// instance call the upstream.
const LockSlack = time.Second

// Policy is one route's compiled cache configuration. It is immutable and
// safe for concurrent use.
type Policy struct {
	ttl      time.Duration
	swr      time.Duration
	sie      time.Duration
	vary     []string // canonical header names, in configuration order
	honor    bool
	maxEntry int64
	statuses []int
	lockTTL  time.Duration
}

// NewPolicy compiles o, reporting every problem at once.
func NewPolicy(o PolicyOptions) (*Policy, error) {
	var errs []error
	if o.TTL <= 0 {
		errs = append(errs, fmt.Errorf("ttl %v must be positive", o.TTL))
	}
	if o.StaleWhileRevalidate < 0 {
		errs = append(errs, fmt.Errorf("stale_while_revalidate %v is negative", o.StaleWhileRevalidate))
	}
	if o.StaleIfError < 0 {
		errs = append(errs, fmt.Errorf("stale_if_error %v is negative", o.StaleIfError))
	}
	if o.UpstreamTimeout < 0 {
		errs = append(errs, fmt.Errorf("upstream timeout %v is negative", o.UpstreamTimeout))
	}
	if o.MaxEntry < 0 {
		errs = append(errs, fmt.Errorf("max_entry %d is negative", o.MaxEntry))
	}
	p := &Policy{
		ttl:      o.TTL,
		swr:      o.StaleWhileRevalidate,
		sie:      o.StaleIfError,
		honor:    o.HonorUpstream,
		maxEntry: o.MaxEntry,
		statuses: []int{http.StatusOK},
		lockTTL:  o.UpstreamTimeout + LockSlack,
	}
	if o.UpstreamTimeout == 0 {
		p.lockTTL = DefaultUpstreamTimeout + LockSlack
	}
	if p.maxEntry == 0 {
		p.maxEntry = DefaultMaxEntry
	}
	for i, name := range o.Vary {
		if !httpsyntax.IsToken(name) {
			errs = append(errs, fmt.Errorf("vary[%d]: %q is not a header name", i, name))
			continue
		}
		c := textproto.CanonicalMIMEHeaderKey(name)
		if slices.Contains(p.vary, c) {
			errs = append(errs, fmt.Errorf("vary[%d]: %s is listed twice", i, c))
			continue
		}
		p.vary = append(p.vary, c)
	}
	if o.Statuses != nil {
		p.statuses = nil
		for i, s := range o.Statuses {
			if !storableStatus(s) {
				errs = append(errs, fmt.Errorf("statuses[%d]: %d cannot be cached: want 2xx except 206, 3xx except 304, 404 or 410", i, s))
				continue
			}
			if !slices.Contains(p.statuses, s) {
				p.statuses = append(p.statuses, s)
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

func storableStatus(s int) bool {
	switch {
	case s == http.StatusPartialContent, s == http.StatusNotModified:
		return false
	case s >= 200 && s <= 399:
		return true
	}
	return s == http.StatusNotFound || s == http.StatusGone
}

// staleWindow is how long past its freshness an entry can still be used,
// and so how much longer than its TTL a store keeps it.
func (p *Policy) staleWindow() time.Duration { return max(p.swr, p.sie) }

// Key identifies one cacheable response: a SHA-256 over everything that
// selects it. Hashing keeps keys bounded whatever the client sends, and
// keeps client text (which may be personal) out of a shared store.
type Key [sha256.Size]byte

// String returns the key in hex, as stores that need text use it.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// keyVersion starts every hashed key, so a change to the key's layout
// never serves an entry stored under the old one.
const keyVersion = "keyward-cache-v1"

// Key returns the key of a request: stage and route name, the normalised
// escaped path, the query parameters the route allows (pass only those,
// not the ones the gateway sets), sorted by name and then value, and the
// values of the policy's Vary headers from h, the inbound request's
// header.
//
// Key is the key before KeyFor and is kept only until the gateway calls
// KeyFor: it leaves out the headers a route forwards without listing them
// in Vary (Accept, Accept-Language, headers.allow) and the parameters a
// route sets from path parameters, so responses that differ by those are
// stored under one key and one client's variant is served to others.
//
// Every part is length-prefixed, so no two different requests hash the
// same input. A Vary header's field lines are joined and split on commas
// and each element trimmed, so "en, de" and "en,de" share an entry; an
// absent header and an empty one are kept apart.
func (p *Policy) Key(stage, route, path string, query url.Values, h http.Header) Key {
	var stack [512]byte
	b := append(stack[:0], keyVersion...)
	b = appendField(b, stage)
	b = appendField(b, route)
	b = appendField(b, path)

	names := make([]string, 0, len(query))
	for name := range query {
		names = append(names, name)
	}
	slices.Sort(names)
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, name := range names {
		vs := query[name]
		if !slices.IsSorted(vs) {
			vs = slices.Sorted(slices.Values(vs))
		}
		b = appendField(b, name)
		b = binary.AppendUvarint(b, uint64(len(vs)))
		for _, v := range vs {
			b = appendField(b, v)
		}
	}

	return sha256.Sum256(p.appendVary(b, h))
}

// appendVary appends the values of the policy's Vary headers in h: a byte
// for absent or present, then the canonical value.
func (p *Policy) appendVary(b []byte, h http.Header) []byte {
	for _, name := range p.vary {
		vs, ok := h[name]
		if !ok {
			b = append(b, 0)
			continue
		}
		b = append(b, 1)
		b = appendCanonicalValue(b, vs)
	}
	return b
}

// keyForVersion starts every key KeyFor hashes: a layout of its own, so
// that its keys and Key's never meet whatever the inputs.
const keyForVersion = "keyward-cache-v2"

// conditionalHeaders are the request fields that ask the upstream for
// less than the full response. Its answer to them is either one the cache
// never stores (304, 206, 412) or the full response, the same whatever
// their values, so KeyFor leaves them out and a background refresh, which
// must get the full response, drops them.
var conditionalHeaders = []string{"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range", "Range"}

// KeyFor keys a request by exactly what goes upstream on a miss: the
// upstream path, the upstream query string as sent (repeated values keep
// their order, as they do upstream), and every request header forwarded
// (fwd: canonical names, values as sent; the conditional headers the
// cache strips are not in it), plus the route's configured vary headers
// read from the client request h.
//
// Two requests share a key only if the upstream would receive the same
// request for both, so one client's variant is never served to another:
// what a client sends either reaches the upstream, and then it is in the
// key, or it does not, and then the upstream cannot answer by it. That
// holds only if fwd is complete: every field whose value can differ
// between two requests of the route, the client's forwarded fields and
// the ones the gateway sets from path parameters. Fields the gateway sets
// to one value for the whole route may be left out, since the route is in
// the key. Fields the gateway sets from secrets may be passed: the key is
// a one-way hash, and a rotated secret starts new entries. A field in fwd
// with no values is not sent, and is left out like an absent one;
// conditional fields (If-None-Match, If-Modified-Since, If-Match,
// If-Unmodified-Since, If-Range, Range) are left out, so fwd can be the
// outbound header as it is.
//
// Header names are sorted and each field's values keep their order and
// spelling (the upstream sees them so); every part is length-prefixed,
// so no two different requests hash the same input. The configured vary
// headers are read as Key reads them. A request of the usual size is
// encoded on the stack: KeyFor does not allocate.
func (p *Policy) KeyFor(stage, route, path, rawQuery string, fwd, h http.Header) Key {
	var stack [512]byte
	b := append(stack[:0], keyForVersion...)
	b = appendField(b, stage)
	b = appendField(b, route)
	b = appendField(b, path)
	b = appendField(b, rawQuery)

	var nameStack [16]string
	names := nameStack[:0]
	for name, vs := range fwd {
		if len(vs) > 0 && !slices.Contains(conditionalHeaders, name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, name := range names {
		vs := fwd[name]
		b = appendField(b, name)
		b = binary.AppendUvarint(b, uint64(len(vs)))
		for _, v := range vs {
			b = appendField(b, v)
		}
	}
	return sha256.Sum256(p.appendVary(b, h))
}

func appendField(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendCanonicalValue appends the list elements of a header's field lines,
// trimmed of optional whitespace (RFC 9110 section 5.6.1), joined by ",",
// length-prefixed.
func appendCanonicalValue(b []byte, lines []string) []byte {
	var v []byte
	var stack [128]byte
	v = stack[:0]
	for _, line := range lines {
		for elem := range strings.SplitSeq(line, ",") {
			elem = strings.Trim(elem, " \t")
			if elem == "" {
				continue
			}
			if len(v) > 0 {
				v = append(v, ',')
			}
			v = append(v, elem...)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// cacheControl is what the cache reads from a Cache-Control field.
type cacheControl struct {
	noStore, noCache, private, mustRevalidate bool
	maxAge, sMaxAge                           time.Duration // -1 when absent
}

// parseCacheControl reads the directives the cache acts on (RFC 9111
// section 5.2). A directive with a malformed argument is treated as
// absent except no-cache and private, whose field-name forms (no-cache="x")
// still forbid storing the whole response here, since the cache cannot
// store a response without some of its fields.
func parseCacheControl(lines []string) cacheControl {
	cc := cacheControl{maxAge: -1, sMaxAge: -1}
	for _, line := range lines {
		for d := range strings.SplitSeq(line, ",") {
			d = strings.Trim(d, " \t")
			name, arg, _ := strings.Cut(d, "=")
			name = strings.ToLower(strings.TrimSpace(name))
			arg = strings.Trim(strings.TrimSpace(arg), `"`)
			switch name {
			case "no-store":
				cc.noStore = true
			case "no-cache":
				cc.noCache = true
			case "private":
				cc.private = true
			case "must-revalidate", "proxy-revalidate":
				cc.mustRevalidate = true
			case "max-age":
				if s, err := strconv.ParseInt(arg, 10, 64); err == nil && s >= 0 {
					cc.maxAge = seconds(s)
				}
			case "s-maxage":
				if s, err := strconv.ParseInt(arg, 10, 64); err == nil && s >= 0 {
					cc.sMaxAge = seconds(s)
				}
			}
		}
	}
	return cc
}

// seconds converts a delta-seconds value, saturating like RFC 9111
// section 1.2.2 asks rather than overflowing.
func seconds(s int64) time.Duration {
	const most = int64(1<<63-1) / int64(time.Second)
	return time.Duration(min(s, most)) * time.Second
}

// requestNoStore reports whether the client asked that nothing of this
// exchange be stored. Other request directives (no-cache, max-age=0) are
// ignored on purpose: honouring them would let any client bypass the cache
// and spend the upstream quota the cache protects.
func requestNoStore(r *http.Request) bool {
	cc, ok := r.Header["Cache-Control"]
	return ok && parseCacheControl(cc).noStore
}

// verdict is the cache's decision about a response, made once its status
// and headers are known.
type verdict struct {
	store   bool
	why     string        // why not, for tests
	fresh   time.Duration // freshness lifetime remaining at receipt
	age     time.Duration // the upstream's Age
	mustRev bool
}

// judge decides whether a response with status and header may be stored
// under p, and for how long. It is called before the body is read; the
// body can still disqualify the response (too large, truncated).
func (p *Policy) judge(status int, h http.Header) verdict {
	if !slices.Contains(p.statuses, status) {
		return verdict{why: "status"}
	}
	if _, ok := h["Set-Cookie"]; ok {
		return verdict{why: "set-cookie"}
	}
	if _, ok := h["Set-Cookie2"]; ok {
		return verdict{why: "set-cookie"}
	}
	if _, ok := h["Trailer"]; ok {
		// Trailers arrive after the body and are not stored, so a stored
		// copy would lack them.
		return verdict{why: "trailer"}
	}
	cc := parseCacheControl(h["Cache-Control"])
	switch {
	case cc.noStore:
		return verdict{why: "no-store"}
	case cc.private:
		return verdict{why: "private"}
	case cc.noCache:
		return verdict{why: "no-cache"}
	}
	// The upstream's Vary names the request fields its answer was chosen
	// by (RFC 9110 section 12.5.5). A named field needs no check here,
	// because KeyFor keys on everything the upstream received: a field
	// the client sent and the gateway forwarded is in the key, as sent;
	// one the gateway did not forward never reached the upstream, which
	// cannot have chosen by the client's value of it (it saw the gateway's
	// own value or none, the same for every request of the key). "*" is
	// a choice by something other than request fields, which no key can
	// hold: RFC 9111 section 4.1 says it never matches, so it is not
	// stored. Inputs KeyFor cannot see are kept out instead: a request
	// with a body bypasses the cache (Serve).
	if httpsyntax.HasToken(h["Vary"], "*") {
		return verdict{why: "vary-star"}
	}
	if mt, _, _ := strings.Cut(h.Get("Content-Type"), ";"); strings.EqualFold(strings.TrimSpace(mt), "text/event-stream") {
		return verdict{why: "event-stream"}
	}
	if cl := h.Get("Content-Length"); cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 {
			return verdict{why: "content-length"}
		}
		if n > p.maxEntry {
			return verdict{why: "too-large"}
		}
	}
	v := verdict{store: true, fresh: p.ttl, mustRev: cc.mustRevalidate}
	if a := h.Get("Age"); a != "" {
		if s, err := strconv.ParseInt(a, 10, 64); err == nil && s > 0 {
			v.age = seconds(s)
		}
	}
	if p.honor {
		upstream := cc.sMaxAge
		if upstream < 0 {
			upstream = cc.maxAge
		}
		if upstream >= 0 {
			v.fresh = min(v.fresh, upstream-v.age)
		}
	}
	if v.fresh <= 0 {
		return verdict{why: "stale-on-arrival"}
	}
	return v
}
