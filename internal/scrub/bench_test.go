package scrub

import (
	"bytes"
	"fmt"
	"io"
	"net/url"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/secret"
)

// benchSecrets are three secrets of the kinds keyward holds: a token with
// punctuation, a plain one, a base64-style key.
func benchSecrets() *Scrubber {
	return New([]secret.Value{secret.New("api", canary), secret.New("other", "tok-0123456789"), secret.New("aws", awsLike)})
}

// json2KiB is a typical small JSON answer, with no secret in it.
func json2KiB() []byte {
	return bytes.Repeat([]byte(`{"id":12345,"name":"keyward","full_name":"keyward/keyward","private":false},`), 27)[:2048]
}

// json32KiB is a larger JSON answer with URLs (escapes, "&"), escaped
// quotes, and the three secrets echoed once each, raw, JSON-escaped and
// query-escaped.
func json32KiB() []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < 32<<10; i++ {
		fmt.Fprintf(&b, `{"id":%d,"url":"https://api.example.com/repos/keyward/keyward?page=%d&per_page=100&q=a%%20b","description":"a \"quoted\" text about gateways, caches and limits","topics":["api","gateway"]},`+"\n", i, i)
		switch i {
		case 20:
			b.WriteString(`{"echo":"` + canary + `"},`)
		case 60:
			b.WriteString(`{"echo":"tok-0123456789"},`)
		case 100:
			b.WriteString(`{"echo":"` + url.QueryEscape(awsLike) + `"},`)
		}
	}
	return b.Bytes()[:32<<10]
}

func benchBody(b *testing.B, in []byte) {
	for _, tc := range []struct {
		name string
		s    *Scrubber
	}{{"off", nil}, {"on", benchSecrets()}} {
		b.Run(tc.name+"/reader", func(b *testing.B) {
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
		b.Run(tc.name+"/writer", func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				w := tc.s.NewWriter(io.Discard, nil)
				_, _ = w.Write(in)
				_ = w.Close()
			}
		})
	}
}

// BenchmarkScrub2KiB scrubs a 2 KiB JSON body with three secrets.
func BenchmarkScrub2KiB(b *testing.B) { benchBody(b, json2KiB()) }

// BenchmarkScrub32KiB scrubs a 32 KiB JSON body with three secrets, each
// echoed once.
func BenchmarkScrub32KiB(b *testing.B) {
	in := json32KiB()
	got := bytes.Clone(in)
	benchSecrets().MaskBytes(got)
	if n := strings.Count(string(got), Redacted); n != 3 {
		b.Fatalf("%d masks, want 3", n)
	}
	benchBody(b, in)
}

// BenchmarkScrubString is the cost for a log line or header value.
func BenchmarkScrubString(b *testing.B) {
	s := benchSecrets()
	line := "GET https://api.example.com/repos/keyward/keyward/issues?page=2&state=open: connection refused"
	b.ReportAllocs()
	for b.Loop() {
		_ = s.String(line)
	}
}
