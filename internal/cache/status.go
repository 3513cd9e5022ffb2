package cache

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The Cache-Status values (RFC 9211) the cache writes, with "keyward" as
// the cache's name:
//
//	keyward; hit; ttl=42                         fresh entry
//	keyward; hit; ttl=-3; detail=stale-while-revalidate
//	                                             stale entry, refreshing in the background
//	keyward; fwd=uri-miss; fwd-status=200; stored; ttl=60
//	                                             fetched and stored (no "stored" if not storable)
//	keyward; fwd=stale; fwd-status=200; stored; ttl=60
//	                                             the entry was too stale to use; fetched again
//	keyward; fwd=uri-miss; fwd-status=200; collapsed; ttl=59
//	                                             answered from a concurrent request's response
//	keyward; fwd=stale; fwd-status=503; ttl=-8; detail=stale-if-error
//	                                             upstream failed; stale entry served
//	keyward; fwd=uri-miss; fwd-status=503; collapsed
//	                                             a concurrent request's upstream call, or
//	                                             one just before, failed; its failure served
//	keyward; fwd=method                          not GET or HEAD; not cached
//	keyward; fwd=bypass; detail=request-body     a GET or HEAD with a body; not cached
//	keyward; fwd=uri-miss; fwd-status=200; detail=private
//	                                             fetched, not stored, and why
//
// ttl is the remaining freshness in whole seconds, negative when stale.
//
// A response fetched but not stored says why in detail, one of a fixed
// set. What the response's status and header show comes first:
//
//	status            the status is not one the route stores
//	set-cookie        the response sets a cookie (Set-Cookie, Set-Cookie2)
//	trailer           the response announces trailers, which a stored copy would lack
//	no-store          Cache-Control: no-store
//	private           Cache-Control: private
//	no-cache          Cache-Control: no-cache (the cache does not revalidate)
//	vary-star         Vary: * (RFC 9111 section 4.1: it never matches a request)
//	event-stream      a text/event-stream, which never ends
//	content-length    a malformed Content-Length
//	too-large         a Content-Length above the route's max_entry
//	stale-on-arrival  the upstream's max-age, less its Age, leaves no freshness
//	personal          the gateway called DoNotStore (it removed a Set-Cookie)
//
// then, for a response that was storable, why the request did not store:
//
//	head              a HEAD request (it gets no body to store)
//	request-no-store  the request said Cache-Control: no-store
//	concurrent        the request waited for another request for the same
//	                  key, whose response was not stored or did not come;
//	                  only the first request of a key stores
//
// The header is sent before the body, so what only the body or what
// follows it shows is not reported: a body longer than max_entry or
// shorter than its Content-Length, a trailer (a Cache-Control or a
// Set-Cookie in it), or DoNotStore called after the header. Such a
// response says "stored" and is not; see tee.cacheStatus.

func statusHit(e *Entry, now time.Time) string {
	var buf [64]byte
	b := append(buf[:0], "keyward; hit; ttl="...)
	b = strconv.AppendInt(b, ttlSeconds(e, now), 10)
	return string(b)
}

// statusStale is a stale entry served: fwd is empty when the request was
// not forwarded (stale-while-revalidate).
func statusStale(e *Entry, now time.Time, fwd string, fwdStatus int, detail string) string {
	var buf [128]byte
	b := append(buf[:0], "keyward; "...)
	if fwd == "" {
		b = append(b, "hit"...)
	} else {
		b = append(b, "fwd="...)
		b = append(b, fwd...)
		b = append(b, "; fwd-status="...)
		b = strconv.AppendInt(b, int64(fwdStatus), 10)
	}
	b = append(b, "; ttl="...)
	b = strconv.AppendInt(b, ttlSeconds(e, now), 10)
	b = append(b, "; detail="...)
	b = append(b, detail...)
	return string(b)
}

// statusFailed is a failure passed on from another request's upstream
// call (fwd-status 502 when it broke off without an answer).
func statusFailed(fwd string, fwdStatus int) string {
	var buf [64]byte
	b := append(buf[:0], "keyward; fwd="...)
	b = append(b, fwd...)
	b = append(b, "; fwd-status="...)
	b = strconv.AppendInt(b, int64(fwdStatus), 10)
	b = append(b, "; collapsed"...)
	return string(b)
}

func statusCollapsed(e *Entry, now time.Time, fwd string, fwdStatus int) string {
	var buf [128]byte
	b := append(buf[:0], "keyward; fwd="...)
	b = append(b, fwd...)
	b = append(b, "; fwd-status="...)
	b = strconv.AppendInt(b, int64(fwdStatus), 10)
	b = append(b, "; collapsed; ttl="...)
	b = strconv.AppendInt(b, ttlSeconds(e, now), 10)
	return string(b)
}

// ttlSeconds is the remaining freshness rounded down, so that a response
// stale by half a second says -1, not 0.
func ttlSeconds(e *Entry, now time.Time) int64 {
	d := e.Expires.Sub(now)
	s := int64(d / time.Second)
	if d < 0 && d%time.Second != 0 {
		s--
	}
	return s
}

// notModified evaluates If-None-Match, or else If-Modified-Since, against
// a stored 200 response (RFC 9110 section 13.2.2).
func notModified(r *http.Request, h http.Header) bool {
	if inm, ok := r.Header["If-None-Match"]; ok {
		etag := h.Get("Etag")
		if etag == "" {
			return false
		}
		for _, line := range inm {
			for tag := range strings.SplitSeq(line, ",") {
				tag = strings.TrimSpace(tag)
				if tag == "*" || weakMatch(tag, etag) {
					return true
				}
			}
		}
		return false
	}
	ims := r.Header.Get("If-Modified-Since")
	lm := h.Get("Last-Modified")
	if ims == "" || lm == "" {
		return false
	}
	since, err := http.ParseTime(ims)
	if err != nil {
		return false
	}
	modified, err := http.ParseTime(lm)
	return err == nil && !modified.After(since)
}

// weakMatch is the weak comparison of RFC 9110 section 8.8.3.2.
func weakMatch(a, b string) bool {
	return strings.TrimPrefix(a, "W/") == strings.TrimPrefix(b, "W/")
}
