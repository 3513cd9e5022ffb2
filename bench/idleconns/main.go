// Command idleconns holds many idle keep-alive connections open on a
// gateway and reports the gateway's memory: the "10,000 idle keep-alive
// connections" target of issue 6. Each connection sends one request, reads
// the answer in full and then stays open and silent, as a browser's
// keep-alive connection does between calls.
//
//	go run ./bench/idleconns -addr 127.0.0.1:9105 -n 10000 -pid $(pgrep -n keyward) -hold 30s
//
// The gateway's idle timeout (server.idle_timeout, default 120s) must be
// longer than -hold, and both processes need -n file descriptors (Go
// raises the soft limit to the hard one; see ulimit -Hn).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9105", "gateway address")
	n := flag.Int("n", 10000, "connections to hold")
	path := flag.String("path", "/my-repos", "request path")
	origin := flag.String("origin", "https://app.example", "Origin header")
	pid := flag.Int("pid", 0, "gateway process whose VmRSS is reported (0: none)")
	hold := flag.Duration("hold", 10*time.Second, "how long to hold the connections before reporting again and closing them")
	par := flag.Int("parallel", 64, "connections opened at a time")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *addr, *n, *par, *path, *origin, *pid, *hold); err != nil {
		fmt.Fprintln(os.Stderr, "idleconns:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, addr string, n, par int, path, origin string, pid int, hold time.Duration) error {
	report(pid, "before")
	req := []byte("GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nOrigin: " + origin + "\r\n\r\n")
	conns := make([]net.Conn, n)
	var failed atomic.Int64
	var firstErr error
	var mu sync.Mutex
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range conns {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := open(addr, req)
			if err != nil {
				failed.Add(1)
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	held := n - int(failed.Load())
	fmt.Printf("opened %d of %d connections in %s (one request each)\n", held, n, time.Since(start).Round(time.Millisecond))
	if firstErr != nil {
		fmt.Printf("first failure: %v\n", firstErr)
	}
	report(pid, "holding")
	select {
	case <-time.After(hold):
	case <-ctx.Done():
	}
	report(pid, "after hold")
	closed := 0
	for _, c := range conns {
		if c == nil {
			continue
		}
		// A connection the gateway closed while held reads EOF at once.
		_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err == io.EOF {
			closed++
		}
		c.Close()
	}
	fmt.Printf("closed by the gateway during the hold: %d\n", closed)
	if held == 0 {
		return errors.New("no connection could be held")
	}
	return nil
}

// open dials, sends one request and reads its answer in full.
func open(addr string, req []byte) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("status %d: %v", resp.StatusCode, err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// report prints pid's resident memory as the kernel counts it.
func report(pid int, when string) {
	if pid == 0 {
		return
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		fmt.Printf("%-10s rss: %v\n", when, err)
		return
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(v)[0])
			fmt.Printf("%-10s rss: %.1f MB\n", when, float64(kb)/1024)
			return
		}
	}
}
