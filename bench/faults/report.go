package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// event is one line of the events file: a fault begun or ended, an
// upstream listening again, a config renamed into place.
type event struct {
	at   time.Time
	name string
}

// The events the scripts and the upstream write.
const (
	evUpstreamKill = "upstream_kill"
	evUpstreamUp   = "upstream_up"
	evRedisKill    = "redis_kill"
	evRedisUp      = "redis_up"
	evRedisStop    = "redis_stop"
	evRedisCont    = "redis_cont"
	evReload       = "reload"
)

// window is a fault, from the event that began it to the one that ended it
// (the end of the run if none did).
type window struct {
	kind     string // "upstream down", "redis down", "redis frozen"
	from, to time.Time
	// back is when Redis answered again (PING) or ran again (SIGCONT);
	// a Redis fault lasts, for the gateway, until a fail_closed route
	// succeeds again, which is to.
	back time.Time
}

func (w window) overlaps(from, to time.Time, grace time.Duration) bool {
	return !to.Before(w.from) && !from.After(w.to.Add(grace))
}

// input is everything a run leaves for the report.
type input struct {
	results       []result
	notSent       int
	events        []event
	upstream      map[string]int // "route id" -> times the upstream was asked
	haveMetrics   bool           // the reload counters were read
	reloadsOK     float64        // during the run
	reloadsFailed float64        // since the gateway started
	samples       []sample
	pings         []ping // Redis's own answers, when it was PINGed
}

// figures are issue 15's targets.
type figures struct {
	storeTimeout time.Duration // no request during a Redis fault slower
	recovery     time.Duration // first success after an upstream restart within
	grace        time.Duration // errors this long after a fault are the fault's
	warmup       time.Duration // RSS samples before it are not trend
}

// routeStats sums one route's results.
type routeStats struct {
	route    string
	outcomes [lost + 1]int
	codes    map[string]int
	hits     int
	lat      []time.Duration // of answered requests
}

// restart is one upstream restart seen from the client.
type restart struct {
	up        time.Time
	recovery  time.Duration // to the first success; -1 if none
	failedAft int           // direct-route requests sent after up and over before the next kill that failed
}

// faultLatency is the latency of the requests that overlapped one Redis
// fault.
type faultLatency struct {
	w        window
	requests int
	max      time.Duration
	maxRoute string
	over     int // slower than the store timeout
	codes    map[string]int
	// The store's share: how much longer a request of a route that uses
	// the store took than the slowest store-free request in flight at the
	// same time, which the machine's own stalls slowed as much.
	excess      time.Duration
	excessOf    time.Duration // that request's latency
	excessRoute string
	excessStall time.Duration // the slowest store-free request beside it
}

type report struct {
	fig          figures
	sent         int
	notSent      int
	byRoute      []*routeStats
	duplicates   []string
	phantoms     int // a 200 on a route without cache that the upstream never saw
	unexplained  []result
	stallRefused int // store_unavailable while Redis was up, within a second of a gateway stall longer than the store timeout
	slowRefused  int // the same, within a second of a PING that Redis answered slower than the store timeout
	retried      int
	restarts     []restart
	redis        []faultLatency
	baseline     []time.Duration
	events       map[string]int
	reloadsOK    float64
	reloadsFail  float64
	haveMetrics  bool
	haveLog      bool
	rss          trend
	examples     map[outcome][]result
}

