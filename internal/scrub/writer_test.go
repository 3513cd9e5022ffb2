package scrub

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/keyward/keyward/internal/secret"
)

// clock is a fake timer source: a test fires the armed release itself.
type clock struct {
	mu     sync.Mutex
	armed  []*fakeTimer
	delays []time.Duration
}

type fakeTimer struct {
	c       *clock
	f       func()
	stopped bool // guarded by c.mu
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	return was
}

func (c *clock) after(d time.Duration, f func()) stopper {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, f: f}
	c.armed = append(c.armed, t)
	c.delays = append(c.delays, d)
	return t
}

// fire runs the armed timers that were not stopped, as their expiry
// would, and reports how many ran.
func (c *clock) fire() int {
	c.mu.Lock()
	var due []func()
	for _, t := range c.armed {
		if !t.stopped {
			t.stopped = true
			due = append(due, t.f)
		}
	}
	c.armed = nil
	c.mu.Unlock()
	for _, f := range due {
		f()
	}
	return len(due)
}

// withClock returns s using c for its release timers.
func withClock(s *Scrubber, c *clock) *Scrubber {
	s.after = c.after
	return s
}

// recorder is a destination that logs each write and flush, which is
// what a client sees of the stream's framing.
type recorder struct {
	mu     sync.Mutex
	out    bytes.Buffer
	events []string
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out.Write(p)
	r.events = append(r.events, fmt.Sprintf("write %d", len(p)))
	return len(p), nil
}

func (r *recorder) flush() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, "flush")
	return nil
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.events
	r.events = nil
	return e
}

func mustWrite(t *testing.T, w *Writer, s string) {
	t.Helper()
	if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
}

// TestWriterReleaseRule: what a stream releases and when.
func TestWriterReleaseRule(t *testing.T) {
	c := &clock{}
	s := withClock(New([]secret.Value{secret.New("k", "tok-0123456789")}), c)
	hold := s.hold
	// A 14-byte secret has base64 cores of 18 characters, each spelled
	// in at most 10 bytes.
	if hold != 10*18-1 {
		t.Fatalf("Hold = %d, want 179 for a 14-byte secret", hold)
	}
	rec := &recorder{}
	w := s.NewWriter(rec, rec.flush)

	// An event ends with a blank line: out at once, no timer.
	mustWrite(t, w, "data: one\n\n")
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.take(), []string{"write 11", "flush"}; !cmp.Equal(got, want) {
		t.Errorf("event: %v, want %v", got, want)
	}
	if n := c.fire(); n != 0 {
		t.Errorf("%d timers armed with nothing held", n)
	}

	// A write that does not end a line: up to its last line break now,
	// the rest when the timer fires.
	mustWrite(t, w, "line\npartial")
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.take(), []string{"write 5", "flush"}; !cmp.Equal(got, want) {
		t.Errorf("partial line: %v, want %v", got, want)
	}
	if len(c.delays) == 0 || c.delays[len(c.delays)-1] != ReleaseDelay {
		t.Fatalf("timer delays %v, want %v", c.delays, ReleaseDelay)
	}
	if n := c.fire(); n != 1 {
		t.Fatalf("%d timers fired", n)
	}
	if got, want := rec.take(), []string{"write 7", "flush"}; !cmp.Equal(got, want) {
		t.Errorf("timed release: %v, want %v", got, want)
	}

	// Without line breaks, all but the last hold bytes go at once.
	mustWrite(t, w, strings.Repeat("x", hold+50))
	if got, want := rec.take(), []string{"write 50"}; !cmp.Equal(got, want) {
		t.Errorf("long line: %v, want %v", got, want)
	}
	// A later write releases the held bytes as far as the rule allows.
	mustWrite(t, w, "yy")
	if got, want := rec.take(), []string{"write 2"}; !cmp.Equal(got, want) {
		t.Errorf("next write: %v, want %v", got, want)
	}
	// A flush that a new write overtakes leaves a stale timer.
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, w, "z")
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	rec.take()
	stale := c.armed[0]
	stale.f() // expired before the second flush stopped it
	if got := rec.take(); len(got) != 0 {
		t.Errorf("a stale timer released: %v", got)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.take(), []string{fmt.Sprintf("write %d", hold)}; !cmp.Equal(got, want) {
		t.Errorf("close: %v, want %v", got, want)
	}
	if n := c.fire(); n != 0 {
		t.Errorf("Close left %d timers armed", n)
	}
	want := "data: one\n\nline\npartial" + strings.Repeat("x", hold+50) + "yyz"
	if rec.out.String() != want {
		t.Errorf("output %q", rec.out.String())
	}
	if _, err := w.Write([]byte("late")); !errors.Is(err, errClosed) {
		t.Errorf("Write after Close: %v", err)
	}
}

