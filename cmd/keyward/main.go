// Command keyward is an API gateway that keeps third-party API keys off the
// browser. See README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/keyward/keyward/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