// analyse checks a run's results against the figures.
func analyse(in input, fig figures) *report {
	rep := &report{fig: fig, sent: len(in.results), notSent: in.notSent, events: map[string]int{},
		reloadsOK: in.reloadsOK, reloadsFail: in.reloadsFailed, haveMetrics: in.haveMetrics,
		haveLog: in.upstream != nil, examples: map[outcome][]result{}}
	for _, e := range in.events {
		rep.events[e.name]++
	}
	windows := faultWindows(in.events)
	end := time.Time{}
	for i := range in.results {
		if e := in.results[i].end(); e.After(end) {
			end = e
		}
	}
	for i := range windows {
		if windows[i].to.IsZero() {
			windows[i].to = end
		}
		if windows[i].kind != "upstream down" {
			windows[i].back = windows[i].to
			windows[i].to = recovered(windows[i].to, end, in.results)
		}
	}
	st := newStalls(in.results)
	stats := map[string]*routeStats{}
	for _, r := range mix {
		if stats[r] == nil {
			stats[r] = &routeStats{route: r, codes: map[string]int{}}
			rep.byRoute = append(rep.byRoute, stats[r])
		}
	}
	for i := range in.results {
		r := &in.results[i]
		s := stats[r.route]
		s.outcomes[r.outcome]++
		if r.hit {
			s.hits++
		}
		if r.attempts > 1 {
			rep.retried++
		}
		switch r.outcome {
		case answered:
			s.lat = append(s.lat, r.latency())
			if in.upstream != nil && r.route != routeCached && in.upstream[r.route+" "+r.id] == 0 {
				rep.phantoms++
			}
			if !inAny(windows, r.start, r.end(), fig.grace) {
				rep.baseline = append(rep.baseline, r.latency())
			}
		case refused:
			s.codes[r.code]++
			switch {
			case explained(windows, r, fig.grace):
			case r.code == "store_unavailable" && st.around(r.start.Add(-time.Second), r.end()) > fig.storeTimeout:
				rep.stallRefused++
			case r.code == "store_unavailable" && slowestPing(in.pings, r.start.Add(-time.Second), r.end()) > fig.storeTimeout:
				rep.slowRefused++
			default:
				rep.unexplained = append(rep.unexplained, *r)
			}
		case cut:
			if !explained(windows, r, fig.grace) {
				rep.unexplained = append(rep.unexplained, *r)
			}
		}
		if r.outcome >= cut && len(rep.examples[r.outcome]) < 5 {
			rep.examples[r.outcome] = append(rep.examples[r.outcome], *r)
		}
	}
	for key, n := range in.upstream {
		if n > 1 && !strings.HasPrefix(key, routeCached+" ") {
			rep.duplicates = append(rep.duplicates, fmt.Sprintf("%s ×%d", key, n))
		}
	}
	sort.Strings(rep.duplicates)
	rep.restarts = restarts(in.events, in.results)
	for _, w := range windows {
		if w.kind != "upstream down" {
			rep.redis = append(rep.redis, latencyDuring(w, in.results, st, fig.storeTimeout))
		}
	}
	rep.rss = rssTrend(in.samples, fig.warmup)
	return rep
}

// faultWindows pairs each fault's start with its end.
func faultWindows(events []event) []window {
	ends := map[string]string{evUpstreamKill: evUpstreamUp, evRedisKill: evRedisUp, evRedisStop: evRedisCont}
	kinds := map[string]string{evUpstreamKill: "upstream down", evRedisKill: "redis down", evRedisStop: "redis frozen"}
	var ws []window
	open := map[string]int{} // end event -> index in ws of the window it ends
	for _, e := range events {
		if end, ok := ends[e.name]; ok {
			open[end] = len(ws)
			ws = append(ws, window{kind: kinds[e.name], from: e.at})
			continue
		}
		if i, ok := open[e.name]; ok {
			ws[i].to = e.at
			delete(open, e.name)
		}
	}
	return ws
}

func inAny(ws []window, from, to time.Time, grace time.Duration) bool {
	for _, w := range ws {
		if w.overlaps(from, to, grace) {
			return true
		}
	}
	return false
}

// explained reports whether a refusal or a cut is what a fault that the
// request overlapped makes: an upstream that is down refuses as
// upstream_unavailable (or cuts a body it was sending), a Redis that is
// away refuses fail_closed routes as store_unavailable.
func explained(ws []window, r *result, grace time.Duration) bool {
	for _, w := range ws {
		if !w.overlaps(r.start, r.start.Add(r.total), grace) {
			continue
		}
		switch {
		case w.kind == "upstream down" && (r.outcome == cut || r.code == "upstream_unavailable" || r.code == "upstream_stalled"):
			return true
		case w.kind != "upstream down" && r.code == "store_unavailable":
			return true
		}
	}
	return false
}

// recovered is when the first request of the fail_closed route that
// started after back succeeded, or end if none did.
func recovered(back, end time.Time, results []result) time.Time {
	first := end
	for i := range results {
		r := &results[i]
		if r.route == routeGuarded && r.outcome == answered && !r.start.Before(back) && r.end().Before(first) {
			first = r.end()
		}
	}
	return first
}

