package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/term"

	"github.com/keyward/keyward/internal/accesslog"
	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/reload"
	"github.com/keyward/keyward/internal/server"
)

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs, path := newFlags("serve", stderr)
	if err := parseNone(fs, args); err != nil {
		return err
	}
	// The log format is read once: the log is opened before the server
	// compiles the config, and a reload does not reopen it.
	f, err := config.Load(*path)
	if err != nil {
		return err
	}
	text := logFormat(f.Config.Log.Format, stderr) == "text"
	var logger *slog.Logger
	accessOut := stderr
	if text {
		logger = slog.New(slog.NewTextHandler(stderr, nil))
		accessOut = &textLog{w: stderr}
	} else {
		logger = slog.New(slog.NewJSONHandler(stderr, nil))
	}
	access := accesslog.New(accessOut, true)
	defer access.Close()
	srv, err := server.New(*path, gateway.Options{Logger: logger, AccessLog: access})
	if err != nil {
		return err
	}
	public, admin, err := srv.Listen()
	if err != nil {
		return inUse(f, srv.Settings(), err)
	}
	g := srv.Handler().Current()
	if text {
		fmt.Fprintf(stderr, "keyward %s: %s on %s\n", gateway.Version, summary(g), public.Addr())
		table(stderr, routeRows(g))
	} else {
		for _, r := range g.Routes() {
			logger.Info("route", "route", r.Name, "stage", r.Stage, "methods", strings.Join(r.Methods, ","), "path", r.Host+r.Path, "upstream", r.Upstream)
		}
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	trigger := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case trigger <- struct{}{}:
			default:
			}
		}
	}()
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	// The config's watcher, the secret files' watchers and SIGHUP reload
	// one at a time.
	var mu sync.Mutex
	reloaded := make(chan struct{}, 1)
	reloadNow := func() {
		mu.Lock()
		defer mu.Unlock()
		_ = srv.Reload()
		select {
		case reloaded <- struct{}{}:
		default:
		}
	}
	go func() {
		w := &reload.Watcher{Path: *path, Signal: trigger, Reload: reloadNow, Logger: logger}
		if err := w.Run(wctx); err != nil {
			logger.Warn("config file watching is off; reload with SIGHUP", "error", err.Error())
		}
	}()
	go watchSecretFiles(wctx, *path, reloadNow, reloaded, logger)
	return srv.Serve(ctx, public, admin)
}

// logFormat is the format logs are written in: the config's, else text
// for a person at a terminal and JSON for a log collector.
func logFormat(configured string, w io.Writer) string {
	if configured != "" {
		return configured
	}
	// A terminal, not any character device: /dev/null is one too, and
	// the text format re-decodes every access-log line (8% of the CPU
	// of keyward serve 2>/dev/null under load).
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return "text"
	}
	return "json"
}

// inUse explains a listener that could not be opened because another
// process holds its port, pointing at the line that chooses it.
func inUse(f *config.File, st gateway.Settings, err error) error {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return err
	}
	field, addr := "listen", st.Listen
	if strings.Contains(err.Error(), "admin") {
		field, addr = "admin.listen", st.AdminListen
	}
	host, port, _ := net.SplitHostPort(addr)
	next := addr
	if n, perr := strconv.Atoi(port); perr == nil && n < 65535 {
		next = net.JoinHostPort(host, strconv.Itoa(n+1))
	}
	if !f.Has(field) {
		return &config.Error{File: f.Name, Path: field, Msg: fmt.Sprintf(
			"the default %q is in use by another process (another keyward?): stop it, or choose a free port: add %s: %q to the file", addr, field, next)}
	}
	return f.Errorf(field, "%q is in use by another process (another keyward?): stop it, or choose a free port: %s: %q", addr, field, next)
}
