package cache

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keyward/keyward/internal/httpsyntax"
)

// tee is the ResponseWriter fetch writes to. It passes the response to the
// client as it arrives — streaming, flushing and 1xx responses work as
// without a cache — and keeps a copy of a storable response's body, up
// to the policy's limit, so that a large body is never buffered whole.
//
// Until the response's header is written, fetch gets a header map of its
// own, so the stored fields are exactly the response's and never those
// the gateway set on the client's writer before (CORS, RateLimit,
// X-Request-Id); WriteHeader adds them to the client's header, as
// httputil.ReverseProxy adds the upstream's, and empties that map: from
// then on, as with net/http's own writer, fetch may only put trailers in
// it (keyward's proxy does, having kept the map from before the header),
// and finish passes them on.
//
// While a stale entry could still replace the response (stale is set and
// the response is being kept to store), the response is held: nothing
// reaches the client until fetch has returned complete, so that a body
// that breaks off midway is answered with the stale entry rather than cut.
// That costs such a response its streaming, only while a stale entry
// exists and only up to the policy's max_entry (past it, what was held is
// sent and the rest streams).
type tee struct {
	w     http.ResponseWriter
	h     http.Header
	c     *Cache
	p     *Policy
	fwd   string // the fwd parameter of Cache-Status
	store bool   // whether a storable response is kept
	why   string // the detail of Cache-Status when store is false and the response itself was storable
	stale *Entry // served instead of a 5xx, if not nil
	// keepFailure keeps a 5xx response, up to maxFailureBody, to pass on
	// to the requests waiting for it.
	keepFailure bool

	wrote     bool
	status    int
	verdict   verdict
	received  time.Time
	declared  int64       // Content-Length, -1 if none
	header    http.Header // the stored form of the response's header, taken when it is written
	announced []string    // the response's Trailer field
	buf       []byte
	capture   bool        // still copying the body into buf
	swallow   bool        // discarding a 5xx that stale replaces
	held      http.Header // the response's fields while it is held; nil when not held
	fail      *failure    // the 5xx kept to pass on; nil if none, or too large to keep
	// refused is set by DoNotStore; atomic so that a call from another
	// goroutine than fetch's is not a data race, though only one made
	// before fetch returns has an effect.
	refused atomic.Bool

	// onGiveUp, if not nil, is called once when the response turns out not
	// storable, so that requests waiting for it need not wait for its end.
	onGiveUp func()
}

// Header implements http.ResponseWriter.
func (t *tee) Header() http.Header {
	if t.wrote && !t.swallow && t.held == nil {
		// Trailers are set after the header is written; they go straight
		// to the client. A swallowed response's stay in t.h, away from
		// the stale response that replaces it; a held one's too, until
		// finish passes them on.
		return t.w.Header()
	}
	return t.h
}

// WriteHeader implements http.ResponseWriter. A 1xx is passed on at
// once and is not the response.
func (t *tee) WriteHeader(code int) {
	if t.wrote {
		return
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		t.informational(code)
		return
	}
	t.wrote, t.status = true, code
	t.received = t.c.now()
	t.declared = -1
	// Judged even when nothing is kept, so that Cache-Status says what in
	// the response, if anything, would have prevented storing it.
	t.verdict = t.p.judge(code, t.h)
	switch {
	case !t.verdict.store:
	case t.refused.Load():
		t.verdict = verdict{why: "personal"}
	case !t.store:
		t.verdict = verdict{why: t.why}
	}
	if t.verdict.store {
		t.capture = true
		t.header = storedHeader(t.h)
		if cl := t.h.Get("Content-Length"); cl != "" {
			t.declared, _ = strconv.ParseInt(cl, 10, 64) // judge checked it
			t.buf = make([]byte, 0, t.declared)
		}
	} else if code < 500 || !t.keepFailure {
		// A 5xx is a failure, which the waiters learn of when fetch
		// returns: they must not each call the failing upstream.
		t.giveUp()
	}
	if code >= 500 && t.keepFailure {
		t.fail = &failure{status: code, header: failureHeader(t.h)}
	}
	if t.stale != nil && code >= 500 {
		t.swallow = true
		return
	}
	t.announced = t.h["Trailer"]
	if t.stale != nil && t.capture {
		t.held = make(http.Header, len(t.h))
		for k, vs := range t.h {
			t.held[k] = vs
		}
		clear(t.h)
		return
	}
	t.send(t.h)
	clear(t.h)
}