// streamSecrets are the secret and its spellings the split tests use.
var streamSecret = `AK/Ab+c"d=\EF&é`

func streamForms() []string {
	var forms []string
	for _, w := range whole {
		forms = append(forms, w.of(streamSecret))
	}
	for _, sp := range spellings {
		var b strings.Builder
		for _, r := range streamSecret {
			if x := sp.of(r); x != "" {
				b.WriteString(x)
			} else {
				b.WriteRune(r)
			}
		}
		forms = append(forms, b.String())
	}
	return forms
}

// TestWriterSplitEverywhere: every spelling of a secret, split at every
// position across two writes (with a flush between, as a stream does),
// is masked exactly as the whole body is.
func TestWriterSplitEverywhere(t *testing.T) {
	c := &clock{}
	s := withClock(New([]secret.Value{secret.New("k", streamSecret)}), c)
	for fi, form := range streamForms() {
		in := "data: " + form + " end\n"
		want := []byte(in)
		s.MaskBytes(want)
		if bytes.Contains(want, []byte(form)) {
			t.Fatalf("form %d not masked at all", fi)
		}
		for cut := 0; cut <= len(in); cut++ {
			rec := &recorder{}
			w := s.NewWriter(rec, rec.flush)
			mustWrite(t, w, in[:cut])
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			mustWrite(t, w, in[cut:])
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rec.out.Bytes(), want) {
				t.Errorf("form %d cut at %d: %q, want %q", fi, cut, rec.out.Bytes(), want)
			}
			c.fire() // stale: Close stopped it
			if rec.out.Len() != len(in) {
				t.Errorf("form %d: wrote more after Close", fi)
			}
		}
	}
}

// TestWriterSplitAcrossTimedRelease: the upstream pauses inside a secret
// and the timer releases the first part. That part is out; the rest of
// the secret must still be masked, which needs the released bytes kept as
// context.
func TestWriterSplitAcrossTimedRelease(t *testing.T) {
	c := &clock{}
	s := withClock(New([]secret.Value{secret.New("k", streamSecret)}), c)
	for fi, form := range streamForms() {
		in := "x " + form + " y"
		whole := []byte(in)
		s.MaskBytes(whole)
		start := 2
		for cut := start + 1; cut < start+len(form); cut++ {
			rec := &recorder{}
			w := s.NewWriter(rec, rec.flush)
			mustWrite(t, w, in[:cut])
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			if n := c.fire(); n != 1 {
				t.Fatalf("%d timers fired", n)
			}
			mustWrite(t, w, in[cut:])
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			got := rec.out.Bytes()
			// The released part went out as it was; from the cut on,
			// the output is what masking the whole body gives.
			if !bytes.Equal(got[:cut], []byte(in[:cut])) || !bytes.Equal(got[cut:], whole[cut:]) {
				t.Errorf("form %d cut at %d: %q, want %q then %q", fi, cut, got, in[:cut], whole[cut:])
			}
		}
	}
}

// TestWriterTimedReleaseMasksCompleteSecret: a held tail that holds a
// whole secret is masked when the timer releases it.
func TestWriterTimedReleaseMasksCompleteSecret(t *testing.T) {
	c := &clock{}
	s := withClock(New([]secret.Value{secret.New("k", "tok-0123456789")}), c)
	rec := &recorder{}
	w := s.NewWriter(rec, rec.flush)
	mustWrite(t, w, "token: tok-0123456789")
	_ = w.Flush()
	c.fire()
	if got := rec.out.String(); got != "token: [REDACTED]****" {
		t.Errorf("got %q", got)
	}
	_ = w.Close()
}

// TestWriterNotAnOracle: the attack that recovered secrets. A client
// makes the upstream reflect a guess and watches where the stream is
// split. A guess that is a prefix of the secret and one that is not must
// produce the same writes and flushes, at every guess length.
func TestWriterNotAnOracle(t *testing.T) {
	const secretValue = "sk_live_0123456789abcdef"
	for n := 1; n < len(secretValue); n++ {
		var seen [][]string
		for _, guess := range []string{secretValue[:n], strings.Repeat("Z", n)} {
			c := &clock{}
			s := withClock(New([]secret.Value{secret.New("k", secretValue)}), c)
			rec := &recorder{}
			w := s.NewWriter(rec, rec.flush)
			mustWrite(t, w, `{"echo":"`+guess)
			_ = w.Flush()
			c.fire()
			mustWrite(t, w, `"}`+"\n")
			_ = w.Flush()
			_ = w.Close()
			seen = append(seen, rec.take())
		}
		if diff := cmp.Diff(seen[0], seen[1]); diff != "" {
			t.Errorf("guess of %d bytes: framing differs for a prefix of the secret (-prefix +other):\n%s", n, diff)
		}
	}
}

