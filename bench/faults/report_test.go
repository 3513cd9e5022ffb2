package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var t0 = time.Unix(1_800_000_000, 0)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func ok(route, id string, startMS, latMS int) result {
	return result{route: route, id: id, start: at(startMS), head: time.Duration(latMS) * time.Millisecond,
		total: time.Duration(latMS) * time.Millisecond, status: 200, outcome: answered, attempts: 1}
}

func refusal(route, id, code string, startMS, latMS int) result {
	r := ok(route, id, startMS, latMS)
	r.outcome, r.code, r.status = refused, code, 503
	return r
}

func TestAnalyse(t *testing.T) {
	events := []event{
		{at(0), evUpstreamUp},
		{at(1000), evUpstreamKill},
		{at(2000), evUpstreamUp},
		{at(5000), evRedisStop},
		{at(6000), evRedisCont},
		{at(7000), evReload},
	}
	results := []result{
		ok(routePlain, "a", 100, 2),
		refusal(routePlain, "b", "upstream_unavailable", 1500, 1), // explained: the upstream is down
		ok(routePlain, "c", 2003, 4),                              // the first success, 7 ms after the restart
		ok(routeCached, "d", 1990, 1),                             // cached: not a recovery
		ok(routeLimited, "e", 5100, 104),                          // 2× the store timeout beside a 4 ms plain request
		ok(routePlain, "f", 5110, 4),
		refusal(routeGuarded, "g", "store_unavailable", 5200, 51),
		refusal(routeGuarded, "k", "store_unavailable", 7500, 1), // Redis runs again, the gateway does not use it yet
		ok(routeGuarded, "j", 7600, 2),                           // the gateway's recovery from the freeze
		refusal(routeGuarded, "h", "store_unavailable", 9000, 1), // Redis up, no stall: unexplained
		{route: routeStream, id: "i", start: at(3500), head: 3 * time.Millisecond, total: 300 * time.Millisecond, outcome: cut},
	}
	upstream := map[string]int{"plain a": 1, "plain c": 2, "limited e": 1, "plain f": 1, "guarded j": 1, "cached k1": 5}
	rep := analyse(input{results: results, events: events, upstream: upstream, haveMetrics: true, reloadsOK: 1},
		figures{storeTimeout: 50 * time.Millisecond, recovery: 50 * time.Millisecond, grace: time.Second, warmup: time.Minute})

	if diff := cmp.Diff([]string{"plain c ×2"}, rep.duplicates); diff != "" {
		t.Errorf("duplicates (-want +got):\n%s", diff)
	}
	if rep.phantoms != 0 {
		t.Errorf("phantoms = %d, want 0", rep.phantoms)
	}
	var unexplained []string
	for _, r := range rep.unexplained {
		unexplained = append(unexplained, r.id)
	}
	// The cut stream at 3 s is after the upstream came back plus the grace.
	if diff := cmp.Diff([]string{"h", "i"}, unexplained); diff != "" {
		t.Errorf("unexplained (-want +got):\n%s", diff)
	}
	if len(rep.restarts) != 1 || rep.restarts[0].recovery != 7*time.Millisecond {
		t.Errorf("restarts = %+v, want one with a 7ms recovery", rep.restarts)
	}
	if len(rep.redis) != 1 {
		t.Fatalf("redis windows = %d, want 1", len(rep.redis))
	}
	fl := rep.redis[0]
	if !fl.w.back.Equal(at(6000)) || !fl.w.to.Equal(at(7602)) {
		t.Errorf("frozen window back at %v, over at %v; want 6000ms and 7602ms", fl.w.back.Sub(t0), fl.w.to.Sub(t0))
	}
	if fl.max != 104*time.Millisecond || fl.excess != 100*time.Millisecond || fl.excessRoute != routeLimited || fl.over != 2 {
		t.Errorf("frozen window = max %v, excess %v (%s), over %d; want 104ms, 100ms (limited), 2", fl.max, fl.excess, fl.excessRoute, fl.over)
	}
	got := map[string]bool{}
	for _, v := range rep.verdicts() {
		got[strings.Fields(v.figure)[0]] = v.met
	}
	want := map[string]bool{"lost": true, "wrong": true, "cut": false, "not": true, "duplicated": false, "200s": true,
		"recovery": true, "redis": false, "1": true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("verdicts met (-want +got):\n%s", diff)
	}
	if rep.met() {
		t.Error("met() = true with a duplicate")
	}
}

