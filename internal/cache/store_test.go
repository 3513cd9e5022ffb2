package cache

import (
	"bytes"
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var epoch = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)

// clock is a fake clock that tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: epoch} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func keyOf(s string) Key {
	var k Key
	copy(k[:], s)
	return k
}

func bodyEntry(n int) *Entry {
	return &Entry{Status: 200, Header: http.Header{}, Body: bytes.Repeat([]byte("x"), n), Date: epoch, Expires: epoch.Add(time.Minute)}
}

func TestMemoryExpiry(t *testing.T) {
	clk := newClock()
	m := NewMemory(0, clk.Now)
	ctx := context.Background()
	e := bodyEntry(10)
	if err := m.Set(ctx, keyOf("a"), e, time.Minute); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute - time.Nanosecond)
	if got, _ := m.Get(ctx, keyOf("a")); got != e {
		t.Fatalf("before expiry: got %v", got)
	}
	clk.Advance(time.Nanosecond)
	if got, _ := m.Get(ctx, keyOf("a")); got != nil {
		t.Fatalf("at expiry: got %v", got)
	}
	if m.Len() != 0 || m.Size() != 0 {
		t.Errorf("expired entry still held: len %d size %d", m.Len(), m.Size())
	}
}

func TestMemoryLRU(t *testing.T) {
	one := bodyEntry(1000).size()
	m := NewMemory(3*one, nil)
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c"} {
		m.Set(ctx, keyOf(k), bodyEntry(1000), time.Hour)
	}
	m.Get(ctx, keyOf("a")) // a is now the most recently used; b the least
	m.Set(ctx, keyOf("d"), bodyEntry(1000), time.Hour)
	var held []string
	for _, k := range []string{"a", "b", "c", "d"} {
		if e, _ := m.Get(ctx, keyOf(k)); e != nil {
			held = append(held, k)
		}
	}
	if diff := cmp.Diff([]string{"a", "c", "d"}, held); diff != "" {
		t.Errorf("held (-want +got):\n%s", diff)
	}

	t.Run("replacing frees the old size", func(t *testing.T) {
		m.Set(ctx, keyOf("a"), bodyEntry(10), time.Hour)
		if want := 2*one + bodyEntry(10).size(); m.Size() != want {
			t.Errorf("size %d, want %d", m.Size(), want)
		}
	})
	t.Run("too large for the store drops the old entry", func(t *testing.T) {
		m.Set(ctx, keyOf("c"), bodyEntry(4000), time.Hour)
		if e, _ := m.Get(ctx, keyOf("c")); e != nil {
			t.Error("entry under an oversize replacement still served")
		}
	})
	t.Run("one large entry evicts several", func(t *testing.T) {
		m.Set(ctx, keyOf("big"), bodyEntry(2500), time.Hour)
		if m.Size() > 3*one {
			t.Errorf("size %d over bound %d", m.Size(), 3*one)
		}
		if e, _ := m.Get(ctx, keyOf("big")); e == nil {
			t.Error("large entry not stored")
		}
	})
}

func TestMemoryBound(t *testing.T) {
	const bound = 1 << 20
	m := NewMemory(bound, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				k := keyOf(fmt.Sprintf("%d-%d", g, i))
				m.Set(ctx, k, bodyEntry(100+i%5000), time.Hour)
				m.Get(ctx, k)
			}
		})
	}
	wg.Wait()
	if m.Size() > bound {
		t.Errorf("size %d over bound %d", m.Size(), bound)
	}
	if m.Len() == 0 {
		t.Error("store empty")
	}
}

