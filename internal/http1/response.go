package http1

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyward/keyward/internal/httpsyntax"
)

// bufSize is the size of a response's output buffer: the header block and
// a typical JSON body leave in one write.
const bufSize = 8 << 10

// holdMax is how much body a response holds back before it sends its head:
// a handler of unknown length that writes less and returns gets a
// Content-Length instead of chunks (net/http holds 2 KB), and the head can
// still say Connection: close when the request body cannot be drained.
const holdMax = 4 << 10

// bufPool holds arrays, not slices: putting a slice into a sync.Pool
// allocates a slice header each time.
var bufPool = sync.Pool{New: func() any { return new([bufSize]byte) }}

func getBuf() []byte { return bufPool.Get().(*[bufSize]byte)[:0] }

func putBuf(b []byte) {
	if cap(b) == bufSize {
		bufPool.Put((*[bufSize]byte)(b[:bufSize]))
	}
}

// response is the http.ResponseWriter of one request. It implements
// http.Flusher and the deadline methods of http.ResponseController.
type response struct {
	c           *conn
	req         *http.Request
	header      http.Header
	status      int
	wroteHeader bool
	committed   bool  // the header block is in buf or sent
	chunked     bool  // the body is sent in chunks
	bodyAllowed bool  // the status allows a body
	discard     bool  // HEAD: body bytes are counted, never sent
	declared    int64 // the handler's Content-Length; -1: none
	written     int64
	buf         []byte   // pooled: bytes not yet sent (before commit: held body)
	trailers    []string // names announced in the Trailer header
	closeAfter  bool     // close the connection after this response
	lingering   bool     // close with unread input: drain first
	reqBody     *body    // the request's, if it has one (100 Continue)
	err         error    // the first write error; the connection is lost
}

func (w *response) reset(c *conn, req *http.Request) {
	h := w.header
	if h == nil {
		h = make(http.Header)
	} else {
		clear(h)
	}
	*w = response{c: c, req: req, header: h, declared: -1}
}

// Header returns the response's header map; after the header is sent,
// changes to it only matter for announced trailers.
func (w *response) Header() http.Header { return w.header }

// WriteHeader records the status. The header block is built at the first
// body write that cannot be held, at Flush, or when the handler returns.
// 1xx statuses are ignored: keyward never forwards interim responses.
func (w *response) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("http1: invalid WriteHeader code %v", code))
	}
	if w.wroteHeader || code < 200 {
		return
	}
	w.wroteHeader, w.status = true, code
	w.bodyAllowed = code != http.StatusNoContent && code != http.StatusNotModified
	w.discard = w.req.Method == http.MethodHead
	if cl, ok := w.header["Content-Length"]; ok {
		if len(cl) != 1 {
			delete(w.header, "Content-Length")
		} else if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 {
			w.declared = n
		} else {
			delete(w.header, "Content-Length")
		}
	}
}

func (w *response) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if !w.bodyAllowed {
		return 0, http.ErrBodyNotAllowed
	}
	if w.declared >= 0 && w.written+int64(len(p)) > w.declared {
		w.closeAfter = true
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if w.discard {
		return len(p), nil
	}
	if !w.committed {
		// Small bodies are held even when their length is known: while
		// the head is unsent, the server can still add Connection: close
		// if the request's body turns out not to be drainable.
		if len(w.buf)+len(p) <= holdMax {
			if w.buf == nil {
				w.buf = getBuf()
			}
			w.buf = append(w.buf, p...)
			return len(p), nil
		}
		w.commit(false)
	}
	w.body(p)
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

// Flush sends the header and everything written so far.
func (w *response) Flush() { _ = w.FlushError() }

// FlushError is Flush reporting a write error (http.ResponseController).
func (w *response) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(false)
	}
	w.send()
	return w.err
}

// SetReadDeadline bounds the reading of the request body
// (http.ResponseController).
func (w *response) SetReadDeadline(t time.Time) error { return w.c.rw.SetReadDeadline(t) }

// SetWriteDeadline bounds the writing of the response
// (http.ResponseController), on top of the server's WriteTimeout; the zero
// time removes the bound. It must be called from the handler's goroutine.
func (w *response) SetWriteDeadline(t time.Time) error {
	if w.reqBody != nil {
		// A 100 Continue may be on its way from another goroutine.
		w.reqBody.cmu.Lock()
		defer w.reqBody.cmu.Unlock()
	}
	c := w.c
	c.userWD, c.armed = t, false // the next write arms both
	return c.rw.SetWriteDeadline(t)
}