// directRoute reports whether every request of route reaches the upstream.
func directRoute(route string) bool { return route != routeCached }

// storeFree reports whether route's requests never wait on the store.
func storeFree(route string) bool { return route == routePlain || route == routeStream }

// stalls answers how slow the store-free requests in flight at some
// moment were: on a shared machine every request in flight during a stall
// (the gateway's threads waiting for a core) is slowed alike, whether it
// uses the store or not.
type stalls struct {
	free   []result // answered store-free requests, by start
	maxLat time.Duration
}

func newStalls(results []result) *stalls {
	st := &stalls{}
	for _, r := range results {
		if storeFree(r.route) && r.outcome == answered {
			st.free = append(st.free, r)
			st.maxLat = max(st.maxLat, r.latency())
		}
	}
	slices.SortFunc(st.free, func(a, b result) int { return a.start.Compare(b.start) })
	return st
}

// around is the latency of the slowest store-free request whose time
// overlapped [from, to].
func (st *stalls) around(from, to time.Time) time.Duration {
	i, _ := slices.BinarySearchFunc(st.free, from.Add(-st.maxLat), func(r result, t time.Time) int { return r.start.Compare(t) })
	var m time.Duration
	for ; i < len(st.free) && !st.free[i].start.After(to); i++ {
		if r := &st.free[i]; !r.end().Before(from) {
			m = max(m, r.latency())
		}
	}
	return m
}

// restarts measures, for each time the upstream listened again after a
// kill, how long until a request through the gateway succeeded.
func restarts(events []event, results []result) []restart {
	var out []restart
	killed := false
	for k, e := range events {
		switch e.name {
		case evUpstreamKill:
			killed = true
		case evUpstreamUp:
			if !killed {
				continue // the first start
			}
			killed = false
			rs := restart{up: e.at, recovery: -1}
			until := e.at.Add(time.Hour) // the next kill, or the end
			for _, next := range events[k+1:] {
				if next.name == evUpstreamKill {
					until = next.at
					break
				}
			}
			for i := range results {
				r := &results[i]
				if !directRoute(r.route) {
					continue
				}
				if r.outcome == answered && r.end().After(e.at) {
					if d := r.end().Sub(e.at); rs.recovery < 0 || d < rs.recovery {
						rs.recovery = d
					}
				}
				if r.start.After(e.at) && r.start.Add(r.total).Before(until) && r.outcome != answered && r.code != "store_unavailable" {
					rs.failedAft++
				}
			}
			out = append(out, rs)
		}
	}
	return out
}

// deadlineSlop is how late a store call's deadline may end it: the
// timer fires after it is due and the error travels back through go-redis
// and the limiter (1-2 ms measured on the busy development machine). A
// store wait of one store_timeout is the figure; two (the rate check and
// the budget check each waiting a whole timeout, before store_timeout
// bounded a request's store calls together) would fail it by far.
const deadlineSlop = 5 * time.Millisecond

// latencyDuring sums the requests that overlapped w.
func latencyDuring(w window, results []result, st *stalls, storeTimeout time.Duration) faultLatency {
	fl := faultLatency{w: w, codes: map[string]int{}}
	for i := range results {
		r := &results[i]
		if r.outcome == lost || !w.overlaps(r.start, r.end(), 0) {
			continue
		}
		fl.requests++
		if r.outcome == refused {
			fl.codes[r.code]++
		}
		d := r.latency()
		if d > fl.max {
			fl.max, fl.maxRoute = d, r.route
		}
		if d > storeTimeout {
			fl.over++
		}
		if storeFree(r.route) {
			continue
		}
		if stall := st.around(r.start, r.end()); d-stall > fl.excess {
			fl.excess, fl.excessOf, fl.excessRoute, fl.excessStall = d-stall, d, r.route, stall
		}
	}
	return fl
}

func (rep *report) lost() int  { return rep.count(lost) }
func (rep *report) wrong() int { return rep.count(wrong) }
func (rep *report) count(o outcome) int {
	n := 0
	for _, s := range rep.byRoute {
		n += s.outcomes[o]
	}
	return n
}

