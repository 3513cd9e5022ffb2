package llm_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/llm"
	"github.com/keyward/keyward/internal/llm/llmtest"
)

// recordStream returns a stand-in's streamed answer of n tokens, split
// into its events (each with its blank line), as the provider sends
// them: one write per event.
func recordStream(b *testing.B, tg target, n int64) [][]byte {
	b.Helper()
	s := llmtest.NewServer(b, llmtest.Config{API: tg.api, Output: n, Text: func(i int) string { return " token" }})
	p, err := llm.Compile(configFor(tg, n))
	if err != nil {
		b.Fatal(err)
	}
	path, _, _ := strings.Cut(tg.path, "?")
	r, err := p.Prepare([]byte(tg.body), path)
	if err != nil {
		b.Fatal(err)
	}
	res, err := http.Post(s.URL+tg.path, "application/json", bytes.NewReader(r.Body))
	if err != nil {
		b.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		b.Fatal(err)
	}
	sep := []byte("\n\n")
	if tg.api == "gemini" {
		sep = []byte("\r\n\r\n")
	}
	var events [][]byte
	for len(body) > 0 {
		i := bytes.Index(body, sep)
		if i < 0 {
			events = append(events, body)
			break
		}
		events = append(events, body[:i+len(sep)])
		body = body[i+len(sep):]
	}
	return events
}

func streamTargets() []target {
	var ts []target
	for _, tg := range targets() {
		if tg.stream && (tg.api != "gemini" || strings.HasSuffix(tg.path, "alt=sse")) {
			ts = append(ts, tg)
		}
	}
	return ts
}

// BenchmarkMeterWrite is the meter's own cost per event: a recorded
// 1000-token stream written to a Meter one event per Write.
func BenchmarkMeterWrite(b *testing.B) {
	for _, tg := range streamTargets() {
		events := recordStream(b, tg, 1000)
		size := 0
		for _, e := range events {
			size += len(e)
		}
		b.Run(tg.api, func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			cpu := startCPU(b)
			for b.Loop() {
				m := llm.NewMeter(mustAPI(tg.api))
				for _, e := range events {
					_, _ = m.Write(e)
				}
				if !m.Usage().Complete {
					b.Fatal("usage not read")
				}
			}
			b.ReportMetric(float64(cpu.stop())/float64(b.N*len(events)), "cpu-ns/event")
		})
	}
}

func mustAPI(s string) llm.API {
	a, err := llm.ParseAPI(s)
	if err != nil {
		panic(err)
	}
	return a
}

// BenchmarkStreamLoopback is a stream as the gateway relays it: an
// upstream on loopback writes a recorded 1000-token OpenAI chat stream
// one event per write and flush; the client reads it over HTTP/1.1
// (chunked). Each iteration reads the stream twice, once through the
// meter and once not, in alternating order, so that both see the same
// machine (a shared one: its load moves by tens of percent between
// runs). It reports the process's CPU time per stream (client, upstream
// and runtime together, as in a gateway, which also writes each event),
// the meter's share of it, and the mean time to the first event.
func BenchmarkStreamLoopback(b *testing.B) {
	tg := streamTargets()[0]
	events := recordStream(b, tg, 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for _, e := range events {
			_, _ = w.Write(e)
			_ = rc.Flush()
		}
	}))
	b.Cleanup(srv.Close)
	buf := make([]byte, 32<<10)
	// stream reads the stream once and returns its CPU time and time to
	// the first event.
	stream := func(metered bool) (cpu int64, first time.Duration) {
		clock := startProcessCPU(b)
		start := time.Now()
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, srv.URL, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		defer res.Body.Close()
		var body io.ReadCloser = res.Body
		var m *llm.Meter
		if metered {
			m = llm.NewMeter(llm.OpenAIChat)
			body = m.Body(body)
		}
		br := bufio.NewReaderSize(body, 32<<10)
		if _, err := br.ReadSlice('\n'); err != nil {
			b.Fatal(err)
		}
		first = time.Since(start)
		if _, err := io.CopyBuffer(io.Discard, br, buf); err != nil {
			b.Fatal(err)
		}
		if m != nil && !m.Usage().Complete {
			b.Fatal("usage not read")
		}
		return clock.stop(), first
	}
	var cpu [2]int64
	var first [2][]time.Duration
	i := 0
	for b.Loop() {
		for k := range 2 {
			metered := (i+k)%2 == 1
			c, f := stream(metered)
			cpu[btoi(metered)] += c
			first[btoi(metered)] = append(first[btoi(metered)], f)
		}
		i++
	}
	n := float64(b.N)
	b.ReportMetric(float64(cpu[0])/n/1e6, "unmetered-cpu-ms")
	b.ReportMetric(float64(cpu[1])/n/1e6, "metered-cpu-ms")
	b.ReportMetric(100*float64(cpu[1]-cpu[0])/float64(cpu[0]), "meter-%")
	b.ReportMetric(float64(median(first[0]).Microseconds()), "unmetered-ttfe-p50-µs")
	b.ReportMetric(float64(median(first[1]).Microseconds()), "metered-ttfe-p50-µs")
}

func median(ds []time.Duration) time.Duration {
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// configFor is a route allowing tg's model up to maxTokens.
func configFor(tg target, maxTokens int64) config.LLM {
	return config.LLM{API: tg.api, Models: []string{tg.model}, MaxTokens: maxTokens,
		Prices: map[string]config.ModelPrice{tg.model: {Input: "$0.15", Output: "$0.60"}}}
}

// cpuClock measures CPU time (user + system) rather than wall time: the
// machine the numbers come from is shared, and a benchmark's wall time
// there counts other processes' work.
type cpuClock struct {
	who   int
	start int64
}

// startCPU measures the calling goroutine, locked to its thread.
func startCPU(b *testing.B) *cpuClock {
	runtime.LockOSThread()
	b.Cleanup(runtime.UnlockOSThread)
	return &cpuClock{who: syscall.RUSAGE_THREAD, start: cpuNow(syscall.RUSAGE_THREAD)}
}

// startProcessCPU measures the whole process (client, server, runtime).
func startProcessCPU(*testing.B) *cpuClock {
	return &cpuClock{who: syscall.RUSAGE_SELF, start: cpuNow(syscall.RUSAGE_SELF)}
}

func (c *cpuClock) stop() int64 { return cpuNow(c.who) - c.start }

func cpuNow(who int) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		panic(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
