package accesslog

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var entry = Entry{
	Time: time.Date(2026, 11, 28, 8, 13, 50, 567645000, time.UTC), ID: "739b3f0bdbcfb362", Stage: "dev",
	Route: "my-repos", Method: "GET", Path: "/dev/my-repos", Status: 200, Bytes: 111,
	Duration: 1203111 * time.Nanosecond, UpstreamDuration: 1105655 * time.Nanosecond,
}

// TestSameShapeAsSlog: the line is what slog's JSON handler wrote before,
// so log pipelines built on it keep working.
func TestSameShapeAsSlog(t *testing.T) {
	var fast, slow bytes.Buffer
	New(&fast, false).Log(&entry)
	h := slog.NewJSONHandler(&slow, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Time(slog.TimeKey, entry.Time)
		}
		return a
	}})
	slog.New(h).Info("request", "id", entry.ID, "stage", entry.Stage, "route", entry.Route, "method", entry.Method,
		"path", entry.Path, "status", entry.Status, "bytes", entry.Bytes,
		"ms", float64(entry.Duration)/1e6, "upstream_ms", float64(entry.UpstreamDuration)/1e6, "error", entry.Error)
	var a, b map[string]any
	if err := json.Unmarshal(fast.Bytes(), &a); err != nil {
		t.Fatalf("not JSON: %q: %v", fast.String(), err)
	}
	if err := json.Unmarshal(slow.Bytes(), &b); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(b, a); diff != "" {
		t.Errorf("line differs from slog's (-slog +ours):\n%s", diff)
	}
	if !strings.HasSuffix(fast.String(), "}\n") || strings.Count(fast.String(), "\n") != 1 {
		t.Errorf("not one line: %q", fast.String())
	}
}

func TestStringsAreValidJSON(t *testing.T) {
	for _, s := range []string{"plain", `quote " and \ backslash`, "ctrl \x00\x01\x1f\n\r\t", "ünïcode ✓", "bad \xff\xfe utf8", ""} {
		b := appendString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Errorf("%q -> %s: %v", s, b, err)
			continue
		}
		want := strings.ToValidUTF8(s, "\uFFFD")
		if s == "bad \xff\xfe utf8" {
			want = "bad \uFFFD\uFFFD utf8"
		}
		if got != want {
			t.Errorf("%q round-trips to %q", s, got)
		}
	}
}

// syncBuffer lets the test read while the flusher writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
	n  chan struct{}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case s.n <- struct{}{}:
	default:
	}
	return s.b.Write(p)
}

func TestBufferedLinesAreFlushedAndClosed(t *testing.T) {
	out := &syncBuffer{n: make(chan struct{}, 1)}
	l := New(out, true)
	l.Log(&entry)
	select {
	case <-out.n: // the flusher wrote within its interval
	case <-time.After(10 * FlushInterval):
		t.Fatal("a buffered line was never flushed")
	}
	for range 3 {
		l.Log(&entry)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	out.mu.Lock()
	defer out.mu.Unlock()
	if n := strings.Count(out.b.String(), "\n"); n != 4 {
		t.Errorf("%d lines after Close, want 4", n)
	}
}

func BenchmarkLog(b *testing.B) {
	l := New(discard{}, true)
	defer l.Close()
	b.ReportAllocs()
	for b.Loop() {
		l.Log(&entry)
	}
}

func BenchmarkSlog(b *testing.B) {
	lg := slog.New(slog.NewJSONHandler(discard{}, nil))
	b.ReportAllocs()
	for b.Loop() {
		lg.Info("request", "id", entry.ID, "stage", entry.Stage, "route", entry.Route, "method", entry.Method,
			"path", entry.Path, "status", entry.Status, "bytes", entry.Bytes,
			"ms", float64(entry.Duration)/1e6, "upstream_ms", float64(entry.UpstreamDuration)/1e6, "error", entry.Error)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
