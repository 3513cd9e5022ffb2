package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// mix is the share of each route in the load, one slot per request in
// turn: 40% plain, 30% cached, 15% limited, 10% guarded, 5% stream.
var mix = []string{
	routePlain, routeCached, routeLimited, routePlain, routeCached,
	routeGuarded, routePlain, routeCached, routeLimited, routePlain,
	routeCached, routeStream, routePlain, routeCached, routeLimited,
	routePlain, routeCached, routeGuarded, routePlain, routeCached,
}

// cachedKeys is how many distinct keys the cached route is asked for.
const cachedKeys = 16

// outcome is what became of one request, from the client's view.
type outcome int

const (
	// answered: 200 with exactly the body the upstream makes for the id.
	answered outcome = iota
	// refused: a non-200 answer carrying the gateway's JSON error.
	refused
	// cut: the answer began and its body ended with a transport error, so
	// the client knows it is incomplete.
	cut
	// wrong: an answer that looks complete and is not the right one (a
	// different or truncated body, a wrong echoed id, an error without
	// the gateway's error body).
	wrong
	// lost: no answer at all (no status line before the client timeout, or
	// the connection failed).
	lost
)

func (o outcome) String() string {
	return [...]string{"answered", "refused", "cut", "wrong", "lost"}[o]
}

// result is one request as the client saw it.
type result struct {
	route    string
	id       string
	start    time.Time
	head     time.Duration // until the status line and headers
	total    time.Duration // until the end of the body
	status   int
	code     string // the gateway's error code of a refused answer
	outcome  outcome
	hit      bool // Cache-Status says the cache answered
	attempts int  // connections the transport used: >1 means it re-sent the request
	detail   string
}

// latency is what the request cost the client: to the end of the body, or
// to the headers for a stream, whose body takes as long as the upstream
// makes it.
func (r *result) latency() time.Duration {
	if r.route == routeStream {
		return r.head
	}
	return r.total
}

// end is when the client had its answer.
func (r *result) end() time.Time { return r.start.Add(r.latency()) }

type loadFlags struct {
	base         string
	origin       string
	rate         int
	duration     time.Duration
	maxInFlight  int
	timeout      time.Duration
	upstreamLog  string
	events       string
	metrics      string
	storeTimeout time.Duration
	recovery     time.Duration
	grace        time.Duration
	pid          int
	sample       time.Duration
	warmup       time.Duration
	raw          string
	redis        string
}