// TestReaderNotAnOracle: the Reader, for bodies still read through it,
// splits at the same places for a prefix guess and for another guess.
func TestReaderNotAnOracle(t *testing.T) {
	const secretValue = "sk_live_0123456789abcdef"
	s := New([]secret.Value{secret.New("k", secretValue)})
	for n := 1; n < len(secretValue); n++ {
		var seen [][]int
		for _, guess := range []string{secretValue[:n], strings.Repeat("Z", n)} {
			src := &chunks{parts: []string{`{"echo":"` + guess, `"}` + "\n"}}
			r := s.Reader(src)
			var sizes []int
			buf := make([]byte, 64<<10)
			for {
				k, err := r.Read(buf)
				if k > 0 {
					sizes = append(sizes, k)
				}
				if err != nil {
					break
				}
			}
			seen = append(seen, sizes)
		}
		if !cmp.Equal(seen[0], seen[1]) {
			t.Errorf("guess of %d bytes: reads %v for a prefix, %v for another", n, seen[0], seen[1])
		}
	}
}

// chunks is a source that returns one part per read.
type chunks struct{ parts []string }

func (c *chunks) Read(p []byte) (int, error) {
	if len(c.parts) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.parts[0])
	c.parts[0] = c.parts[0][n:]
	if c.parts[0] == "" {
		c.parts = c.parts[1:]
	}
	return n, nil
}

func (c *chunks) Close() error { return nil }

// TestWriterPassThrough: with nothing to scrub, writes and flushes go
// straight through.
func TestWriterPassThrough(t *testing.T) {
	for name, s := range map[string]*Scrubber{"nil": nil, "zero": {}, "short secret only": New([]secret.Value{secret.New("k", "ab")})} {
		t.Run(name, func(t *testing.T) {
			rec := &recorder{}
			w := s.NewWriter(rec, rec.flush)
			mustWrite(t, w, "ab cd")
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if got, want := rec.take(), []string{"write 5", "flush"}; !cmp.Equal(got, want) || rec.out.String() != "ab cd" {
				t.Errorf("%v %q", got, rec.out.String())
			}
		})
	}
}

// failing is a destination whose writes fail.
type failing struct{ n int }

var errGone = errors.New("client gone")

func (f *failing) Write(p []byte) (int, error) {
	f.n++
	return 0, errGone
}

// TestWriterErrors: a write error of the destination is returned, and
// again by every later call; nothing more is written.
func TestWriterErrors(t *testing.T) {
	c := &clock{}
	s := withClock(New([]secret.Value{secret.New("k", "tok-0123456789")}), c)
	f := &failing{}
	w := s.NewWriter(f, nil)
	if _, err := w.Write([]byte("a\nb")); !errors.Is(err, errGone) {
		t.Errorf("Write: %v", err)
	}
	if _, err := w.Write([]byte("more\n")); !errors.Is(err, errGone) {
		t.Errorf("second Write: %v", err)
	}
	if err := w.Flush(); !errors.Is(err, errGone) {
		t.Errorf("Flush: %v", err)
	}
	if err := w.Close(); !errors.Is(err, errGone) {
		t.Errorf("Close: %v", err)
	}
	if f.n != 1 {
		t.Errorf("%d writes to a failed destination", f.n)
	}
	flushFails := s.NewWriter(&recorder{}, func() error { return errGone })
	mustWrite(t, flushFails, "x")
	if err := flushFails.Flush(); !errors.Is(err, errGone) {
		t.Errorf("Flush: %v", err)
	}
	if n := c.fire(); n != 0 {
		t.Errorf("a failed flush armed %d timers", n)
	}
}

// gate is a destination whose writes wait until it is opened, and which
// notes when a write has finished.
type gate struct {
	recorder
	entered chan struct{}
	open    chan struct{}
	note    func(string)
}

func (g *gate) Write(p []byte) (int, error) {
	g.entered <- struct{}{}
	<-g.open
	n, err := g.recorder.Write(p)
	g.note("write finished")
	return n, err
}