func TestStoreUnavailableDuringAStall(t *testing.T) {
	results := []result{
		ok(routePlain, "a", 1000, 120), // the machine stalled for 120 ms
		refusal(routeGuarded, "b", "store_unavailable", 1400, 1),
		refusal(routeGuarded, "c", "store_unavailable", 3000, 1), // two seconds later: not the stall's
	}
	pings := []ping{{at(2990), 2 * time.Millisecond}, {at(5000), 80 * time.Millisecond}} // Redis stalled at 5 s
	results = append(results, refusal(routeGuarded, "d", "store_unavailable", 5500, 1))
	rep := analyse(input{results: results, pings: pings}, figures{storeTimeout: 50 * time.Millisecond, grace: time.Second})
	if rep.stallRefused != 1 || rep.slowRefused != 1 || len(rep.unexplained) != 1 || rep.unexplained[0].id != "c" {
		t.Errorf("stallRefused %d, slowRefused %d, unexplained %+v; want 1, 1 and c", rep.stallRefused, rep.slowRefused, rep.unexplained)
	}
}

func TestRestartWithoutSuccessIsNotMet(t *testing.T) {
	events := []event{{at(0), evUpstreamKill}, {at(100), evUpstreamUp}}
	results := []result{refusal(routePlain, "a", "upstream_unavailable", 150, 1)}
	rep := analyse(input{results: results, events: events}, figures{recovery: 50 * time.Millisecond})
	if rep.maxRecovery() != -1 || rep.restarts[0].failedAft != 1 || rep.met() {
		t.Errorf("restarts %+v, met %v; want no recovery, one failure after, not met", rep.restarts, rep.met())
	}
}