func runLoad(ctx context.Context, args []string, stdout, stderr io.Writer) (bool, error) {
	var f loadFlags
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.base, "url", "http://127.0.0.1:9205", "the gateway's base URL")
	fs.StringVar(&f.origin, "origin", "https://app.example", "Origin header sent")
	fs.IntVar(&f.rate, "rate", 500, "requests per second, sent at a steady pace whatever the answers take")
	fs.DurationVar(&f.duration, "duration", 0, "how long to send (0: until SIGINT or SIGTERM)")
	fs.IntVar(&f.maxInFlight, "max-inflight", 2000, "requests in flight at most; a request due beyond it is not sent, and counted")
	fs.DurationVar(&f.timeout, "timeout", 15*time.Second, "a request without its whole answer by then is lost (or cut)")
	fs.StringVar(&f.upstreamLog, "upstream-log", "", "the upstream's id log, read at the end for duplicates")
	fs.StringVar(&f.events, "events", "", "the fault events file the scripts and the upstream append to")
	fs.StringVar(&f.metrics, "metrics", "", "the gateway's metrics URL: heap and goroutines per sample, reloads at the end")
	fs.DurationVar(&f.storeTimeout, "store-timeout", 50*time.Millisecond, "the routes' store_timeout: no request during a Redis fault may take longer")
	fs.DurationVar(&f.recovery, "recovery", 50*time.Millisecond, "the most an upstream restart may take to show as a success")
	fs.DurationVar(&f.grace, "grace", time.Second, "errors this long after a fault ended are still the fault's")
	fs.IntVar(&f.pid, "pid", 0, "the gateway's process, whose RSS is sampled (0: none)")
	fs.DurationVar(&f.sample, "sample", 10*time.Second, "RSS sampling interval")
	fs.DurationVar(&f.warmup, "warmup", time.Minute, "RSS samples before this are warm-up, not trend")
	fs.StringVar(&f.redis, "redis", "", "Redis's address, PINGed every 10 ms to tell a slow Redis from a slow gateway")
	fs.StringVar(&f.raw, "raw", "", "file every request is written to, one tab-separated line each, for a closer look")
	if err := fs.Parse(args); err != nil {
		return false, err
	}
	if f.rate <= 0 {
		return false, errors.New("load: -rate must be positive")
	}
	l := newLoader(f)
	var reloadsBefore float64
	if f.metrics != "" {
		var err error
		if reloadsBefore, _, err = reloads(f.metrics); err != nil {
			return false, err
		}
	}
	var samples []sample
	var sampling sync.WaitGroup
	sctx, stopSampling := context.WithCancel(context.Background())
	if f.pid != 0 {
		sampling.Go(func() { samples = sampleMemory(sctx, f.pid, f.metrics, f.sample, stdout) })
	}
	var pings []ping
	if f.redis != "" {
		sampling.Go(func() { pings = pingRedis(sctx, f.redis, 10*time.Millisecond, time.Second) })
	}
	var waitBefore time.Duration
	if f.pid != 0 {
		waitBefore, _ = runQueueWait(f.pid)
	}
	started := time.Now()
	notSent := l.send(ctx)
	sent := time.Since(started)
	stopSampling()
	sampling.Wait()
	fmt.Fprintf(stdout, "sent for %s; waiting for answers done\n", sent.Round(time.Millisecond))
	if f.pid != 0 {
		if waitAfter, err := runQueueWait(f.pid); err == nil {
			fmt.Fprintf(stdout, "the gateway's threads waited %s for a CPU in all (run queue, /proc/PID/task/*/schedstat): %.0f%% of the run's time\n",
				(waitAfter - waitBefore).Round(time.Millisecond), 100*float64(waitAfter-waitBefore)/float64(sent))
		}
	}

	in := input{results: l.results, notSent: notSent, samples: samples, pings: pings}
	var err error
	if f.events != "" {
		if in.events, err = readEvents(f.events); err != nil {
			return false, err
		}
	}
	if f.upstreamLog != "" {
		if in.upstream, err = readUpstreamLog(f.upstreamLog); err != nil {
			return false, err
		}
	}
	if f.metrics != "" {
		in.reloadsOK, in.reloadsFailed, err = reloads(f.metrics)
		if err != nil {
			return false, err
		}
		in.reloadsOK -= reloadsBefore
		in.haveMetrics = true
	}
	if f.raw != "" {
		if err := writeRaw(f.raw, l.results); err != nil {
			return false, err
		}
	}
	rep := analyse(in, figures{storeTimeout: f.storeTimeout, recovery: f.recovery, grace: f.grace, warmup: f.warmup})
	rep.print(stdout)
	return rep.met(), nil
}

type loader struct {
	f       loadFlags
	client  *http.Client
	runID   string
	mu      sync.Mutex
	results []result
}