func TestEncoding(t *testing.T) {
	e := &Entry{
		Status:         404,
		Header:         http.Header{"Content-Type": {"application/json"}, "X-Many": {"a", "", "c"}, "Etag": {`"v1"`}},
		Body:           []byte("{\"a\":\x00\xff}"),
		Date:           epoch.Add(-3 * time.Second),
		Expires:        epoch.Add(time.Minute),
		MustRevalidate: true,
	}
	b, err := e.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Entry
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(e, &got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	empty := &Entry{Status: 200, Header: http.Header{}, Body: []byte{}, Date: epoch, Expires: epoch}
	b, _ = empty.MarshalBinary()
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(empty, &got); diff != "" {
		t.Errorf("empty round trip (-want +got):\n%s", diff)
	}

	t.Run("corrupt", func(t *testing.T) {
		full, _ := e.MarshalBinary()
		cases := map[string][]byte{
			"empty":       nil,
			"version":     append([]byte{9}, full[1:]...),
			"cut in head": full[:5],
			"cut":         full[:len(full)-len(e.Body)-3],
			"huge count":  {1, 200, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0x0f},
		}
		for name, b := range cases {
			var got Entry
			if err := got.UnmarshalBinary(b); !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s: err = %v, want ErrCorrupt", name, err)
			}
		}
	})
}

func FuzzUnmarshalBinary(f *testing.F) {
	b, _ := (&Entry{Status: 200, Header: http.Header{"A": {"b"}}, Body: []byte("x"), Date: epoch, Expires: epoch}).MarshalBinary()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Entry
		if err := e.UnmarshalBinary(b); err != nil {
			return
		}
		again, _ := e.MarshalBinary()
		var e2 Entry
		if err := e2.UnmarshalBinary(again); err != nil {
			t.Fatalf("re-encoded entry does not decode: %v", err)
		}
	})
}

func TestStoredHeader(t *testing.T) {
	h := http.Header{
		"Content-Type":      {"application/json"},
		"Connection":        {"X-Hop, close"},
		"X-Hop":             {"1"},
		"Keep-Alive":        {"timeout=5"},
		"Transfer-Encoding": {"chunked"},
		"Date":              {"Sat, 14 Mar 2026 12:00:00 GMT"},
		"Age":               {"3"},
		"Content-Length":    {"10"},
		"X-Request-Id":      {"abc"},
		"Etag":              {`"1"`},
		"Vary":              {"Accept", "Accept-Language"},
	}
	want := http.Header{
		"Content-Type": {"application/json"},
		"Etag":         {`"1"`},
		"Vary":         {"Accept", "Accept-Language"},
	}
	if diff := cmp.Diff(want, storedHeader(h)); diff != "" {
		t.Errorf("stored (-want +got):\n%s", diff)
	}
}

// BenchmarkEncode compares the entry encoding with gob, the alternative
// that needs no code of its own.
func BenchmarkEncode(b *testing.B) {
	e := &Entry{
		Status: 200,
		Header: http.Header{
			"Content-Type":  {"application/json; charset=utf-8"},
			"Etag":          {`W/"5f3c1e0b9d"`},
			"Cache-Control": {"public, max-age=60"},
			"Vary":          {"Accept, Accept-Encoding"},
			"X-Ratelimit":   {"4999"},
		},
		Body:    []byte(strings.Repeat(`{"id":1,"name":"keyward"},`, 80)),
		Date:    epoch,
		Expires: epoch.Add(time.Minute),
	}
	b.Run("binary", func(b *testing.B) {
		var size int
		for b.Loop() {
			data, _ := e.MarshalBinary()
			var got Entry
			if err := got.UnmarshalBinary(data); err != nil {
				b.Fatal(err)
			}
			size = len(data)
		}
		b.ReportMetric(float64(size), "bytes/entry")
	})
	b.Run("gob", func(b *testing.B) {
		var size int
		for b.Loop() {
			var buf bytes.Buffer
			if err := gob.NewEncoder(&buf).Encode(e); err != nil {
				b.Fatal(err)
			}
			size = buf.Len()
			var got Entry
			if err := gob.NewDecoder(&buf).Decode(&got); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(size), "bytes/entry")
	})
}
