package cache

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"
)

// benchBody is a typical JSON API page.
var benchBody = strings.Repeat(`{"id":12345,"name":"keyward","full_name":"keyward/keyward"},`, 30)

func benchUpstream(b *testing.B) *httptest.Server {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Etag", `W/"5f3c1e0b9d"`)
		io.WriteString(w, benchBody)
	}))
	b.Cleanup(up.Close)
	return up
}

// benchWriter is the cheapest ResponseWriter, so that the benchmark
// measures the cache, not a recorder.
type benchWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) WriteHeader(code int)        { w.status = code }
func (w *benchWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

// BenchmarkServeHit is the cache's own cost on a hit: key, lookup and
// writing the stored response, without HTTP.
func BenchmarkServeHit(b *testing.B) {
	c := New(NewMemory(0, nil), Options{})
	p := mustPolicy(b, PolicyOptions{TTL: time.Hour, Vary: []string{"Accept-Language"}})
	r := httptest.NewRequest("GET", "/repos/keyward/keyward/issues?page=2&per_page=50", nil)
	r.Header.Set("Accept-Language", "en-GB, en;q=0.9")
	fwd := http.Header{"Accept": {"application/vnd.github+json"}, "Accept-Language": r.Header["Accept-Language"]}
	fetch := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, benchBody)
	}
	key := p.KeyFor("prod", "issues", r.URL.EscapedPath(), r.URL.RawQuery, fwd, r.Header)
	c.Serve(&benchWriter{h: http.Header{}}, r, key, p, fetch)
	w := &benchWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		w.n = 0
		key := p.KeyFor("prod", "issues", r.URL.EscapedPath(), r.URL.RawQuery, fwd, r.Header)
		c.Serve(w, r, key, p, fetch)
	}
	if w.status != 200 || w.n != len(benchBody) {
		b.Fatalf("served %d, %d bytes", w.status, w.n)
	}
}

// BenchmarkKey is the old key's share of a hit, the baseline of
// BenchmarkKeyFor; it goes with Key.
func BenchmarkKey(b *testing.B) {
	p := mustPolicy(b, PolicyOptions{TTL: time.Hour, Vary: []string{"Accept-Language"}})
	h := http.Header{"Accept-Language": {"en-GB, en;q=0.9"}}
	query := url.Values{"page": {"2"}, "per_page": {"50"}}
	b.ReportAllocs()
	for b.Loop() {
		p.Key("prod", "issues", "/repos/keyward/keyward/issues", query, h)
	}
}

// BenchmarkKeyFor is the key's share of a hit, for a request like
// BenchmarkKey's with three forwarded headers.
func BenchmarkKeyFor(b *testing.B) {
	p := mustPolicy(b, PolicyOptions{TTL: time.Hour, Vary: []string{"Accept-Language"}})
	h := http.Header{"Accept-Language": {"en-GB, en;q=0.9"}}
	fwd := http.Header{
		"Accept":               {"application/vnd.github+json"},
		"Accept-Language":      {"en-GB, en;q=0.9"},
		"X-Github-Api-Version": {"2022-11-28"},
	}
	b.ReportAllocs()
	for b.Loop() {
		p.KeyFor("prod", "issues", "/repos/keyward/keyward/issues", "page=2&per_page=50", fwd, h)
	}
}

// BenchmarkHTTP compares a cache hit with a proxied request over loopback
// HTTP, from a client with parallel keep-alive connections: the
// throughput a route gains when its responses are cached.
func BenchmarkHTTP(b *testing.B) {
	up := benchUpstream(b)
	target, _ := url.Parse(up.URL)
	proxy := &httputil.ReverseProxy{
		Rewrite:  func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		ErrorLog: log.New(io.Discard, "", 0),
		Transport: &http.Transport{
			MaxIdleConnsPerHost: 256,
		},
	}
	c := New(NewMemory(0, nil), Options{})
	p := mustPolicy(b, PolicyOptions{TTL: time.Hour})
	handlers := []struct {
		name string
		h    http.HandlerFunc
	}{
		{"proxied", proxy.ServeHTTP},
		{"hit", func(w http.ResponseWriter, r *http.Request) {
			key := p.KeyFor("prod", "r", r.URL.EscapedPath(), r.URL.RawQuery, nil, r.Header)
			c.Serve(w, r, key, p, proxy.ServeHTTP)
		}},
	}
	for _, hd := range handlers {
		b.Run(hd.name, func(b *testing.B) {
			front := httptest.NewServer(hd.h)
			defer front.Close()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
			defer client.CloseIdleConnections()
			u := front.URL + "/repos/keyward/keyward/issues?page=2"
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					res, err := client.Get(u)
					if err != nil {
						b.Error(err)
						return
					}
					n, _ := io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if n != int64(len(benchBody)) {
						b.Errorf("read %d bytes", n)
						return
					}
				}
			})
		})
	}
}

// BenchmarkMemoryParallel is the Memory store under contention from every
// CPU, for one hot key and for many.
func BenchmarkMemoryParallel(b *testing.B) {
	m := NewMemory(0, nil)
	keys := make([]Key, 1024)
	for i := range keys {
		keys[i][0], keys[i][1] = byte(i), byte(i>>8)
		m.Set(context.Background(), keys[i], bodyEntry(100), time.Hour)
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			m.Get(context.Background(), keys[i%len(keys)])
			i++
		}
	})
}