// finish completes the response once the handler returned.
func (w *response) finish() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(true)
	}
	switch {
	case w.chunked:
		w.room(64)
		w.buf = append(w.buf, "0\r\n"...)
		w.appendTrailers()
		w.room(2)
		w.buf = append(w.buf, "\r\n"...)
	case w.declared >= 0 && w.bodyAllowed && !w.discard && w.written != w.declared:
		// The body fell short of its Content-Length: only closing the
		// connection tells the client it is incomplete.
		w.closeAfter = true
	}
	w.send()
	w.release()
}

// endsCleanly reports whether a response its handler aborted should be
// finished instead of cut, because the server's shutdown ended it: an
// event stream (text/event-stream, chunked) that is intact so far. An
// event stream has no length to fall short of: its client discards an
// event left incomplete and, seeing the stream end, reconnects (to
// another instance) as it would after any server's restart, where a cut
// stream is a fault its client reports. A response of any other type is
// cut, so that its client cannot take a truncated body for a whole one.
func (w *response) endsCleanly() bool {
	if !w.c.s.cutting.Load() || !w.committed || !w.chunked || w.err != nil {
		return false
	}
	ct, _, _ := strings.Cut(w.header.Get("Content-Type"), ";")
	return strings.EqualFold(strings.TrimSpace(ct), "text/event-stream")
}

// release returns the output buffer to the pool.
func (w *response) release() {
	if w.buf != nil {
		putBuf(w.buf)
		w.buf = nil
	}
}

// commit builds the header block into the output buffer, ahead of any body
// held back. final says the handler has returned, so the body's length is
// known.
func (w *response) commit(final bool) {
	w.committed = true
	if w.reqBody != nil {
		w.reqBody.noContinue()
	}
	held := w.buf
	b := getBuf()
	b = w.appendHead(b, final)
	w.buf = b
	if len(held) > 0 {
		w.body(held)
	}
	if held != nil {
		putBuf(held)
	}
}

func (w *response) appendHead(b []byte, final bool) []byte {
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(w.status), 10)
	b = append(b, ' ')
	if text := http.StatusText(w.status); text != "" {
		b = append(b, text...)
	} else {
		b = append(b, "status code "...)
		b = strconv.AppendInt(b, int64(w.status), 10)
	}
	b = append(b, "\r\n"...)
	h := w.header
	hasTrailers := false // announced, or set under http.TrailerPrefix
	for name, vs := range h {
		switch name {
		case "Trailer":
			hasTrailers = len(vs) > 0 || hasTrailers
			continue
		case "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive":
			continue // framing: written below from what the response does
		}
		if strings.HasPrefix(name, http.TrailerPrefix) {
			hasTrailers = true
			continue
		}
		if !httpsyntax.IsToken(name) {
			continue
		}
		for _, v := range vs {
			b = appendField(b, name, v)
		}
	}
	if _, ok := h["Date"]; !ok {
		b = append(b, "Date: "...)
		b = appendDate(b)
		b = append(b, "\r\n"...)
	}
	length := int64(-1)
	switch {
	case !w.bodyAllowed:
		if w.status == http.StatusNotModified {
			length = w.declared
		}
	case w.declared >= 0:
		length = w.declared
	case final && (!w.discard || w.written > 0) && !(w.req.ProtoAtLeast(1, 1) && hasTrailers):
		// A handler that announced trailers gets chunks even for a short
		// body: a Content-Length would leave no place to send them (as
		// net/http does).
		length = w.written // all of it held, or counted for HEAD
	case w.discard:
	case w.req.ProtoAtLeast(1, 1):
		w.chunked = true
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
		if tr, ok := h["Trailer"]; ok {
			w.trailers = trailerNames(tr)
			if len(w.trailers) > 0 {
				b = appendField(b, "Trailer", strings.Join(w.trailers, ", "))
			}
		}
	default:
		w.closeAfter = true // HTTP/1.0: the end of the body is the close
	}
	if length >= 0 {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, length, 10)
		b = append(b, "\r\n"...)
	}
	if w.req.Close || w.c.s.shutdown.Load() || w.c.crowded() || httpsyntax.HasToken(h["Connection"], "close") {
		w.closeAfter = true
	}
	switch {
	case w.closeAfter:
		b = append(b, "Connection: close\r\n"...)
	case !w.req.ProtoAtLeast(1, 1):
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	return append(b, "\r\n"...)
}