// TestWriterCloseWaitsForTimedRelease: a timed release in progress (the
// timer goroutine writing to a slow client) finishes before Close
// returns, and Close does not send those bytes again.
func TestWriterCloseWaitsForTimedRelease(t *testing.T) {
	c := &clock{}
	s := withClock(New([]secret.Value{secret.New("k", "tok-0123456789")}), c)
	var mu sync.Mutex
	var order []string
	note := func(e string) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, e)
	}
	g := &gate{entered: make(chan struct{}), open: make(chan struct{}), note: note}
	w := s.NewWriter(g, g.flush)
	mustWrite(t, w, "held")
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	fired := make(chan struct{})
	go func() {
		defer close(fired)
		c.fire()
	}()
	<-g.entered // the timed release is writing, and waits
	closing, closed := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(closed)
		close(closing)
		_ = w.Close()
		note("close returned")
	}()
	<-closing
	close(g.open)
	<-fired
	<-closed
	if diff := cmp.Diff([]string{"write finished", "close returned"}, order); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
	if got := g.out.String(); got != "held" {
		t.Errorf("output %q", got)
	}
}

// TestWriterConcurrentTimer: writes, flushes and timer releases from
// another goroutine, for the race detector; the output is the input.
func TestWriterConcurrentTimer(t *testing.T) {
	c := &clock{}
	s := withClock(New([]secret.Value{secret.New("k", "tok-0123456789")}), c)
	rec := &recorder{}
	w := s.NewWriter(rec, rec.flush)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				c.fire()
			}
		}
	}()
	var want strings.Builder
	for i := range 2000 {
		p := fmt.Sprintf("part %d ", i)
		want.WriteString(p)
		mustWrite(t, w, p)
		_ = w.Flush()
	}
	close(stop)
	<-done
	_ = w.Close()
	if rec.out.String() != want.String() {
		t.Error("output differs from input")
	}
}

// TestWriterLargeAndRandomWrites: a body written whole (larger than the
// buffer, so scanned in pieces) or in random pieces comes out as
// MaskBytes makes it.
func TestWriterLargeAndRandomWrites(t *testing.T) {
	s := newTest()
	in := body()
	want := bytes.Clone(in)
	s.MaskBytes(want)
	if len(in) <= chunk {
		t.Fatalf("body of %d bytes does not exceed the buffer", len(in))
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for name, sizes := range map[string]func() int{
		"whole":  func() int { return len(in) },
		"random": func() int { return 1 + rng.IntN(3*chunk/2) },
		"small":  func() int { return 1 + rng.IntN(7) },
	} {
		t.Run(name, func(t *testing.T) {
			rec := &recorder{}
			w := s.NewWriter(rec, nil)
			for p := in; len(p) > 0; {
				n := min(len(p), sizes())
				mustWrite(t, w, string(p[:n]))
				p = p[n:]
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rec.out.Bytes(), want) {
				t.Error("output differs from MaskBytes")
			}
		})
	}
}

// TestWriterSecretWithLineBreak: a secret that holds a line break can be
// spelled across one, so line breaks release nothing early: every write
// keeps its last bytes until more comes.
func TestWriterSecretWithLineBreak(t *testing.T) {
	c := &clock{}
	s := withClock(New([]secret.Value{secret.New("pem", "line one\nline two")}), c)
	rec := &recorder{}
	w := s.NewWriter(rec, rec.flush)
	mustWrite(t, w, "data: x\n\n")
	_ = w.Flush()
	if got, want := rec.take(), []string{"flush"}; !cmp.Equal(got, want) {
		t.Errorf("%v, want %v: the event was released although a secret spans lines", got, want)
	}
	mustWrite(t, w, "key: line one\nline two\n")
	_ = w.Close()
	if got := rec.out.String(); got != "data: x\n\nkey: [REDACTED]*******\n" {
		t.Errorf("output %q", got)
	}
}

// TestWriterIdleStreamHoldsNoBuffer: between events, a stream holds no
// buffer (an open event stream costs a pooled 32 KiB only while a write
// is being scanned).
func TestWriterIdleStreamHoldsNoBuffer(t *testing.T) {
	s := withClock(New([]secret.Value{secret.New("k", "tok-0123456789")}), &clock{})
	w := s.NewWriter(&recorder{}, nil)
	mustWrite(t, w, "data: one\n\n")
	if w.b != nil {
		t.Errorf("%d bytes of buffer kept with nothing held", cap(w.b))
	}
	mustWrite(t, w, "data: tw")
	if w.b == nil {
		t.Error("held bytes without a buffer")
	}
	_ = w.Close()
}
