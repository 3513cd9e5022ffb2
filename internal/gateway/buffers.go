package gateway

import (
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
)

// BodyBuffers bounds the bytes of request bodies all requests hold in
// memory at once (server.max_buffered_bytes). Bodies are buffered whole
// where they must be complete before anything goes upstream: to validate
// or transform them, or to spend a budget only on a body that fits
// max_body. Without a bound, 400 concurrent 1 MiB validated bodies took
// almost 1 GB; with it, the request that would cross the bound gets 503
// busy with Retry-After instead, and memory stays flat. It outlives
// reloads (one per process); a reload changes its bound.
type BodyBuffers struct {
	max  atomic.Int64
	used atomic.Int64
}

// NewBodyBuffers returns a bound of max bytes.
func NewBodyBuffers(max int64) *BodyBuffers {
	b := &BodyBuffers{}
	b.max.Store(max)
	return b
}

// SetMax changes the bound; bodies already held stay.
func (b *BodyBuffers) SetMax(max int64) { b.max.Store(max) }

// Used returns the bytes held now.
func (b *BodyBuffers) Used() int64 { return b.used.Load() }

// take reserves n bytes, or reports that they would cross the bound.
func (b *BodyBuffers) take(n int64) bool {
	if b.used.Add(n) > b.max.Load() {
		b.used.Add(-n)
		return false
	}
	return true
}

func (b *BodyBuffers) give(n int64) { b.used.Add(-n) }

// busy is the refusal of a body that would cross the buffer bound: the
// gateway is saturated, not the request wrong, so the client may retry.
func busy(w http.ResponseWriter) *refusal {
	w.Header()["Retry-After"] = retryAfter1
	return refused(http.StatusServiceUnavailable, "busy", "the gateway is holding too many request bodies; retry shortly")
}

var retryAfter1 = []string{"1"}

// bufferStep is how much of a body of unknown length is reserved and
// read at a time.
const bufferStep = 64 << 10

// readBody reads r's whole body, at most max bytes, into one buffer
// reserved against the gateway's bound (x.held records it, and finish
// gives it back). A declared length is allocated once; a chunked body
// grows in steps, each reserved before it is read.
func (g *Gateway) readBody(w http.ResponseWriter, r *http.Request, x *exchange, max int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	tooLarge := refused(http.StatusRequestEntityTooLarge, "body_too_large", "request body exceeds "+strconv.FormatInt(max, 10)+" bytes")
	want := int64(bufferStep)
	if r.ContentLength >= 0 {
		want = r.ContentLength + 1 // one more byte: proof that it ends
	}
	want = min(want, max+1)
	if !g.buffers.take(want) {
		return nil, busy(w)
	}
	x.held += want
	buf := make([]byte, 0, want)
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) > max {
				return nil, tooLarge
			}
			more := min(int64(bufferStep), max+1-int64(len(buf)))
			if !g.buffers.take(more) {
				return nil, busy(w)
			}
			x.held += more
			buf = slices.Grow(buf, int(more))
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > max {
			return nil, tooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			status, code, msg := clientBodyRefusal(err)
			return nil, refused(status, code, msg)
		}
	}
}