// send writes the response's header, with fields h, to the client.
func (t *tee) send(h http.Header) {
	dst := t.w.Header()
	for k, vs := range h {
		dst[k] = append(dst[k], vs...)
	}
	dst["Cache-Status"] = append(dst["Cache-Status"], t.cacheStatus())
	t.w.WriteHeader(t.status)
}

// release sends a held response: its header, and the body so far.
func (t *tee) release() {
	h := t.held
	t.held = nil
	t.send(h)
	if len(t.buf) > 0 {
		_, _ = t.w.Write(t.buf) // a client gone is seen by the next write, or not at all
	}
}

// committed reports whether any of the final response reached the client,
// so that nothing else can be its answer.
func (t *tee) committed() bool { return t.wrote && !t.swallow && t.held == nil }

// truncated reports whether a kept body is shorter than its
// Content-Length: the upstream broke off.
func (t *tee) truncated() bool {
	return t.capture && t.declared >= 0 && int64(len(t.buf)) != t.declared
}

// maxFailureBody bounds the body of a 5xx kept to pass on: the gateway's
// JSON errors and common error pages fit; a larger one is passed on as
// Options.Unavailable.
const maxFailureBody = 16 << 10

// failureHeader is the stored form of a failure's fields: those of a
// stored entry, and Retry-After, which says when to try again and holds
// for every request the failure answers.
func failureHeader(h http.Header) http.Header {
	out := storedHeader(h)
	if v, ok := h["Retry-After"]; ok {
		out["Retry-After"] = v
	}
	return out
}

// finish completes the response once fetch has returned, before the
// handler does (so that the client's writer still sends trailers).
// Trailers fetch set in the map it held from before WriteHeader reach the
// client now: those the response announced and those under
// http.TrailerPrefix; any other field set there after the header is
// dropped, as net/http drops it.
//
// A response with trailers is not stored. Its stored copy would lack
// them, and a trailer can say what the header could not yet: a
// Cache-Control of no-store or private, a Set-Cookie. (The gateway
// removes Set-Cookie from trailers before they get here and calls
// DoNotStore instead, which also counts until fetch returns.) The header
// announced the response as stored by then; see cacheStatus.
func (t *tee) finish() {
	if !t.wrote || t.swallow {
		return
	}
	if t.held != nil {
		t.release()
	}
	dst := t.w.Header()
	for k, vs := range t.h {
		if strings.HasPrefix(k, http.TrailerPrefix) || httpsyntax.HasToken(t.announced, k) {
			dst[k] = append(dst[k], vs...)
		}
	}
	if t.capture && (len(t.h) > 0 || hasTrailers(dst) || t.refused.Load()) {
		t.capture, t.buf = false, nil
		t.giveUp()
	}
}

