package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// sample is the gateway's memory at one moment of the run.
type sample struct {
	t          time.Duration // since the run began
	rssMB      float64
	heapMB     float64 // go_memstats_heap_inuse_bytes; 0 without metrics
	goroutines float64
}

// sampleMemory reads pid's RSS (and, given a metrics URL, its Go heap and
// goroutines) every interval until ctx ends, printing each sample.
func sampleMemory(ctx context.Context, pid int, metricsURL string, interval time.Duration, w io.Writer) []sample {
	start := time.Now()
	var out []sample
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		s := sample{t: time.Since(start)}
		var err error
		if s.rssMB, err = rssMB(pid); err != nil {
			fmt.Fprintf(w, "t=%4.0fs rss: %v\n", s.t.Seconds(), err)
		} else {
			if metricsURL != "" {
				if text, err := scrape(metricsURL); err == nil {
					heap, _ := metricValue(text, "go_memstats_heap_inuse_bytes")
					s.heapMB = heap / (1 << 20)
					s.goroutines, _ = metricValue(text, "go_goroutines")
				}
			}
			out = append(out, s)
			fmt.Fprintf(w, "t=%4.0fs rss_MB=%.1f heap_inuse_MB=%.1f goroutines=%.0f\n", s.t.Seconds(), s.rssMB, s.heapMB, s.goroutines)
		}
		select {
		case <-ctx.Done():
			return out
		case <-tick.C:
		}
	}
}

// rssMB is pid's resident memory as the kernel counts it (VmRSS).
func rssMB(pid int) (float64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseFloat(f[0], 64)
			return kb / 1024, err
		}
	}
	return 0, errors.New("no VmRSS in /proc/PID/status")
}

// trend says whether RSS stayed flat after warm-up.
type trend struct {
	judged      bool // enough samples after warm-up: two minutes
	first, last float64
	slope       float64 // MB per minute, least squares
	growth      float64 // slope times the span: the trend's growth over the run
	flat        bool
}

// rssTrend judges samples taken after warmup. Flat means the least-squares
// trend grows by at most max(2 MB, 5% of the mean) over the run: a leak at
// a steady load grows by its rate times the run, while RSS also follows
// the number of client connections, which rises and falls with the
// machine's stalls (each stall leaves more requests, so connections, in
// flight) and moves a single minute's mean by that much. The means of the
// first and last minute are reported beside it.
func rssTrend(samples []sample, warmup time.Duration) trend {
	var s []sample
	for _, x := range samples {
		if x.t >= warmup {
			s = append(s, x)
		}
	}
	if len(s) < 2 || s[len(s)-1].t-s[0].t < 2*time.Minute {
		return trend{}
	}
	from, to := s[0].t, s[len(s)-1].t
	tr := trend{judged: true}
	tr.first = meanRSS(s, func(t time.Duration) bool { return t < from+time.Minute })
	tr.last = meanRSS(s, func(t time.Duration) bool { return t > to-time.Minute })
	var n, sx, sy, sxx, sxy float64
	for _, x := range s {
		m := x.t.Minutes()
		n++
		sx += m
		sy += x.rssMB
		sxx += m * m
		sxy += m * x.rssMB
	}
	if d := n*sxx - sx*sx; d != 0 {
		tr.slope = (n*sxy - sx*sy) / d
	}
	tr.growth = tr.slope * (to - from).Minutes()
	tr.flat = tr.growth <= max(2, 0.05*sy/n)
	return tr
}

func meanRSS(s []sample, in func(time.Duration) bool) float64 {
	var sum, n float64
	for _, x := range s {
		if in(x.t) {
			sum += x.rssMB
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / n
}

// reloads reads the gateway's reload counters.
func reloads(metricsURL string) (ok, failed float64, err error) {
	text, err := scrape(metricsURL)
	if err != nil {
		return 0, 0, err
	}
	ok, _ = metricValue(text, `keyward_config_reloads_total{result="ok"}`)
	failed, _ = metricValue(text, `keyward_config_reloads_total{result="failed"}`)
	return ok, failed, nil
}

func scrape(url string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := c.Get(url)
	if err != nil {
		return "", fmt.Errorf("reading metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("reading metrics: status %d", resp.StatusCode)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("reading metrics: %w", err)
	}
	return string(b), nil
}

// metricValue finds one series (a name, with its labels as the exposition
// format writes them) in Prometheus text.
func metricValue(text, series string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), series+" ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		return f, err == nil
	}
	return 0, false
}

// runQueueWait is how long pid's threads have waited for a CPU, in all
// (the second field of /proc/PID/task/TID/schedstat): on a shared machine,
// the time the gateway was ready to work and could not.
func runQueueWait(pid int) (time.Duration, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue // a thread that has just ended
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			continue
		}
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err == nil {
			sum += time.Duration(ns)
		}
	}
	return sum, nil
}

// ping is one PING to Redis: when it was sent and how long the answer
// took (the timeout if none came).
type ping struct {
	start time.Time
	rtt   time.Duration
}

// pingRedis sends a PING to addr every interval on one connection, opened
// again after a failure, until ctx ends: the time line of how fast Redis
// itself answered, so that a store timeout can be told from the gateway's
// own stalls.
func pingRedis(ctx context.Context, addr string, interval, timeout time.Duration) []ping {
	var out []ping
	var c net.Conn
	var br *bufio.Reader
	tick := time.NewTicker(interval)
	defer tick.Stop()
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return out
		case <-tick.C:
			if ctx.Err() != nil {
				return out // both were ready
			}
		}
		p := ping{start: time.Now(), rtt: timeout}
		if c == nil {
			var err error
			if c, err = net.DialTimeout("tcp", addr, timeout); err != nil {
				c = nil
				out = append(out, p)
				continue
			}
			br = bufio.NewReader(c)
		}
		_ = c.SetDeadline(p.start.Add(timeout))
		_, err := c.Write([]byte("PING\r\n"))
		var line string
		if err == nil {
			line, err = br.ReadString('\n')
		}
		if err != nil || line != "+PONG\r\n" {
			c.Close()
			c = nil
		} else {
			p.rtt = time.Since(p.start)
		}
		out = append(out, p)
	}
}

// slowestPing is the slowest answer to a PING sent in [from, to].
func slowestPing(pings []ping, from, to time.Time) time.Duration {
	var m time.Duration
	for _, p := range pings {
		if !p.start.Before(from) && !p.start.After(to) {
			m = max(m, p.rtt)
		}
	}
	return m
}