func TestRSSTrend(t *testing.T) {
	series := func(f func(i int) float64) []sample {
		var s []sample
		for i := range 61 { // ten minutes every ten seconds
			s = append(s, sample{t: time.Duration(i) * 10 * time.Second, rssMB: f(i)})
		}
		return s
	}
	tests := []struct {
		name  string
		s     []sample
		flat  bool
		judge bool
	}{
		{"flat with noise", series(func(i int) float64 { return 40 + float64(i%3) }), true, true},
		{"warm-up growth is not trend", series(func(i int) float64 { return 20 + min(float64(i), 6)*3 }), true, true},
		{"a leak of 1 MB a minute", series(func(i int) float64 { return 40 + float64(i)/6 }), false, true},
		{"a leak of 0.3 MB a minute", series(func(i int) float64 { return 40 + float64(i)/20 }), false, true},
		// More connections in the last minute (a stall): its mean is 2.4 MB
		// higher, the trend is not.
		{"a bump at the end", series(func(i int) float64 { return 35 + 2.4*float64(i/55) }), true, true},
		{"too short", series(func(int) float64 { return 40 })[:15], false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := rssTrend(tt.s, time.Minute)
			if tr.judged != tt.judge || tr.flat != tt.flat {
				t.Errorf("rssTrend = %+v, want judged %v flat %v", tr, tt.judge, tt.flat)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	want := responseBody(routePlain, "x-1")
	resp := func(status int, id string) *http.Response {
		r := &http.Response{StatusCode: status, Header: http.Header{}}
		r.Header.Set("X-Request-Id", id)
		return r
	}
	tests := []struct {
		name string
		resp *http.Response
		body []byte
		err  error
		want outcome
		code string
	}{
		{"the right body", resp(200, "x-1"), want, nil, answered, ""},
		{"a body cut short, the client told", resp(200, "x-1"), want[:100], io.ErrUnexpectedEOF, cut, ""},
		{"a body cut short, framed as complete", resp(200, "x-1"), want[:100], nil, wrong, ""},
		{"another request's body", resp(200, "x-1"), responseBody(routePlain, "x-2"), nil, wrong, ""},
		{"another request's id", resp(200, "x-2"), want, nil, wrong, ""},
		{"the gateway's error", resp(502, ""), []byte(`{"error":{"code":"upstream_unavailable","message":"m"}}`), nil, refused, "upstream_unavailable"},
		{"an error that is not the gateway's", resp(502, ""), []byte("Bad Gateway"), nil, wrong, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, code, _ := check(tt.resp, tt.body, tt.err, "x-1", want)
			if got != tt.want || code != tt.code {
				t.Errorf("check = %v %q, want %v %q", got, code, tt.want, tt.code)
			}
		})
	}
}

// TestUpstream checks the upstream's answers and its id log through a real
// server: what the load checks against is what the upstream sends.
func TestUpstream(t *testing.T) {
	var log lockedBuffer
	u := &upstream{ids: &log, interval: time.Millisecond}
	srv := httptest.NewServer(u.handler())
	defer srv.Close()
	get := func(method, path string, body []byte, auth bool) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if auth {
			req.Header.Set("Authorization", "Bearer bench-secret")
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	tests := []struct {
		name         string
		method, path string
		body         []byte
		auth         bool
		status       int
		want         []byte
	}{
		{"plain", "GET", "/plain?id=p1", nil, true, 200, responseBody(routePlain, "p1")},
		{"cached", "GET", "/cached?k=3", nil, true, 200, responseBody(routeCached, "k3")},
		{"limited", "POST", "/limited?id=l1", requestBody("l1"), true, 200, responseBody(routeLimited, "l1")},
		{"stream", "GET", "/stream?id=s1", nil, true, 200, streamBody("s1")},
		{"no credential", "GET", "/plain?id=p2", nil, false, 401, nil},
		{"another body", "POST", "/limited?id=l2", requestBody("l3"), true, 400, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, got := get(tt.method, tt.path, tt.body, tt.auth)
			if status != tt.status || (tt.want != nil && !bytes.Equal(got, tt.want)) {
				t.Errorf("%s %s = %d %.60q, want %d %.60q", tt.method, tt.path, status, got, tt.status, tt.want)
			}
		})
	}
	want := "plain p1\ncached k3\nlimited l1\nstream s1\nlimited l2\n"
	if diff := cmp.Diff(want, log.String()); diff != "" { // the upstream records an id before it reads the body
		t.Errorf("id log (-want +got):\n%s", diff)
	}
}

// lockedBuffer is the upstream's id log in a test: the handlers write it
// and the test reads it, on other goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestProcessReadings(t *testing.T) {
	if rss, err := rssMB(os.Getpid()); err != nil || rss <= 0 {
		t.Errorf("rssMB(self) = %v, %v; want a positive size", rss, err)
	}
	if _, err := runQueueWait(os.Getpid()); err != nil {
		t.Errorf("runQueueWait(self): %v", err)
	}
	if _, err := rssMB(-1); err == nil {
		t.Error("rssMB(-1): no error")
	}
}

func TestMetricValue(t *testing.T) {
	text := "# HELP x\nkeyward_config_reloads_total{result=\"failed\"} 2\nkeyward_config_reloads_total{result=\"ok\"} 31\ngo_goroutines 12\n"
	for series, want := range map[string]float64{`keyward_config_reloads_total{result="ok"}`: 31, "go_goroutines": 12} {
		if got, ok := metricValue(text, series); !ok || got != want {
			t.Errorf("metricValue(%s) = %v, %v; want %v", series, got, ok, want)
		}
	}
	if _, ok := metricValue(text, "go_threads"); ok {
		t.Error("metricValue(go_threads) found a series that is not there")
	}
}

// TestPingRedis PINGs a fake Redis that answers twice, then stops
// answering: the third PING counts as slow as the timeout.
func TestPingRedis(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for n := 1; ; n++ {
			if _, err := br.ReadString('\n'); err != nil {
				return
			}
			if n == 3 {
				cancel() // the third goes unanswered
				return
			}
			c.Write([]byte("+PONG\r\n"))
		}
	}()
	pings := pingRedis(ctx, ln.Addr().String(), time.Millisecond, 200*time.Millisecond)
	if len(pings) != 3 {
		t.Fatalf("%d pings, want 3: %+v", len(pings), pings)
	}
	if pings[0].rtt >= 200*time.Millisecond || pings[1].rtt >= 200*time.Millisecond || pings[2].rtt != 200*time.Millisecond {
		t.Errorf("rtts %v %v %v; want two answers and a timeout", pings[0].rtt, pings[1].rtt, pings[2].rtt)
	}
	if got := slowestPing(pings, pings[0].start, pings[1].start); got >= 200*time.Millisecond {
		t.Errorf("slowestPing over the answered two = %v", got)
	}
}
