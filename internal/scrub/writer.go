package scrub

import (
	"bytes"
	"errors"
	"io"
	"sync"
)

// chunk is the size of a Writer's buffer (unless twice its hold is more):
// a large Write is scanned a buffer at a time.
const chunk = 32 << 10

// errClosed is returned by a Writer used after Close.
var errClosed = errors.New("scrub: write after Close")

// Writer masks every secret in a body on its way to dst (see the package
// documentation for what it holds back, and why that never depends on
// the body's content). It is safe for use by one writer goroutine and the
// Writer's own release timer; Close stops the timer and waits for a
// release in progress.
type Writer struct {
	s     *Scrubber // nil when there is nothing to scrub: a pass-through
	dst   io.Writer
	flush func() error // nil: no flushing

	mu      sync.Mutex
	b       []byte  // original bytes: released, kept as context, and held
	scanned int     // starts before b[scanned] are decided
	sent    int     // b[:sent] has gone to dst
	ms      []match // matches not yet entirely sent, by start
	out     []byte  // the masked copy of what is being sent
	timer   stopper
	gen     uint64 // counts flushes: a timer of an earlier one is stale
	err     error  // the first error of dst or flush; sticky
	closed  bool
}

// NewWriter returns a Writer that masks every secret in what is written
// to dst. flush, if non-nil, pushes what dst holds to the client
// (http.ResponseController.Flush); it is called by Flush and after a
// timed release. A nil or inactive Scrubber returns a pass-through Writer.
func (s *Scrubber) NewWriter(dst io.Writer, flush func() error) *Writer {
	w := &Writer{dst: dst, flush: flush}
	if s.Active() {
		w.s = s
	}
	return w
}

// Write masks p and passes on what can no longer be part of a secret:
// everything up to the last line break, and after it all but the last
// few hundred bytes (a number the config fixes). Those are held for the
// next Write, Flush's timer or Close. It returns a write error of dst,
// and keeps returning it.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.closed:
		return 0, errClosed
	case w.err != nil:
		return 0, w.err
	case w.s == nil:
		n, err := w.dst.Write(p)
		w.err = err
		return n, err
	}
	for done := 0; done < len(p); {
		w.grab()
		// After advance at most hold bytes stay, half the buffer.
		n := min(len(p)-done, cap(w.b)-len(w.b))
		w.b = append(w.b, p[done:done+n]...)
		done += n
		w.advance()
		if w.err != nil {
			return 0, w.err
		}
	}
	return len(p), nil
}

// Flush calls the flush function, for a stream, after Write has passed on
// what the release rule allows, and arms the timer that releases the
// held tail if nothing more is written within ReleaseDelay.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.closed:
		return errClosed
	case w.err != nil:
		return w.err
	}
	if w.flush != nil {
		if err := w.flush(); err != nil {
			w.err = err
			return err
		}
	}
	if w.s == nil {
		return nil
	}
	w.gen++
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	if len(w.b) > w.sent {
		gen := w.gen
		w.timer = w.s.after(ReleaseDelay, func() { w.fire(gen) })
	}
	return nil
}

// Close ends the body: whatever is held is masked and passed on, and the
// timer is stopped (a release it started has finished when Close
// returns). It does not close dst. It returns the first error of dst.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	if w.s != nil && w.err == nil && w.b != nil {
		w.ms = w.s.scan(w.b, w.scanned, len(w.b), false, false, w.ms)
		w.release(len(w.b))
	}
	putBuf(w.b)
	w.b, w.ms = nil, nil
	return w.err
}

// fire is the timed release: the upstream has been silent since the
// Flush numbered gen, so the held tail goes out.
func (w *Writer) fire(gen uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.err != nil || gen != w.gen || len(w.b) <= w.sent {
		return
	}
	w.timer = nil
	// A secret complete in what has arrived is masked. Its start stays
	// undecided (scanned does not move): the next write may extend the
	// match, and the buffer keeps these bytes to mask the continuation.
	w.ms = w.s.scan(w.b, w.scanned, len(w.b), false, false, w.ms)
	w.release(len(w.b))
	w.compact()
	if w.err == nil && w.flush != nil {
		w.err = w.flush()
	}
}