func newLoader(f loadFlags) *loader {
	tr := &http.Transport{
		Proxy:               nil, // straight to the gateway, whatever HTTP_PROXY says
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: f.maxInFlight,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &loader{
		f: f,
		client: &http.Client{
			Transport:     tr,
			Timeout:       f.timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		runID: strconv.FormatInt(time.Now().UnixMilli(), 36),
	}
}

// send starts one request per tick until ctx ends or the duration is up,
// then waits for every answer. It returns how many requests were due but
// not sent because -max-inflight were in flight.
func (l *loader) send(ctx context.Context) int {
	if l.f.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.f.duration)
		defer cancel()
	}
	tick := time.NewTicker(time.Second / time.Duration(l.f.rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	var inFlight atomic.Int64
	notSent := 0
	for seq := 0; ; seq++ {
		select {
		case <-ctx.Done():
			wg.Wait()
			return notSent
		case <-tick.C:
		}
		if inFlight.Load() >= int64(l.f.maxInFlight) {
			notSent++
			continue
		}
		inFlight.Add(1)
		wg.Go(func() {
			defer inFlight.Add(-1)
			r := l.do(seq)
			l.mu.Lock()
			l.results = append(l.results, r)
			l.mu.Unlock()
		})
	}
}

// do sends request seq and checks its answer. Its context is not the
// run's: a stopped run waits for the answers of what it sent.
func (l *loader) do(seq int) result {
	route := mix[seq%len(mix)]
	r := result{route: route, id: l.runID + "-" + strconv.Itoa(seq)}
	var body io.Reader
	method, query, want := http.MethodGet, "id="+r.id, responseBody(route, r.id)
	switch route {
	case routeCached:
		k := strconv.Itoa(seq / len(mix) % cachedKeys)
		query, want = "k="+k, responseBody(routeCached, "k"+k)
	case routeLimited:
		method, body = http.MethodPost, bytes.NewReader(requestBody(r.id))
	case routeStream:
		want = streamBody(r.id)
	}
	var attempts atomic.Int32
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { attempts.Add(1) },
	})
	req, err := http.NewRequestWithContext(ctx, method, l.f.base+"/"+route+"?"+query, body)
	if err != nil {
		r.outcome, r.detail = wrong, err.Error()
		return r
	}
	req.Header.Set("X-Request-Id", r.id)
	req.Header.Set("Origin", l.f.origin)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	r.start = time.Now()
	resp, err := l.client.Do(req)
	r.head = time.Since(r.start)
	r.attempts = int(attempts.Load())
	if err != nil {
		r.total = r.head
		r.outcome, r.detail = lost, err.Error()
		return r
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	r.total = time.Since(r.start)
	r.status = resp.StatusCode
	r.hit = strings.Contains(resp.Header.Get("Cache-Status"), "hit")
	r.outcome, r.code, r.detail = check(resp, got, err, r.id, want)
	return r
}

// check classifies an answer whose body was read as got (err: how the
// read ended).
func check(resp *http.Response, got []byte, err error, id string, want []byte) (outcome, string, string) {
	if err != nil {
		return cut, "", err.Error()
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		if json.Unmarshal(got, &e) != nil || e.Error.Code == "" {
			return wrong, "", fmt.Sprintf("status %d without the gateway's error body: %.80q", resp.StatusCode, got)
		}
		return refused, e.Error.Code, ""
	}
	if echoed := resp.Header.Get("X-Request-Id"); echoed != id {
		return wrong, "", fmt.Sprintf("X-Request-Id %q, sent %q", echoed, id)
	}
	if !bytes.Equal(got, want) {
		return wrong, "", fmt.Sprintf("a %d-byte body that is not the request's (%d bytes): %.80q", len(got), len(want), got)
	}
	return answered, "", ""
}

// writeRaw writes one line per request, in the order they were sent:
// start (unix ns), route, id, outcome, status, error code, time to headers
// and to the end of the body (µs), connections used, detail.
func writeRaw(path string, results []result) error {
	sorted := slices.Clone(results)
	slices.SortFunc(sorted, func(a, b result) int { return a.start.Compare(b.start) })
	var b bytes.Buffer
	b.WriteString("start_ns\troute\tid\toutcome\tstatus\tcode\thead_us\ttotal_us\tconns\tdetail\n")
	for _, r := range sorted {
		fmt.Fprintf(&b, "%d\t%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%s\n", r.start.UnixNano(), r.route, r.id, r.outcome,
			r.status, r.code, r.head.Microseconds(), r.total.Microseconds(), r.attempts, strings.ReplaceAll(r.detail, "\t", " "))
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing the raw results: %w", err)
	}
	return nil
}
