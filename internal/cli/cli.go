// Package cli implements keyward's command line: one function per verb,
// each with its own flag set.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/keyward/keyward/internal/demo"
	"github.com/keyward/keyward/internal/gateway"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the work failed: bad config, listener in use
	exitUsage = 2 // the command line is wrong
)

const usage = `keyward: an API gateway that keeps your API keys off the browser

Usage:
  keyward serve  [-c keyward.yaml]                 serve, reloading on change (config and file: secrets) and SIGHUP
  keyward check  [-c keyward.yaml] [--no-secrets]  validate the config and exit (exit 1 on errors)
  keyward test   [-c keyward.yaml] METHOD PATH [-H 'K: V']... [-d BODY] [--stage S] [--send] [--no-secrets]
                                                   show the upstream request a call would make
  keyward routes [-c keyward.yaml] [--no-secrets]  list the public routes
  keyward keys   create|list|revoke|import         manage API keys (keyward keys help)
  keyward pause  [-c keyward.yaml] [ROUTE]         stop calling the upstream (every route without ROUTE), on every instance
  keyward resume [-c keyward.yaml] [ROUTE]         undo pause
  keyward demo   [-listen ADDR] [-page ADDR]       run a stand-in API with keyward in front of it
  keyward version                                  print the version
  keyward help                                     print this help

--no-secrets treats every secret as present with a placeholder value, so
that check, routes and test run in CI without the real credentials (the
tls.cert and tls.key files are not read either).
`

// Run runs the command line args (without the program name) and returns
// the exit code. ctx is cancelled on SIGINT/SIGTERM by the caller.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	verb, rest := args[0], args[1:]
	var err error
	switch verb {
	case "serve":
		err = serve(ctx, rest, stderr)
	case "check":
		err = check(rest, stdout, stderr)
	case "test":
		err = test(ctx, rest, stdout, stderr)
	case "routes":
		err = routes(rest, stdout, stderr)
	case "keys":
		err = keys(ctx, rest, stdout, stderr)
	case "pause", "resume":
		err = pause(ctx, verb, rest, stdout, stderr)
	case "demo":
		err = runDemo(ctx, rest, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "keyward", gateway.Version)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "keyward: unknown command %q\n\n%s", verb, usage)
		return exitUsage
	}
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errReported):
		return exitError
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "keyward %s: %v\n", verb, ue.error)
		return exitUsage
	default:
		for _, e := range unjoin(err) {
			fmt.Fprintln(stderr, e)
		}
		return exitError
	}
}

// usageError marks a command-line mistake (exit 2) as opposed to a failure.
type usageError struct{ error }

// errReported is a failure the verb has already explained in its output:
// exit 1, with nothing more printed.
var errReported = errors.New("failed")

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, unjoin(e)...)
		}
		return out
	}
	return []error{err}
}

// newFlags returns a flag set that reports errors instead of exiting.
func newFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "keyward.yaml", "config file")
	return fs, path
}

// parse parses args allowing flags after positional arguments
// ("keyward test GET /x -H 'A: b'"), which the flag package alone stops at.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// compileArgs parses a verb that takes -c and --no-secrets, and compiles
// the config.
func compileArgs(verb string, args []string, stderr io.Writer) (*gateway.Gateway, error) {
	fs, path := newFlags(verb, stderr)
	noSecrets := fs.Bool("no-secrets", false, "treat every secret as present, with a placeholder value (for CI)")
	if err := parseNone(fs, args); err != nil {
		return nil, err
	}
	_, g, err := compile(*path, *noSecrets, gateway.Options{}, stderr)
	return g, err
}

// parseNone parses flags and refuses positional arguments.
func parseNone(fs *flag.FlagSet, args []string) error {
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", pos[0])}
	}
	return nil
}

func check(args []string, stdout, stderr io.Writer) error {
	g, err := compileArgs("check", args, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "ok: %s\n", summary(g))
	return nil
}

func routes(args []string, stdout, stderr io.Writer) error {
	g, err := compileArgs("routes", args, stderr)
	if err != nil {
		return err
	}
	table(stdout, routeRows(g))
	return nil
}

// routeRows is the route table of routes and of serve's start.
func routeRows(g *gateway.Gateway) [][]string {
	rows := [][]string{{"ROUTE", "STAGE", "METHODS", "PATH", "UPSTREAM"}}
	for _, r := range g.Routes() {
		p := r.Path
		if r.Host != "" {
			p = r.Host + p
		}
		rows = append(rows, []string{r.Name, dash(r.Stage), strings.Join(r.Methods, ","), p, r.Upstream})
	}
	return rows
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func table(w io.Writer, rows [][]string) {
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			if i == len(r)-1 {
				b.WriteString(c)
				break
			}
			b.WriteString(c)
			b.WriteString(strings.Repeat(" ", widths[i]-len(c)+2))
		}
		fmt.Fprintln(w, b.String())
	}
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8080", "gateway address")
	page := fs.String("page", "127.0.0.1:8081", "address of the demo page (another origin)")
	if err := parseNone(fs, args); err != nil {
		return err
	}
	return demo.Run(ctx, demo.Options{Listen: *listen, Page: *page, Out: stdout, Log: stderr})
}
