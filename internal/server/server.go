// Package server runs a gateway: the public listener (plain HTTP, or
// HTTPS with certificate files or ACME, see Front), the http_redirect and
// admin listeners, reloads that swap a new compiled config in atomically,
// and graceful shutdown.
package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/keyward/keyward/internal/cache"
	cacheredis "github.com/keyward/keyward/internal/cache/redis"
	akredis "github.com/keyward/keyward/internal/caller/apikey/redis"
	"github.com/keyward/keyward/internal/certs"
	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/http1"
	"github.com/keyward/keyward/internal/metrics"
	"github.com/keyward/keyward/internal/ratelimit"
	rlredis "github.com/keyward/keyward/internal/ratelimit/redis"
	"github.com/keyward/keyward/internal/redisstore"
)

// Server is one running keyward.
type Server struct {
	path     string
	opts     gateway.Options
	log      *slog.Logger
	handler  *gateway.Handler
	ready    atomic.Bool
	draining atomic.Bool
	public   atomic.Pointer[Front] // set while Serve runs
	storeURL string                // as opened at start; a change needs a restart
	storeSum [32]byte              // SHA-256 of the URL with its secrets filled in, never the URL
	closers  []io.Closer           // the store's connections
	keys     *akredis.Store        // API keys in Redis; nil without Redis
	files    *certs.Files          // tls.cert and tls.key; nil without them
	redirect net.Listener          // http_redirect's, opened by Listen
	warned   map[string]bool       // the serving config's warnings, logged once
}

// New loads and compiles the config at path. A config that fails here is
// reported in full; nothing is started.
func New(path string, opts gateway.Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New()
	}
	s := &Server{path: path, opts: opts, log: opts.Logger}
	f, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	if s.opts.LimitStore == nil {
		if err := s.openStore(f); err != nil {
			return nil, err
		}
	}
	g, err := s.compileFile(f)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.handler = gateway.NewHandler(g)
	if t := g.Settings().TLS; t != nil && t.ACME == nil {
		s.files, err = certs.LoadFiles(t.CertFile, t.KeyFile, certs.FilesOptions{Logger: s.log})
		if err != nil {
			s.Close()
			return nil, err
		}
	}
	opts.Metrics.Reload(true, time.Now())
	return s, nil
}

// openStore opens the store for limit state and the response cache. It
// lives as long as the process, so a reload keeps every count and entry.
func (s *Server) openStore(f *config.File) error {
	url, cacheSize := f.Config.Store, f.Config.CacheSize
	if url == "" {
		url = "memory"
	}
	s.storeURL = url // as written: a reload compares it
	onFault := func(err error) {
		if h := s.handler; h != nil {
			h.Current().StoreFault("cache", err)
		}
	}
	size := int64(0) // the cache's default
	if cacheSize != "" {
		n, err := config.ParseSize(cacheSize)
		if err != nil {
			return fmt.Errorf("cache_size: %w", err)
		}
		size = n
	}
	if url == "memory" {
		s.opts.LimitStore = ratelimit.NewMemory(0)
		s.opts.Cache = cache.New(cache.NewMemory(size, nil), cache.Options{OnFault: onFault, Unavailable: gateway.UpstreamUnavailable})
		return nil
	}
	// One server, Sentinel or Cluster; TLS files named relative to the
	// config file, as its other paths are.
	url, err := gateway.StoreURL(f, s.opts.Getenv) // {secret.NAME} filled in
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	s.storeSum = sha256.Sum256([]byte(url))
	client, err := redisstore.Open(url, filepath.Dir(s.path))
	if err != nil {
		return fmt.Errorf("opening store: %w", err)
	}
	s.closers = append(s.closers, client)
	// A Redis that keeps no data across a restart, or may evict keys,
	// can lose budget counts: said once at start, where an operator looks.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	if w := redisstore.Persistence(ctx, client); w != "" {
		s.log.Warn("store: " + w)
	}
	cancel()
	rl := rlredis.New(client, rlredis.Options{})
	// Run notices a Redis that lost its counts even on an instance that
	// serves no request, and keeps this instance's view of the pauses
	// fresh; it stops with the store.
	ctx, cancel = context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		rl.Run(ctx)
	}()
	// Stopped, and waited for, before the client closes under it.
	s.closers = append([]io.Closer{closerFunc(func() error { cancel(); <-ran; return nil })}, s.closers...)
	s.opts.LimitStore = rl
	keys := akredis.New(client, akredis.Options{OnError: func(err error) {
		s.log.Warn("API key last use", "error", err.Error())
	}})
	s.opts.KeyStore, s.keys = keys, keys
	// With Redis, cache_size bounds the memory tier in front of it, which
	// keeps hits (and stale_if_error) working through a Redis outage.
	s.opts.Cache = cache.New(cacheredis.New(client, cacheredis.Options{}),
		cache.Options{OnFault: onFault, MemoryTier: size, Unavailable: gateway.UpstreamUnavailable})
	return nil
}

