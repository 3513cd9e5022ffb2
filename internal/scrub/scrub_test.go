package scrub

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/keyward/keyward/internal/secret"
)

const canary = `sk_live_CANARY/"42"+x&y`

func newTest() *Scrubber {
	return New([]secret.Value{secret.New("api", canary), secret.New("short", "ab"), secret.New("other", "tok-0123456789")})
}

func TestString(t *testing.T) {
	s := newTest()
	for _, tc := range []struct{ name, in, want string }{
		{"raw", "key=" + canary, "key=[REDACTED]"},
		{"query escaped", "GET /x?k=sk_live_CANARY%2F%2242%22%2Bx%26y", "GET /x?k=[REDACTED]"},
		{"path escaped", "/sk_live_CANARY%2F%2242%22+x&y/", "/[REDACTED]/"},
		{"json escaped", `{"k":"sk_live_CANARY/\"42\"+x\u0026y"}`, `{"k":"[REDACTED]"}`},
		{"json escaped, no html escaping", `{"k":"sk_live_CANARY/\"42\"+x&y"}`, `{"k":"[REDACTED]"}`},
		{"too short to scrub", "ab", "ab"},
		{"two secrets", canary + " tok-0123456789", "[REDACTED] [REDACTED]"},
		{"nothing", "plain text", "plain text"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.String(tc.in); got != tc.want {
				t.Errorf("String(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
	if got := s.Mask("a " + canary); got != "a [secret:api]" {
		t.Errorf("Mask = %q", got)
	}
	var none *Scrubber
	if none.String(canary) != canary || none.Active() {
		t.Error("nil scrubber changed text")
	}
}

func TestHeaders(t *testing.T) {
	s := newTest()
	shared := []string{"Bearer " + canary}
	h := http.Header{"Location": {"https://x/?t=sk_live_CANARY%2F%2242%22%2Bx%26y"}, "X-Echo": shared, "Ok": {"fine"}}
	s.Headers(h)
	want := http.Header{"Location": {"https://x/?t=[REDACTED]"}, "X-Echo": {"Bearer [REDACTED]"}, "Ok": {"fine"}}
	for k, v := range want {
		if h.Get(k) != v[0] {
			t.Errorf("%s = %q, want %q", k, h.Get(k), v[0])
		}
	}
	if shared[0] != "Bearer "+canary {
		t.Error("a shared header slice was modified in place")
	}
}

// body builds a response body with secrets in every form, at awkward
// places: the start, the end, next to each other.
func body() []byte {
	var b bytes.Buffer
	b.WriteString(canary)
	for i := range 3000 {
		b.WriteString(`{"i":`)
		b.WriteString(strings.Repeat("x", i%37))
		switch i % 5 {
		case 0:
			b.WriteString(canary)
		case 1:
			b.WriteString(`sk_live_CANARY/\"42\"+x\u0026y`)
		case 2:
			b.WriteString("sk_live_CANARY%2F%2242%22%2Bx%26y")
		case 3:
			b.WriteString("sk_live_CANAR") // a prefix only: not a secret
		}
		b.WriteString("},\n")
	}
	b.WriteString("tok-0123456789")
	return b.Bytes()
}

func TestReaderAtEveryBoundary(t *testing.T) {
	s := newTest()
	in := body()
	want := make([]byte, len(in))
	copy(want, in)
	s.MaskBytes(want)
	if bytes.Contains(want, []byte(canary)) {
		t.Fatal("MaskBytes left the secret")
	}
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"random splits": func(r io.Reader) io.Reader {
			return &randomReader{r: r, rng: rand.New(rand.NewPCG(1, 2))}
		},
	}
	for name, wrap := range readers {
		t.Run(name, func(t *testing.T) {
			r := s.Reader(io.NopCloser(wrap(bytes.NewReader(in))))
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(in) {
				t.Errorf("length changed: %d -> %d", len(in), len(got))
			}
			if !bytes.Equal(got, want) {
				t.Error("output differs from masking the whole body at once")
			}
			for _, w := range whole {
				if bytes.Contains(got, []byte(w.of(canary))) {
					t.Errorf("secret as %s leaked", w.name)
				}
			}
			if !bytes.Contains(got, []byte("sk_live_CANAR}")) {
				t.Error("a harmless prefix of the secret was changed")
			}
			_ = r.Close()
		})
	}
}

// A stream must not be delayed: text that cannot start a secret is
// returned by the same Read that received it.
func TestReaderDoesNotHoldOrdinaryText(t *testing.T) {
	s := newTest()
	pr, pw := io.Pipe()
	r := s.Reader(pr)
	go func() { _, _ = pw.Write([]byte("data: one\n\n")) }()
	buf := make([]byte, 64)
	n, err := r.Read(buf)
	if err != nil || string(buf[:n]) != "data: one\n\n" {
		t.Fatalf("first read = %q, %v", buf[:n], err)
	}
	// A chunk ending in a possible secret start is held until more comes.
	go func() {
		_, _ = pw.Write([]byte("data: sk_live"))
		_, _ = pw.Write([]byte("_CANARY/\"42\"+x&y\n\n"))
		pw.Close()
	}()
	got, _ := io.ReadAll(r)
	if string(got) != "data: [REDACTED]*************\n\n" {
		t.Errorf("got %q", got)
	}
}

type randomReader struct {
	r   io.Reader
	rng *rand.Rand
}

func (rr *randomReader) Read(p []byte) (int, error) {
	n := 1 + rr.rng.IntN(len(p))
	return rr.r.Read(p[:n])
}

func BenchmarkReader2KB(b *testing.B) {
	in := bytes.Repeat([]byte(`{"id":12345,"name":"keyward","full_name":"keyward/keyward","private":false},`), 27)[:2048]
	for _, tc := range []struct {
		name string
		s    *Scrubber
	}{{"off", nil}, {"on", newTest()}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			buf := make([]byte, 32<<10)
			for b.Loop() {
				r := tc.s.Reader(io.NopCloser(bytes.NewReader(in)))
				for {
					if _, err := r.Read(buf); err != nil {
						break
					}
				}
				r.Close()
			}
		})
	}
}