func (rep *report) maxRecovery() time.Duration {
	var m time.Duration
	for _, r := range rep.restarts {
		if r.recovery < 0 {
			return -1
		}
		m = max(m, r.recovery)
	}
	return m
}

// verdicts are the figures, each with what was measured and whether it
// holds.
func (rep *report) verdicts() []verdict {
	v := []verdict{
		{"lost requests (no answer)", strconv.Itoa(rep.lost()), rep.lost() == 0},
		{"wrong answers (complete-looking, not the request's)", strconv.Itoa(rep.wrong()), rep.wrong() == 0},
		{"cut or refused outside a fault", strconv.Itoa(len(rep.unexplained)), len(rep.unexplained) == 0},
		{"not sent (client at -max-inflight)", strconv.Itoa(rep.notSent), rep.notSent == 0},
	}
	if rep.haveLog {
		v = append(v,
			verdict{"duplicated (the upstream saw an id twice)", strconv.Itoa(len(rep.duplicates)), len(rep.duplicates) == 0},
			verdict{"200s the upstream never saw (routes without cache)", strconv.Itoa(rep.phantoms), rep.phantoms == 0})
	}
	if len(rep.restarts) > 0 {
		m := rep.maxRecovery()
		v = append(v, verdict{fmt.Sprintf("recovery after %d upstream restarts ≤ %s", len(rep.restarts), rep.fig.recovery),
			"max " + ms(m), m >= 0 && m <= rep.fig.recovery})
	}
	for _, fl := range rep.redis {
		v = append(v, verdict{fmt.Sprintf("%s %s: no request waits on the store longer than store_timeout %s (+%s: a deadline fires, and its error returns, a little after it is due)", fl.w.kind, fl.w.back.Sub(fl.w.from).Round(100*time.Millisecond), rep.fig.storeTimeout, deadlineSlop),
			fmt.Sprintf("the store's share at most %s (a %s request of %s beside store-free ones of %s); as measured, max %s, %d of %d requests over %s",
				ms(fl.excess), fl.excessRoute, ms(fl.excessOf), ms(fl.excessStall), ms(fl.max), fl.over, fl.requests, rep.fig.storeTimeout),
			fl.excess <= rep.fig.storeTimeout+deadlineSlop})
	}
	if rep.events[evReload] > 0 && rep.haveMetrics {
		ok := rep.reloadsOK == float64(rep.events[evReload]) && rep.reloadsFail == 0
		v = append(v, verdict{fmt.Sprintf("%d configs renamed into place, each reloaded", rep.events[evReload]),
			fmt.Sprintf("%.0f ok, %.0f failed", rep.reloadsOK, rep.reloadsFail), ok})
	}
	if rep.rss.judged {
		v = append(v, verdict{"RSS flat after warm-up (its trend grows by ≤ max(2 MB, 5%) over the run)",
			fmt.Sprintf("trend %+.2f MB/min, %+.1f MB over the run; first minute %.1f MB, last %.1f MB", rep.rss.slope, rep.rss.growth, rep.rss.first, rep.rss.last), rep.rss.flat})
	}
	return v
}

type verdict struct {
	figure   string
	measured string
	met      bool
}

func (rep *report) met() bool {
	for _, v := range rep.verdicts() {
		if !v.met {
			return false
		}
	}
	return true
}