// hasTrailers reports whether h holds a trailer under http.TrailerPrefix,
// as fetch sets one through Header after the header was written. An
// announced one needs no search: the response's Trailer field already
// kept it from being stored.
func hasTrailers(h http.Header) bool {
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

// informational passes a 1xx response on with the fields fetch set for it,
// then takes them off the client's header again, because net/http keeps
// the header map for the final response (httputil.ReverseProxy clears its
// own copy the same way).
func (t *tee) informational(code int) {
	dst := t.w.Header()
	saved := make(map[string][]string, len(t.h))
	for k, vs := range t.h {
		old, had := dst[k]
		if had {
			saved[k] = old
		}
		dst[k] = append(old[:len(old):len(old)], vs...)
	}
	t.w.WriteHeader(code)
	for k := range t.h {
		if old, had := saved[k]; had {
			dst[k] = old
		} else {
			delete(dst, k)
		}
	}
}

func (t *tee) cacheStatus() string {
	b := make([]byte, 0, 64)
	b = append(b, "keyward; fwd="...)
	b = append(b, t.fwd...)
	b = append(b, "; fwd-status="...)
	b = strconv.AppendInt(b, int64(t.status), 10)
	if t.verdict.store {
		// "stored" is decided here, before the body: a storable response
		// whose body later proves too large or truncated, that brings
		// trailers or a late DoNotStore, or that the store fails to take,
		// is announced as stored but not kept. The alternative, buffering
		// the body before sending the header, would break streaming.
		b = append(b, "; stored; ttl="...)
		b = strconv.AppendInt(b, int64((t.verdict.fresh)/time.Second), 10)
	} else if t.verdict.why != "" {
		b = append(b, "; detail="...)
		b = append(b, t.verdict.why...)
	}
	return string(b)
}

// Write implements http.ResponseWriter.
func (t *tee) Write(p []byte) (int, error) {
	if !t.wrote {
		t.WriteHeader(http.StatusOK)
	}
	if t.fail != nil {
		if len(t.fail.body)+len(p) > maxFailureBody {
			t.fail, t.keepFailure = nil, false
		} else {
			t.fail.body = append(t.fail.body, p...)
		}
	}
	if t.swallow {
		return len(p), nil
	}
	if t.capture {
		if int64(len(t.buf)+len(p)) > t.p.maxEntry {
			if t.held != nil {
				// Too large to store, and so to hold: send what was held
				// and stream the rest.
				t.release()
			}
			t.capture, t.buf = false, nil
			t.giveUp()
		} else {
			t.buf = append(t.buf, p...)
			if t.held != nil {
				return len(p), nil
			}
		}
	}
	return t.w.Write(p)
}

// Flush implements http.Flusher, so that a streamed response reaches the
// client as the upstream sends it.
func (t *tee) Flush() {
	if !t.wrote {
		t.WriteHeader(http.StatusOK)
	}
	if t.swallow || t.held != nil {
		return
	}
	_ = http.NewResponseController(t.w).Flush() // a writer that cannot flush sends at the end anyway
}

// Unwrap returns the client's writer, for http.ResponseController.
func (t *tee) Unwrap() http.ResponseWriter { return t.w }

func (t *tee) giveUp() {
	if t.onGiveUp != nil {
		t.onGiveUp()
		t.onGiveUp = nil
	}
}

// entry returns the stored form of the response once fetch has returned
// and finish has run, or nil if it is not storable: not written,
// disqualified by its header or its trailers, refused by DoNotStore,
// larger than the limit, or shorter than its Content-Length (a truncated
// upstream body; a truncation without Content-Length makes
// httputil.ReverseProxy panic, and then there is no entry either).
func (t *tee) entry() *Entry {
	if !t.wrote || !t.capture || (t.declared >= 0 && int64(len(t.buf)) != t.declared) {
		return nil
	}
	return &Entry{
		Status:         t.status,
		Header:         t.header,
		Body:           t.buf,
		Date:           t.received.Add(-t.verdict.age),
		Expires:        t.received.Add(t.verdict.fresh),
		MustRevalidate: t.verdict.mustRev,
	}
}

type teeKey struct{}

// DoNotStore marks the response being fetched for the request whose
// context is ctx as personal, unfit to store. It is for what the cache
// cannot see: the gateway calls it when it removes a field that made the
// response personal, such as a Set-Cookie in the header or in a trailer,
// because the cache only sees the response after that. It takes effect
// if called before fetch returns, even after the body was written; called
// before the header, it also makes Cache-Status say detail=personal. It
// does nothing for a context that did not come from Serve.
func DoNotStore(ctx context.Context) {
	if t, ok := ctx.Value(teeKey{}).(*tee); ok {
		t.refused.Store(true)
	}
}

// discard is the client of a background revalidation: nobody reads the
// response, the tee keeps it for the store.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header {
	if d.h == nil {
		d.h = make(http.Header)
	}
	return d.h
}
func (d *discard) WriteHeader(int)             {}
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