// closerFunc is a func as an io.Closer.
type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// Close releases the store's connections.
func (s *Server) Close() error {
	var errs []error
	if h := s.handler; h != nil {
		errs = append(errs, h.Current().Close())
	}
	if s.keys != nil {
		// The last uses still being written, before the client goes.
		errs = append(errs, s.keys.Flush())
		s.keys = nil
	}
	for _, c := range s.closers {
		errs = append(errs, c.Close())
	}
	s.closers = nil
	return errors.Join(errs...)
}

func (s *Server) compile() (*gateway.Gateway, error) {
	f, err := config.Load(s.path)
	if err != nil {
		return nil, err
	}
	if url := f.Config.Store; url != s.storeURL && !(url == "" && s.storeURL == "memory") && s.storeURL != "" {
		s.log.Warn("store changed; it takes effect on restart")
	} else if s.storeSum != ([32]byte{}) {
		// The same text, but a secret in it (the password) may have a new
		// value: the open client keeps the old one.
		if url, err := gateway.StoreURL(f, s.opts.Getenv); err == nil && sha256.Sum256([]byte(url)) != s.storeSum {
			s.log.Warn("the store's password (a secret in store:) changed; the connections to Redis keep the old one until restart")
		}
	}
	return s.compileFile(f)
}

func (s *Server) compileFile(f *config.File) (*gateway.Gateway, error) {
	if s.opts.BodyBuffers == nil {
		// One bound for every config, so bodies held across a reload count.
		s.opts.BodyBuffers = gateway.NewBodyBuffers(0)
	}
	g, warns, err := gateway.Compile(f, s.opts)
	// A warning is logged once: a reload repeats only the warnings the
	// previous config did not have.
	seen := make(map[string]bool, len(warns))
	for _, w := range warns {
		msg := w.Error()
		if !s.warned[msg] {
			s.log.Warn("config", "warning", msg)
		}
		seen[msg] = true
	}
	if err == nil {
		s.warned = seen
		// Compiling is pure; the bound changes only with a config that
		// will serve (a failed reload keeps the last good one).
		s.opts.BodyBuffers.SetMax(g.Settings().MaxBufferedBytes)
	}
	return g, err
}