// bufPool holds buffers of at least chunk bytes, as arrays: putting a
// slice into a sync.Pool allocates its header each time.
var bufPool sync.Pool

// getBuf returns an empty buffer of at least n bytes.
func getBuf(n int) []byte {
	if p, ok := bufPool.Get().(*[chunk]byte); ok && n <= chunk {
		return p[:0]
	}
	return make([]byte, 0, max(n, chunk))
}

// putBuf gives b back to the pool if it came from there.
func putBuf(b []byte) {
	if cap(b) == chunk {
		bufPool.Put((*[chunk]byte)(b[:chunk]))
	}
}

// grab takes a buffer for the first write: a pooled one unless the
// secrets are so long that twice the hold does not fit in it.
func (w *Writer) grab() {
	if w.b == nil {
		w.b = getBuf(2 * max(w.s.hold, 1))
	}
}

// advance decides what the release rule allows after a write, scans it
// and sends it.
func (w *Writer) advance() {
	n := len(w.b)
	// A match starting before e is complete in b: e is at least hold
	// bytes from the end, or after a line break, which no match spans.
	e := n - w.s.hold
	if w.s.lines {
		from := max(e, w.scanned, w.sent, 0)
		if i := lastBreak(w.b[from:]); i >= 0 {
			e = from + i + 1
		}
	}
	if e > w.scanned {
		w.ms = w.s.scan(w.b, w.scanned, e, false, false, w.ms)
		w.scanned = e
	}
	w.release(e)
	w.compact()
	if len(w.b) == 0 {
		// Nothing held: an idle stream (between events) keeps no buffer.
		putBuf(w.b)
		w.b = nil
	}
}

// lastBreak returns the index of the last CR or LF in b, or -1. It
// searches forwards with IndexByte, which is vectorised (LastIndexByte is
// not), at a cost of one call per line break in b.
func lastBreak(b []byte) int {
	last := -1
	for _, c := range [2]byte{'\n', '\r'} {
		for off := last + 1; off < len(b); {
			i := bytes.IndexByte(b[off:], c)
			if i < 0 {
				break
			}
			last = max(last, off+i)
			off += i + 1
		}
	}
	return last
}

// release sends b[sent:r], masked, in one write to dst: the number and
// sizes of writes (chunks on the wire) depend on r alone. Bytes before
// scanned are never read again, so they are masked in place; a timed
// release sends bytes a later match may still start in, and masks a copy.
func (w *Writer) release(r int) {
	if r <= w.sent {
		return
	}
	seg := w.b[w.sent:r]
	copied := false
	for _, m := range w.ms {
		if m.start >= r {
			break
		}
		lo, hi := max(m.start, w.sent), min(m.end, r)
		if lo >= hi {
			continue
		}
		if r > w.scanned && !w.closed && !copied {
			w.out = append(w.out[:0], seg...)
			seg, copied = w.out, true
		}
		copy(seg[lo-w.sent:hi-w.sent], maskOf(m.end - m.start)[lo-m.start:])
	}
	w.sent = r
	keep := w.ms[:0]
	for _, m := range w.ms {
		if m.end > r {
			keep = append(keep, m)
		}
	}
	w.ms = keep
	if _, err := w.dst.Write(seg); err != nil {
		// Returned as is, as io.Copy does: the caller knows it was
		// writing the body, and checks for the client's errors.
		w.err = err
	}
}

// compact drops the bytes that are sent and whose starts are decided:
// nothing reads them again.
func (w *Writer) compact() {
	k := min(w.scanned, w.sent)
	if k <= 0 {
		return
	}
	w.b = w.b[:copy(w.b, w.b[k:])]
	w.scanned -= k
	w.sent -= k
	for i := range w.ms {
		w.ms[i].start -= k
		w.ms[i].end -= k
	}
}