func (rep *report) print(w io.Writer) {
	fmt.Fprintf(w, "\nrequests: sent %d, answered %d (status line received), lost %d; re-sent by the client's transport on a new connection: %d\n",
		rep.sent, rep.sent-rep.lost(), rep.lost(), rep.retried)
	fmt.Fprintf(w, "%-8s %7s %8s %8s %5s %5s %5s %8s %8s %8s  %s\n", "route", "sent", "200 ok", "refused", "cut", "wrong", "lost", "p50 ms", "p99 ms", "max ms", "refusals, cache hits")
	for _, s := range rep.byRoute {
		n := 0
		for _, c := range s.outcomes {
			n += c
		}
		slices.Sort(s.lat)
		extra := codes(s.codes)
		if s.route == routeCached {
			extra += fmt.Sprintf(" hits %d", s.hits)
		}
		fmt.Fprintf(w, "%-8s %7d %8d %8d %5d %5d %5d %8s %8s %8s  %s\n", s.route, n,
			s.outcomes[answered], s.outcomes[refused], s.outcomes[cut], s.outcomes[wrong], s.outcomes[lost],
			msf(pct(s.lat, 50)), msf(pct(s.lat, 99)), msf(pct(s.lat, 100)), strings.TrimSpace(extra))
	}
	if len(rep.baseline) > 0 {
		slices.Sort(rep.baseline)
		fmt.Fprintf(w, "outside faults (streams to headers): p50 %s, p99 %s, max %s ms over %d answers\n",
			msf(pct(rep.baseline, 50)), msf(pct(rep.baseline, 99)), msf(pct(rep.baseline, 100)), len(rep.baseline))
	}
	if len(rep.events) > 0 {
		names := make([]string, 0, len(rep.events))
		for n := range rep.events {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprint(w, "events:")
		for _, n := range names {
			fmt.Fprintf(w, " %s %d", n, rep.events[n])
		}
		fmt.Fprintln(w)
	}
	for i, r := range rep.restarts {
		fmt.Fprintf(w, "upstream restart %d: first success %s after it listened; %d requests sent after it failed\n", i+1, ms(r.recovery), r.failedAft)
	}
	for _, fl := range rep.redis {
		fmt.Fprintf(w, "%s for %s, and %s more until a fail_closed request succeeded: %d requests overlapped it, max %s (%s), %d slower than %s; refusals: %s; the store's share at most %s\n",
			fl.w.kind, fl.w.back.Sub(fl.w.from).Round(time.Millisecond), fl.w.to.Sub(fl.w.back).Round(time.Millisecond),
			fl.requests, ms(fl.max), fl.maxRoute, fl.over, rep.fig.storeTimeout, orNone(codes(fl.codes)), ms(fl.excess))
	}
	for _, d := range first(rep.duplicates, 5) {
		fmt.Fprintf(w, "duplicate: %s\n", d)
	}
	if rep.stallRefused+rep.slowRefused > 0 {
		fmt.Fprintf(w, "store_unavailable while Redis was up: %d within a second of a gateway stall (store-free requests slower than %s), %d of a Redis one (a PING answered slower): a store call timed out, and three in a row fail fast for 500 ms\n",
			rep.stallRefused, rep.fig.storeTimeout, rep.slowRefused)
	}
	for _, r := range first(rep.unexplained, 5) {
		fmt.Fprintf(w, "outside a fault: %s %s at %s: %s %d %s %s\n", r.route, r.id, r.start.Format("15:04:05.000"), r.outcome, r.status, r.code, r.detail)
	}
	for _, o := range []outcome{cut, wrong, lost} {
		for _, r := range rep.examples[o] {
			fmt.Fprintf(w, "%s: %s %s at %s after %s: %s\n", o, r.route, r.id, r.start.Format("15:04:05.000"), ms(r.total), r.detail)
		}
	}
	fmt.Fprintln(w, "\nfigures:")
	for _, v := range rep.verdicts() {
		mark := "met"
		if !v.met {
			mark = "NOT MET"
		}
		fmt.Fprintf(w, "  %-7s %s: %s\n", mark, v.figure, v.measured)
	}
}

func first[T any](s []T, n int) []T { return s[:min(n, len(s))] }

func codes(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %d ", k, m[k])
	}
	return strings.TrimSpace(b.String())
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// pct is the p-th percentile of sorted durations (p 100: the maximum).
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return msf(d) + " ms"
}

func msf(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64)
}

// readEvents reads the events file, in time order.
func readEvents(path string) ([]event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading events: %w", err)
	}
	defer f.Close()
	var evs []event
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		ns, name, ok := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		t, err := strconv.ParseInt(ns, 10, 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("%s:%d: want `UNIX_NS name`, got %q", path, n, sc.Text())
		}
		evs = append(evs, event{at: time.Unix(0, t), name: name})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading events: %w", err)
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].at.Before(evs[j].at) })
	return evs, nil
}

// readUpstreamLog counts how often the upstream was asked for each route
// and id.
func readUpstreamLog(path string) (map[string]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading the upstream's id log: %w", err)
	}
	defer f.Close()
	seen := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		seen[sc.Text()]++
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading the upstream's id log: %w", err)
	}
	return seen, nil
}
