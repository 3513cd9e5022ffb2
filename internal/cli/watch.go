package cli

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/reload"
)

// watchSecretFiles reloads when a file: secret changes, as the config
// file's watcher does for the config (a rotated token in a mounted
// Kubernetes Secret is picked up without SIGHUP). The files are the ones
// the config names when watching starts and after each reload, which
// signals reloaded; env: secrets change only on restart, since a
// process's environment cannot. It returns when ctx ends.
func watchSecretFiles(ctx context.Context, cfgPath string, reloadNow func(), reloaded <-chan struct{}, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var files []string
	stop := func() {}
	defer func() { stop() }()
	for {
		// A config that does not load keeps the files watched so far.
		if f, err := config.Load(cfgPath); err == nil {
			if now := secretFiles(f); !slices.Equal(now, files) {
				stop()
				files = now
				wctx, cancel := context.WithCancel(ctx)
				stop = cancel
				for _, p := range files {
					w := &reload.Watcher{Path: p, Reload: reloadNow, Logger: log}
					go func() {
						if err := w.Run(wctx); err != nil {
							log.Warn("secret file watching is off; reload with SIGHUP after changing it", "path", p, "error", err.Error())
						}
					}()
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-reloaded:
		}
	}
}

// secretFiles lists the files f's secrets are read from, top-level and
// per stage, as the gateway resolves them (relative to the config file),
// sorted and without repeats.
func secretFiles(f *config.File) []string {
	var out []string
	add := func(m map[string]config.SecretSource) {
		for _, src := range m {
			if src.File == "" {
				continue
			}
			p := src.File
			if !filepath.IsAbs(p) {
				p = filepath.Join(filepath.Dir(f.Name), p)
			}
			out = append(out, p)
		}
	}
	add(f.Config.Secrets)
	for _, st := range f.Config.Stages {
		add(st.Secrets)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
