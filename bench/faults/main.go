// Command faults is the checking half of keyward's fault run and mixed
// soak (bench/faults.sh, bench/soak.sh, bench/README.md; the results are in
// docs/OPERATIONS.md, "Under load and faults: measured"). It has two verbs:
//
//	faults upstream -addr 127.0.0.1:9201 -log ids.log -events events.log
//	faults load -url http://127.0.0.1:9205 -rate 500 -upstream-log ids.log -events events.log
//
// upstream is the third-party API: every answer is derived from the
// request's unique id, and every id it is asked for is appended to a log
// before it answers, so that a request the gateway sent twice shows up
// even across upstream restarts. load sends a steady mixed load through
// the gateway, each request with its own id, checks every answer (status,
// the exact body, the echoed request id), and when it is stopped (SIGINT
// or -duration) reports requests lost, duplicated, cut and wrong, the
// latency during each Redis fault against the store timeout, how soon
// requests succeeded again after each upstream restart and, given -pid,
// whether the gateway's RSS stayed flat. It exits 1 when a figure is not
// met, 2 when it could not run.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: faults upstream|load [flags]")
		return 2
	}
	var err error
	switch args[0] {
	case "upstream":
		err = runUpstream(ctx, args[1:], stderr)
	case "load":
		var met bool
		met, err = runLoad(ctx, args[1:], stdout, stderr)
		if err == nil && !met {
			return 1
		}
	default:
		err = fmt.Errorf("unknown verb %q: use upstream or load", args[0])
	}
	if err != nil {
		fmt.Fprintln(stderr, "faults:", err)
		return 2
	}
	return 0
}