// Reload compiles the file again and, only if it is valid, swaps it in.
// Calls must not overlap (serve makes them one at a time).
// Requests in flight finish on the config they started with. On failure
// every problem is logged and the last good config keeps serving.
func (s *Server) Reload() error {
	g, err := s.compile()
	if err != nil {
		for _, e := range unjoin(err) {
			s.log.Error("reload failed; still serving the previous config", "problem", e.Error())
		}
		s.opts.Metrics.Reload(false, time.Now())
		return err
	}
	g.Inherit(s.handler.Current())
	old := s.handler.Swap(g)
	old.Replaced(g)
	o, n := old.Settings(), g.Settings()
	if o.Listen != n.Listen || o.AdminListen != n.AdminListen || o.HTTPRedirect != n.HTTPRedirect {
		s.log.Warn("listen addresses changed; they take effect on restart")
	}
	if o.Engine != n.Engine || !o.TLS.Same(n.TLS) {
		s.log.Warn("server.engine or tls changed; it takes effect on restart")
	}
	if changed := serverChanges(o, n); len(changed) > 0 {
		if p := s.public.Load(); p != nil {
			p.Apply(n)
		}
		s.log.Info("server settings changed", "settings", changed)
	}
	if s.files != nil {
		// A reload (SIGHUP) reads the certificate files too; they are
		// also watched.
		_ = s.files.Reload()
	}
	s.opts.Metrics.Reload(true, time.Now())
	c := g.Count()
	s.log.Info("config reloaded", "routes", c.Routes, "stages", c.Stages, "mounted", c.Mounted)
	return nil
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// Handler returns the public handler, for tests and embedding.
func (s *Server) Handler() *gateway.Handler { return s.handler }

// Settings returns the serving config's process-level settings.
func (s *Server) Settings() gateway.Settings { return s.handler.Current().Settings() }

// Listen opens the public listener and, if configured, the admin one and
// the http_redirect one (which Serve serves too).
func (s *Server) Listen() (public, admin net.Listener, err error) {
	st := s.Settings()
	if public, err = net.Listen("tcp", st.Listen); err != nil {
		return nil, nil, fmt.Errorf("listening on %s: %w", st.Listen, err)
	}
	if st.AdminListen != "" {
		if admin, err = net.Listen("tcp", st.AdminListen); err != nil {
			public.Close()
			return nil, nil, fmt.Errorf("listening on admin %s: %w", st.AdminListen, err)
		}
	}
	if st.HTTPRedirect != "" {
		if s.redirect, err = net.Listen("tcp", st.HTTPRedirect); err != nil {
			public.Close()
			if admin != nil {
				admin.Close()
			}
			return nil, nil, fmt.Errorf("listening on http_redirect %s: %w", st.HTTPRedirect, err)
		}
	}
	return public, admin, nil
}

// RedirectAddr is the http_redirect listener's address once Listen has
// opened it; nil without one.
func (s *Server) RedirectAddr() net.Addr {
	if s.redirect == nil {
		return nil
	}
	return s.redirect.Addr()
}

// Serve serves on the listeners until ctx ends, then stops accepting and
// waits for in-flight requests up to the shutdown timeout (the serving
// config's: a reload may change it). Requests still running then are
// ended (see http1.Server.Shutdown) and logged; that is a routine stop,
// not an error. admin may be nil.
func (s *Server) Serve(ctx context.Context, public, admin net.Listener) error {
	st := s.Settings()
	errLog := log.New(errorLogWriter{s.log}, "", 0)
	tctx, stopTLS := context.WithCancel(context.Background())
	defer stopTLS()
	tlsConfig, manager, redirectHandler, err := s.tlsSetup(tctx, public)
	if err != nil {
		return errors.Join(err, s.Close())
	}
	p := NewFront(public, s.handler, st, FrontOptions{TLS: tlsConfig, Logger: s.log})
	s.public.Store(p)
	defer s.public.Store(nil)
	if n := s.Settings(); n != st {
		p.Apply(n) // a reload came between the two reads
	}
	guard := p.Guard()
	s.opts.Metrics.ObserveConnections(guard)
	errc := make(chan error, 3)
	go func() { errc <- p.Serve() }()
	var redirect *Front
	if s.redirect != nil {
		rst := st
		rst.Engine, rst.TLS = "keyward", nil
		redirect = NewFront(s.redirect, redirectHandler, rst, FrontOptions{Logger: s.log})
		go func() { errc <- redirect.Serve() }()
	}
	var asrv *http.Server
	if admin != nil {
		asrv = &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 5 * time.Second, ErrorLog: errLog}
		go func() { errc <- asrv.Serve(admin) }()
	}
	if manager != nil {
		// The listeners that answer the challenges are serving now.
		if err := manager.Start(tctx); err != nil {
			s.log.Error("automatic certificates", "error", err.Error())
		}
		defer manager.Stop()
	}
	s.ready.Store(true)
	c := s.handler.Current().Count()
	s.log.Info("serving", "listen", guard.Addr().String(), "tls", tlsConfig != nil,
		"routes", c.Routes, "stages", c.Stages, "mounted", c.Mounted)

	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.draining.Store(true)
	s.ready.Store(false)
	timeout := s.Settings().ShutdownTimeout
	s.log.Info("shutting down", "timeout", timeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// The admin listener serves on through the drain: /readyz says 503
	// to the load balancer meanwhile.
	if redirect != nil {
		// Redirects and challenges are not worth waiting for.
		_ = redirect.Close()
	}
	var drain *http1.DrainError
	switch e := p.Shutdown(sctx); {
	case errors.As(e, &drain):
		s.log.Warn("shutdown timeout reached; requests still running were ended",
			"requests", drain.Requests, "timeout", timeout.String())
	case e != nil:
		err = errors.Join(err, fmt.Errorf("draining: %w", e))
	}
	if asrv != nil {
		// Health checks and scrapes are not worth waiting for once the
		// public side is done.
		_ = asrv.Close()
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if s.opts.Cache != nil {
		s.opts.Cache.Wait() // background refreshes still hold store calls
	}
	return errors.Join(err, s.Close())
}

// notReady says why the instance should get no new traffic (the reason
// /readyz gives with its 503), or "" if it should. A full connection table
// counts: a load balancer that sends more clients to this instance makes
// them wait.
func (s *Server) notReady() string {
	switch {
	case s.draining.Load():
		return "draining"
	case !s.ready.Load():
		return "starting"
	}
	if p := s.public.Load(); p != nil && p.Guard().Waiting() > 0 {
		return "connections_waiting"
	}
	return ""
}

// serverChanges names the server.* settings that differ between o and n,
// all of which a reload applies (shutdown_timeout when the drain begins).
func serverChanges(o, n gateway.Settings) []string {
	var changed []string
	for _, f := range []struct {
		name string
		same bool
	}{
		{"server.read_header_timeout", o.ReadHeaderTimeout == n.ReadHeaderTimeout},
		{"server.idle_timeout", o.IdleTimeout == n.IdleTimeout},
		{"server.write_timeout", o.WriteTimeout == n.WriteTimeout},
		{"server.read_body_timeout", o.ReadBodyTimeout == n.ReadBodyTimeout},
		{"server.max_header_bytes", o.MaxHeaderBytes == n.MaxHeaderBytes},
		{"server.max_headers", o.MaxHeaders == n.MaxHeaders},
		{"server.max_connections", o.MaxConnections == n.MaxConnections},
		{"server.shutdown_timeout", o.ShutdownTimeout == n.ShutdownTimeout},
	} {
		if !f.same {
			changed = append(changed, f.name)
		}
	}
	return changed
}

// errorLogWriter sends net/http's own error log (TLS handshakes, bad
// requests) to slog. These lines carry no request data the gateway added.
type errorLogWriter struct{ l *slog.Logger }

func (e errorLogWriter) Write(p []byte) (int, error) {
	e.l.Warn("http server", "error", string(bytesTrimNL(p)))
	return len(p), nil
}

func bytesTrimNL(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}