// body queues body bytes, framed as a chunk when chunked.
func (w *response) body(p []byte) {
	if len(p) == 0 {
		return
	}
	if w.chunked {
		w.room(20)
		w.buf = strconv.AppendInt(w.buf, int64(len(p)), 16)
		w.buf = append(w.buf, "\r\n"...)
		w.out(p)
		w.room(2)
		w.buf = append(w.buf, "\r\n"...)
		return
	}
	w.out(p)
}

// out queues p, sending the buffer first when p does not fit, and sending
// a large p straight from the caller's slice.
func (w *response) out(p []byte) {
	if len(w.buf)+len(p) <= cap(w.buf) {
		w.buf = append(w.buf, p...)
		return
	}
	w.send()
	if len(p) >= cap(w.buf)/2 {
		w.write(p)
		return
	}
	w.buf = append(w.buf, p...)
}

// room makes sure n more bytes fit in the buffer without growing it.
func (w *response) room(n int) {
	if len(w.buf)+n > cap(w.buf) {
		w.send()
	}
}

// send writes the buffered bytes to the connection.
func (w *response) send() {
	if len(w.buf) > 0 {
		w.write(w.buf)
		w.buf = w.buf[:0]
	}
}

// write sends p. A failure loses the connection: the request's context is
// cancelled, so that the handler stops the upstream call it is copying,
// with ErrWriteTimeout as the cause when the client stopped reading.
func (w *response) write(p []byte) {
	if w.err != nil {
		return
	}
	if err := w.c.write(p); err != nil {
		w.err = err
		w.closeAfter = true
		var cause error
		if errors.Is(err, ErrWriteTimeout) {
			cause = ErrWriteTimeout
		}
		w.c.cancelRequest(cause)
	}
}

// appendTrailers writes the announced trailers and any header set under
// http.TrailerPrefix, after the last chunk.
func (w *response) appendTrailers() {
	for _, name := range w.trailers {
		for _, v := range w.header[name] {
			w.room(len(name) + len(v) + 4)
			w.buf = appendField(w.buf, name, v)
		}
	}
	for key, vs := range w.header {
		name, ok := strings.CutPrefix(key, http.TrailerPrefix)
		if !ok || !trailerAllowed(textproto.CanonicalMIMEHeaderKey(name)) {
			continue
		}
		for _, v := range vs {
			w.room(len(name) + len(v) + 4)
			w.buf = appendField(w.buf, name, v)
		}
	}
}

// trailerNames lists the valid names a Trailer header announces, leaving
// out the framing fields a trailer may not carry.
func trailerNames(vs []string) []string {
	var names []string
	for _, v := range vs {
		for f := range strings.SplitSeq(v, ",") {
			if f = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(f)); trailerAllowed(f) {
				names = append(names, f)
			}
		}
	}
	return names
}

// trailerAllowed reports whether a trailer may carry the (canonical)
// field: a token, and none of the framing fields a trailer must not set
// (RFC 9110 6.5.1).
func trailerAllowed(name string) bool {
	switch name {
	case "Content-Length", "Transfer-Encoding", "Trailer", "Connection", "Host", "Keep-Alive", "Te", "Upgrade":
		return false
	}
	return httpsyntax.IsToken(name)
}

// appendField writes "name: value\r\n". A CR, LF or NUL in the value
// becomes a space, so no value can end the header block early (response
// splitting), as net/http does.
func appendField(b []byte, name, v string) []byte {
	b = append(b, name...)
	b = append(b, ": "...)
	start := len(b)
	b = append(b, v...)
	for i := start; i < len(b); i++ {
		if c := b[i]; c == '\r' || c == '\n' || c == 0 {
			b[i] = ' '
		}
	}
	return append(b, "\r\n"...)
}

// The Date header, formatted once a second.
type dateLine struct {
	sec int64
	b   []byte
}

var date atomic.Pointer[dateLine]

func appendDate(b []byte) []byte {
	now := time.Now()
	d := date.Load()
	if d == nil || d.sec != now.Unix() {
		d = &dateLine{sec: now.Unix(), b: now.UTC().AppendFormat(nil, http.TimeFormat)}
		date.Store(d)
	}
	return append(b, d.b...)
}

// validValue reports whether s has no control bytes but tab.
func validValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
