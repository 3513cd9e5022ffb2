package gateway

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/keyward/keyward/internal/cache"
	"github.com/keyward/keyward/internal/certs"
	"github.com/keyward/keyward/internal/clientip"
	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/cors"
	"github.com/keyward/keyward/internal/outbound"
	"github.com/keyward/keyward/internal/placeholder"
	"github.com/keyward/keyward/internal/proxy"
	"github.com/keyward/keyward/internal/ratelimit"
	"github.com/keyward/keyward/internal/redisstore"
	"github.com/keyward/keyward/internal/route"
	"github.com/keyward/keyward/internal/scrub"
	"github.com/keyward/keyward/internal/secret"
	"github.com/keyward/keyward/internal/transform"
	"github.com/keyward/keyward/internal/validate"
)

// defaultHeaders are the client headers passed upstream without being
// listed: content negotiation and conditional requests, nothing that
// identifies or authenticates the caller.
var defaultHeaders = []string{"Accept", "Accept-Language", "Content-Type", "If-None-Match", "If-Modified-Since"}

// hopByHop are the headers a route can neither allow nor set: those that
// describe one connection (hopHeaders), and the two the request's own
// framing and target decide.
var hopByHop = append(proxy.HopHeaders(), "Host", "Content-Length")

// knownMethods are the methods a route may allow. CONNECT and TRACE are
// not among them: a gateway never tunnels or reflects.
var knownMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

// Settings are the process-level values of a config: the listener cannot
// change on reload, so they live apart from the routes.
type Settings struct {
	Listen, AdminListen string
	ReadHeaderTimeout   time.Duration
	IdleTimeout         time.Duration
	ShutdownTimeout     time.Duration
	ReadBodyTimeout     time.Duration
	WriteTimeout        time.Duration
	MaxBufferedBytes    int64
	MaxHeaderBytes      int
	MaxHeaders          int
	MaxConnections      int
	AccessLog           bool
	// Engine is server.engine: "keyward" or "stdlib".
	Engine string
	// HTTPRedirect is the http_redirect address; "" without one.
	HTTPRedirect string
	// TLS is the compiled tls block; nil serves plain HTTP.
	TLS *certs.Spec
}

// compiler collects every problem of one config.
type compiler struct {
	opts      Options
	onFault   func(error)
	usesCache bool
	f         *config.File
	getenv    func(string) string
	errs      []error
	warns     []*config.Error
	secrets   map[string]secret.Value
	used      map[string]bool // secrets referenced anywhere
	spendCap  ratelimit.Budget
	kinds     *callerKinds
	knockOns  int // errors not reported: decoding already reported their cause
}

func (c *compiler) errorf(path, format string, args ...any) {
	if c.f.Shadowed(path) {
		// A knock-on of a problem decoding reported ("upstream is
		// required" after a misspelt upstrem): still an error, not news.
		c.knockOns++
		return
	}
	c.errs = append(c.errs, c.f.Errorf(path, format, args...))
}

func (c *compiler) warnf(path, format string, args ...any) {
	if c.f.Shadowed(path) {
		return
	}
	c.warns = append(c.warns, c.f.Errorf(path, format, args...))
}

// Compile turns a loaded file into an immutable Gateway. It opens no
// sockets and changes no globals, so `keyward check` runs exactly this.
// err joins every *config.Error found; warnings describe risky but valid
// configuration.
func Compile(f *config.File, opts Options) (g *Gateway, warnings []*config.Error, err error) {
	c := &compiler{f: f, opts: opts, getenv: opts.Getenv, secrets: map[string]secret.Value{}, used: map[string]bool{}}
	c.errs = append(c.errs, f.Unknown...)
	cfg := &f.Config
	g = &Gateway{opts: opts.withDefaults(), root: &route.Router[*endpoint]{}, hosts: map[string]*route.Router[*endpoint]{}}
	c.onFault = func(err error) { g.StoreFault("ratelimit", err) }
	g.settings = c.settings(cfg)
	g.outbound = c.outbound(cfg)
	g.clients = c.clientIP(cfg)
	c.loadSecrets(cfg)
	c.store(cfg) // after the secrets: a secret that failed is reported once, where it is declared
	g.cors = c.cors("cors", cfg.CORS, nil, nil)

	if cfg.SpendCap != "" {
		b, err := ratelimit.ParseBudget(cfg.SpendCap)
		switch {
		case err != nil:
			c.errorf("spend_cap", "%v", err)
		case b.Unit != ratelimit.Money:
			c.errorf("spend_cap", "the spend cap is money, for example $200/month")
		default:
			c.spendCap = b
		}
	}
	g.authGuard.now = g.opts.Now
	c.kinds = c.callers(cfg, g)
	g.callers = c.kinds
	stages := c.stages(cfg)
	names := map[string]int{}
	// Routes on one path with different methods (a route per method, as a
	// cloud console has them) share the path: the router holds the first,
	// the others hang off it by method.
	paths := map[string]*endpoint{} // stage host + path as written
	pathRoute := map[string]int{}
	for i := range cfg.Routes {
		rc := &cfg.Routes[i]
		path := fmt.Sprintf("routes[%d]", i)
		if rc.Name == "" {
			c.errorf(path, "name is required")
		} else if j, dup := names[rc.Name]; dup {
			c.errorf(path+".name", "duplicate route name %q (also routes[%d])", rc.Name, j)
		} else {
			names[rc.Name] = i
		}
		for _, st := range stages {
			ep := c.endpoint(path, rc, st, cfg)
			if ep == nil {
				continue
			}
			router := g.root
			if st.host != "" {
				if g.hosts[st.host] == nil {
					g.hosts[st.host] = &route.Router[*endpoint]{}
				}
				router = g.hosts[st.host]
			}
			key := st.host + " " + ep.pattern.String()
			if first, ok := paths[key]; ok {
				if err := first.addMethods(ep); err != nil {
					// The same route in two stages that cannot be told
					// apart is the stages' error, reported there.
					if pathRoute[key] != i {
						c.errorf(path+".methods", "%v (routes[%d] has the same path)", err, pathRoute[key])
					}
					continue
				}
				g.endpoints = append(g.endpoints, ep)
				continue
			}
			if other, err := router.Add(ep.pattern, ep); err != nil {
				msg := err.Error()
				if j, ok := pathRoute[st.host+" "+other.String()]; ok {
					msg += fmt.Sprintf(" (routes[%d]): both match the same requests", j)
				}
				c.errorf(path+".path", "%s", msg)
				continue
			}
			paths[key], pathRoute[key] = ep, i
			g.endpoints = append(g.endpoints, ep)
		}
	}
	if len(cfg.Routes) == 0 {
		c.errorf("routes", "at least one route is required")
	}
	if cfg.CORS == nil && !slices.ContainsFunc(cfg.Routes, func(r config.Route) bool { return r.CORS != nil }) {
		c.warnf("routes", "no cors policy: requests from browsers on other origins get 403 and never reach the upstream; add cors.allow_origins for the sites that call keyward")
	}
	for _, stName := range sortedKeys(cfg.Stages) {
		for name := range cfg.Stages[stName].Secrets {
			if !c.used[name] {
				c.warnf("stages."+stName+".secrets."+name, "secret %q is never used", name)
			}
		}
	}
	for name := range cfg.Secrets {
		if !c.used[name] {
			c.warnf("secrets."+name, "secret %q is never used", name)
		}
	}
	if len(c.errs) > 0 {
		errs := dedupe(c.errs)
		sort.SliceStable(errs, func(i, j int) bool { return line(errs[i]) < line(errs[j]) })
		return nil, c.warns, errors.Join(errs...)
	}
	for _, v := range c.secrets {
		g.secrets = append(g.secrets, v)
	}
	g.scrub = scrub.New(g.secrets)
	if p, ok := c.opts.LimitStore.(ratelimit.Pauses); ok {
		g.pauses = p
	}
	g.buffers = g.opts.BodyBuffers
	if g.buffers == nil {
		g.buffers = NewBodyBuffers(g.settings.MaxBufferedBytes)
	}
	g.proxy = &proxy.Proxy{Transport: g.transport(), Scrubber: g.scrub, Now: g.opts.Now}
	if c.usesCache {
		g.cache = c.opts.Cache
	}
	return g, dedupeWarn(c.warns), nil
}

func line(err error) int {
	var ce *config.Error
	if errors.As(err, &ce) {
		return ce.Line
	}
	return 0
}

// dedupe drops repeats: with several stages, a route's problem would
// otherwise be reported once per stage.
func dedupe(errs []error) []error {
	seen := map[string]bool{}
	out := errs[:0]
	for _, e := range errs {
		if !seen[e.Error()] {
			seen[e.Error()] = true
			out = append(out, e)
		}
	}
	return out
}

func dedupeWarn(ws []*config.Error) []*config.Error {
	seen := map[string]bool{}
	var out []*config.Error
	for _, w := range ws {
		if !seen[w.Error()] {
			seen[w.Error()] = true
			out = append(out, w)
		}
	}
	return out
}

func (c *compiler) duration(path, s string) time.Duration {
	d, err := config.ParseDuration(s)
	if err != nil {
		c.errorf(path, "%v", err)
	}
	return d
}

func (c *compiler) size(path, s string) int64 {
	n, err := config.ParseSize(s)
	if err != nil {
		c.errorf(path, "%v", err)
	}
	return n
}

func (c *compiler) settings(cfg *config.Config) Settings {
	s := Settings{
		Listen:            cfg.Listen,
		AdminListen:       cfg.Admin.Listen,
		ReadHeaderTimeout: c.duration("server.read_header_timeout", cfg.Server.ReadHeaderTimeout),
		IdleTimeout:       c.duration("server.idle_timeout", cfg.Server.IdleTimeout),
		ShutdownTimeout:   c.duration("server.shutdown_timeout", cfg.Server.ShutdownTimeout),
		ReadBodyTimeout:   c.duration("server.read_body_timeout", cfg.Server.ReadBodyTimeout),
		WriteTimeout:      c.duration("server.write_timeout", cfg.Server.WriteTimeout),
		MaxBufferedBytes:  c.size("server.max_buffered_bytes", cfg.Server.MaxBufferedBytes),
		MaxHeaderBytes:    cfg.Server.MaxHeaderBytes,
		MaxHeaders:        cfg.Server.MaxHeaders,
		MaxConnections:    cfg.Server.MaxConnections,
		AccessLog:         *cfg.Log.Access,
		Engine:            cfg.Server.Engine,
		HTTPRedirect:      cfg.HTTPRedirect,
	}
	if !slices.Contains(config.Engines, s.Engine) {
		c.errorf("server.engine", "unknown engine %q: want keyward (keyward's own HTTP/1.1 server) or stdlib (Go's net/http)", s.Engine)
	}
	now := time.Now
	if c.opts.Now != nil {
		now = c.opts.Now
	}
	var problems []certs.Problem
	s.TLS, problems = certs.Compile(cfg, certs.CompileOptions{Resolve: c.relative, Now: now(), SkipFiles: c.opts.SkipTLSFiles})
	for _, p := range problems {
		if p.Warning {
			c.warnf(p.Path, "%s", p.Msg)
		} else {
			c.errorf(p.Path, "%s", p.Msg)
		}
	}
	if _, _, err := net.SplitHostPort(s.Listen); err != nil {
		c.errorf("listen", "bad address %q: want host:port or :port", s.Listen)
	}
	for field, d := range map[string]time.Duration{"server.read_header_timeout": s.ReadHeaderTimeout, "server.idle_timeout": s.IdleTimeout,
		"server.read_body_timeout": s.ReadBodyTimeout, "server.write_timeout": s.WriteTimeout} {
		if d <= 0 {
			c.errorf(field, "must be a positive duration, like 30s")
		}
	}
	if s.MaxHeaders < 0 {
		c.errorf("server.max_headers", "must not be negative")
	}
	if s.MaxConnections < -1 {
		c.errorf("server.max_connections", "%d: want a positive number, or -1 for unlimited", s.MaxConnections)
	}
	if s.MaxHeaderBytes < 4096 {
		c.errorf("server.max_header_bytes", "%d is too small (minimum 4096)", s.MaxHeaderBytes)
	}
	if a := s.AdminListen; a != "" {
		host, _, err := net.SplitHostPort(a)
		switch {
		case err != nil:
			c.errorf("admin.listen", "bad address %q: want host:port or :port", a)
		case host == "":
			// Metrics and health are not public: a bare port means loopback.
			s.AdminListen = "127.0.0.1" + a
		case !isLoopbackHost(host):
			c.warnf("admin.listen", "admin listener %q is reachable from other hosts; metrics reveal traffic patterns", a)
		}
	}
	return s
}

// outbound compiles the outbound address policy. It owns the upstream
// connection pools, so a reload that changes it starts with new ones.
func (c *compiler) outbound(cfg *config.Config) *outbound.Policy {
	parse := func(field string, list []string) []netip.Prefix {
		var out []netip.Prefix
		for i, s := range list {
			pfx, err := outbound.ParsePrefix(s)
			if err != nil {
				c.errorf(fmt.Sprintf("outbound.%s[%d]", field, i), "%q is not an IP address or CIDR", s)
				continue
			}
			out = append(out, pfx)
		}
		return out
	}
	return outbound.New(outbound.Options{Deny: parse("deny", cfg.Outbound.Deny), Allow: parse("allow", cfg.Outbound.Allow)})
}

func (c *compiler) clientIP(cfg *config.Config) *clientip.Resolver {
	ci := cfg.ClientIP
	var trusted []netip.Prefix
	for i, s := range ci.TrustedProxies {
		p, err := clientip.ParsePrefix(s)
		if err != nil {
			c.errorf(fmt.Sprintf("client_ip.trusted_proxies[%d]", i), "%q is not an IP address or CIDR", s)
			continue
		}
		trusted = append(trusted, p)
	}
	h, err := clientip.ParseHeader(ci.Header)
	if err != nil {
		c.errorf("client_ip.header", "%v", err)
	}
	wide := 0
	if ci.IPv6WidePrefix != nil {
		wide = *ci.IPv6WidePrefix
	}
	if f := ci.IPv6WideFactor; f < 0 || f > 1<<20 {
		c.errorf("client_ip.ipv6_wide_factor", "%d: want 1 to 1048576 (the number of clients a wide network counts as)", f)
	}
	r, err := clientip.NewResolver(clientip.Options{TrustedProxies: trusted, Header: h, IPv6Prefix: ci.IPv6Prefix, IPv6WidePrefix: wide})
	for _, e := range unjoin(err) {
		field, msg, _ := strings.Cut(e.Error(), " ")
		c.errorf("client_ip."+field, "%s", msg)
	}
	return r
}

// store checks the store setting; the process opens it (see
// internal/server), because its state must outlive reloads.
func (c *compiler) store(cfg *config.Config) {
	if s := cfg.Store; s != "" && s != "memory" {
		for name := range cfg.Secrets {
			if strings.Contains(s, "{secret."+name+"}") {
				c.used[name] = true
			}
		}
		// Check reads the TLS files the URL names, and opens no socket.
		if url, err := StoreURL(c.f, c.getenv); err != nil {
			if !strings.Contains(err.Error(), "} in the store URL: ") || !c.secretFailed(s) {
				c.errorf("store", "%v", err)
			}
		} else if err := redisstore.Check(url, c.dir()); err != nil {
			c.errorf("store", "%v (the URL is not repeated here: it may hold a password); want memory, redis://[[USER]:PASSWORD@]HOST[:6379][/DB], redis-sentinel://[[USER]:PASSWORD@]HOST[:26379][,HOST...]/MASTER[/DB] or redis-cluster://[[USER]:PASSWORD@]HOST[:6379][,HOST...], each with rediss for TLS", err)
		}
	}
	if c.opts.LimitStore == nil {
		// check, test and routes compile without a process: give them a
		// private memory store.
		c.opts.LimitStore = ratelimit.NewMemory(0)
	}
}

// secretFailed reports whether store names a declared secret that did
// not load (its error is reported where it is declared).
func (c *compiler) secretFailed(store string) bool {
	for name := range c.f.Config.Secrets {
		if _, ok := c.secrets[name]; !ok && strings.Contains(store, "{secret."+name+"}") {
			return true
		}
	}
	return false
}

// defaultBurst lets a page fire a handful of requests at once.
const defaultBurst = 10

// limits compiles a route's limits. The limiter works in two steps: the
// per-client rate is checked early, on every request (it holds off
// request pressure, and a refusal counts against it); the budgets (the
// route's, and each client's) are the ceiling of the upstream bill, so
// they are spent only when a request goes upstream: a request refused on
// the way, or answered from the cache, costs none of them.
func (c *compiler) limits(path string, lc *config.Limits, ep *endpoint) {
	ep.limiter = c.limiter(path, lc, ep)
	ep.spends = lc.Budget != "" || lc.ClientBudget != "" || lc.Tokens != "" || lc.ClientTokens != "" ||
		!c.spendCap.IsZero() && (ep.price > 0 || ep.llm != nil)
	switch lc.Per {
	case "", "caller":
		ep.perCaller = ep.callers != nil
	case "ip":
	default:
		c.errorf(path+".per", "%q: want caller or ip", lc.Per)
	}
	if ep.limiter != nil && ep.callers != nil {
		ep.plans = &planLimiters{base: c.limiterOptions(path, lc, ep), onErr: func(err error) { c.onFault(err) }}
	}
}

func (c *compiler) cache(path string, rc *config.Route, ep *endpoint) {
	cc := rc.Cache
	o := cache.PolicyOptions{Vary: cc.Vary, HonorUpstream: cc.HonorUpstream, Statuses: cc.Statuses, UpstreamTimeout: ep.timeout}
	if cc.TTL == "" {
		c.errorf(path+".ttl", "ttl is required")
	} else {
		o.TTL = c.duration(path+".ttl", cc.TTL)
	}
	if cc.StaleWhileRevalidate != "" {
		o.StaleWhileRevalidate = c.duration(path+".stale_while_revalidate", cc.StaleWhileRevalidate)
	}
	if cc.StaleIfError != "" {
		o.StaleIfError = c.duration(path+".stale_if_error", cc.StaleIfError)
	}
	if cc.MaxEntry != "" {
		n, err := config.ParseSize(cc.MaxEntry)
		if err != nil {
			c.errorf(path+".max_entry", "%v", err)
		}
		o.MaxEntry = n
	}
	if rc.Transform != nil && (rc.Transform.Request != "" || rc.Transform.Method != "") {
		// The cache keys on the client's GET (path, allowed query, vary);
		// a request transform builds another request, maybe with another
		// method, that the key does not describe.
		c.errorf(path, "a cached route cannot have a request transform or transform.method; cache the upstream's GET instead")
	}
	p, err := cache.NewPolicy(o)
	if err != nil {
		for _, e := range unjoin(err) {
			c.errorf(path, "%v", e)
		}
		return
	}
	ep.cache = p
	// The upstream's origin is part of the key, so a reload that points a
	// route elsewhere never serves the old upstream's entries.
	if ep.upstream != nil {
		ep.cacheRoute = ep.name + " " + ep.upstream.Scheme + "://" + ep.upstream.Host
	}
	// Every client header forwarded upstream is part of the key, so a
	// cache in front of keyward (a CDN, the browser's) must key on it too.
	vary := slices.Clone(cc.Vary)
	for _, h := range ep.headerAllow {
		if h != "If-None-Match" && h != "If-Modified-Since" && !slices.ContainsFunc(vary, func(v string) bool { return strings.EqualFold(v, h) }) {
			vary = append(vary, h)
		}
	}
	ep.vary = strings.Join(vary, ", ")
	if c.opts.Cache == nil {
		c.opts.Cache = cache.New(cache.NewMemory(0, nil), cache.Options{Unavailable: UpstreamUnavailable})
	}
	c.usesCache = true
}

func (c *compiler) limiter(path string, lc *config.Limits, ep *endpoint) *ratelimit.Limiter {
	o := c.limiterOptions(path, lc, ep)
	if o.Rate.IsZero() && o.Budget.IsZero() && o.ClientBudget.IsZero() && o.Tokens.IsZero() && o.ClientTokens.IsZero() && o.SpendCap.IsZero() {
		c.errorf(path, "set rate, budget, client_budget, tokens or client_tokens")
		return nil
	}
	l, err := ratelimit.New(o)
	if err != nil {
		c.errorf(path, "%v", err)
		return nil
	}
	return l
}

// limiterOptions compiles a limits block into the limiter's options.
func (c *compiler) limiterOptions(path string, lc *config.Limits, ep *endpoint) ratelimit.Options {
	o := ratelimit.Options{Name: ep.name, Burst: lc.Burst, Store: c.opts.LimitStore, Now: c.opts.Now, OnFault: c.onFault,
		WideFactor: int64(c.f.Config.ClientIP.IPv6WideFactor)}
	if ep.stage != "" {
		o.Name = ep.stage + "/" + ep.name
	}
	var err error
	if lc.Rate != "" {
		if o.Rate, err = ratelimit.ParseRate(lc.Rate); err != nil {
			c.errorf(path+".rate", "%v", err)
		}
		if o.Burst == 0 {
			o.Burst = defaultBurst
		}
	}
	if lc.Budget != "" {
		if o.Budget, err = ratelimit.ParseBudget(lc.Budget); err != nil {
			c.errorf(path+".budget", "%v", err)
		}
	}
	if lc.ClientBudget != "" {
		if o.ClientBudget, err = ratelimit.ParseBudget(lc.ClientBudget); err != nil {
			c.errorf(path+".client_budget", "%v", err)
		}
	}
	if lc.Tokens != "" {
		if o.Tokens, err = ratelimit.ParseTokens(lc.Tokens); err != nil {
			c.errorf(path+".tokens", "%v", err)
		}
	}
	if lc.ClientTokens != "" {
		if o.ClientTokens, err = ratelimit.ParseTokens(lc.ClientTokens); err != nil {
			c.errorf(path+".client_tokens", "%v", err)
		}
	}
	for field, b := range map[string]ratelimit.Budget{"budget": o.Budget, "client_budget": o.ClientBudget} {
		if b.Unit == ratelimit.Money && ep.price == 0 && ep.llm == nil {
			// Without a price or a model API, a call costs nothing known:
			// such a budget would never be reached.
			c.errorf(path+"."+field, "a budget in money needs a price on the route (price: $0.005 per call) or llm: (priced per token); to count calls instead, write a number: 10000/day")
		}
	}
	if (lc.Tokens != "" || lc.ClientTokens != "") && ep.llm == nil {
		c.errorf(path+".tokens", "token budgets need llm: on the route (it reads the tokens each answer used)")
	}
	if ep.price > 0 || ep.llm != nil {
		o.SpendCap = c.spendCap
	}
	o.Price = ep.price
	if o.OnStoreError, err = ratelimit.ParseFaultPolicy(lc.OnStoreError); err != nil {
		c.errorf(path+".on_store_error", "%v", err)
	}
	if lc.StoreTimeout != "" {
		o.Timeout = c.duration(path+".store_timeout", lc.StoreTimeout)
	}
	if lc.Burst < 0 {
		c.errorf(path+".burst", "must not be negative")
	}
	return o
}

func (c *compiler) loadSecrets(cfg *config.Config) {
	names := make([]string, 0, len(cfg.Secrets))
	for n := range cfg.Secrets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if v, ok := c.loadSecret("secrets."+name, name, cfg.Secrets[name]); ok {
			c.secrets[name] = v
		}
	}
	c.loadStageSecrets(cfg)
}

// relative resolves a path relative to the config file's directory, so a
// config works the same from any working directory.
func (c *compiler) relative(p string) string { return c.dir() + p }

type stage struct {
	name, prefix, host string
	vars               map[string]string
}

func (c *compiler) stages(cfg *config.Config) []stage {
	if len(cfg.Stages) == 0 {
		return []stage{{}}
	}
	names := make([]string, 0, len(cfg.Stages))
	for n := range cfg.Stages {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []stage
	seen := map[string]string{}
	for _, n := range names {
		s := cfg.Stages[n]
		path := "stages." + n
		st := stage{name: n, prefix: strings.TrimSuffix(s.Prefix, "/"), host: strings.ToLower(s.Host), vars: s.Vars}
		if !placeholder.ValidName(n) {
			c.errorf(path, "bad stage name %q", n)
		}
		if s.Prefix == "" && s.Host == "" {
			c.errorf(path, "set prefix or host (or both): stages need a way to be told apart")
		}
		if s.Prefix != "" && !strings.HasPrefix(s.Prefix, "/") {
			c.errorf(path+".prefix", "prefix %q must start with /", s.Prefix)
		}
		key := st.host + st.prefix
		if other, dup := seen[key]; dup && key != "" { // "" is reported above
			c.errorf(path, "same prefix and host as stage %q", other)
		}
		seen[key] = n
		for v := range s.Vars {
			if !placeholder.ValidName(v) {
				c.errorf(path+".vars."+v, "bad variable name %q", v)
			}
		}
		out = append(out, st)
	}
	return out
}

func (c *compiler) resolver(st stage, pat *route.Pattern) placeholder.Resolver {
	return placeholder.Resolver{
		Stage: func(n string) (string, bool) {
			v, ok := st.vars[n]
			return v, ok
		},
		Secret: func(n string) (secret.Value, bool) {
			c.used[n] = true
			v, ok := c.secretFor(st, n)
			if !ok {
				// A secret that failed to load is reported once, at its
				// definition; don't also call it unknown here.
				return secret.New(n, ""), c.secretDefined(st, n)
			}
			return v, ok
		},
		// Without a pattern (the path has an error of its own), any
		// parameter is taken, so the rest of the route is checked
		// without knock-on errors.
		Param: func(n string) bool { return pat == nil || slices.Contains(pat.Names, n) },
	}
}

func (c *compiler) endpoint(path string, rc *config.Route, st stage, cfg *config.Config) *endpoint {
	nerr := len(c.errs) + c.knockOns
	ep := &endpoint{name: rc.Name, stage: st.name}
	pat, err := route.ParsePattern(rc.Path)
	switch {
	case rc.Path == "":
		c.errorf(path+".path", "path is required: the public path clients call, e.g. path: /%s", cmp.Or(rc.Name, "my-repos"))
	case err != nil:
		c.errorf(path+".path", "%v", err)
	}
	if err != nil {
		// The rest of the route is still checked: every problem at once.
		pat = nil
	} else if ep.pattern, err = pat.Prefixed(st.prefix); err != nil {
		c.errorf("stages."+st.name+".prefix", "%v", err)
		return nil
	}
	ep.public = pat
	ep.host = st.host

	// Parameters and their patterns.
	var names []string
	if pat != nil {
		names = pat.Names
	}
	ep.paramRE = make([]*regexp.Regexp, len(names))
	for name, expr := range rc.Params {
		i := slices.Index(names, name)
		if pat == nil {
			i = -2 // unknown: the path did not parse
		}
		if i == -1 {
			c.errorf(path+".params."+name, "parameter {%s} is not in path %q", name, rc.Path)
			continue
		}
		if _, err := regexp.Compile(expr); err != nil {
			c.errorf(path+".params."+name, "bad pattern %q: %v", expr, err)
			continue
		}
		if i >= 0 {
			ep.paramRE[i] = regexp.MustCompile("^(?:" + expr + ")$")
		}
	}

	// Methods.
	for i, m := range rc.Methods {
		m = strings.ToUpper(m)
		if !slices.Contains(knownMethods, m) {
			c.errorf(fmt.Sprintf("%s.methods[%d]", path, i), "unsupported method %q (allowed: %s)", rc.Methods[i], strings.Join(knownMethods, ", "))
			continue
		}
		if !slices.Contains(ep.methods, m) {
			ep.methods = append(ep.methods, m)
		}
	}
	ep.ownMethods = slices.Clone(ep.methods)
	if slices.Contains(ep.methods, "GET") && !slices.Contains(ep.methods, "HEAD") {
		// HEAD is GET without a body (RFC 9110 9.3.2); allowing one allows
		// the other, as every HTTP server does.
		ep.methods = append(ep.methods, "HEAD")
	}
	ep.allow = []string{strings.Join(ep.methods, ", ")}
	ep.allMethods = ep.methods

	res := c.resolver(st, pat)
	upstream, fromURL := splitUpstream(rc.Upstream)
	if rc.Upstream == "" {
		c.errorf(path+".upstream", "upstream is required: the URL requests go to, e.g. upstream: \"https://api.github.com/user/repos\"")
	} else if ep.upstream, err = route.CompileUpstream(upstream, res); err != nil {
		c.errorf(path+".upstream", "%v", err)
	}
	c.literalCredentials(path, rc, st, ep.upstream, fromURL)
	if up := ep.upstream; up != nil && up.Scheme == "http" && !isLoopbackHost(hostOnly(up.Host)) {
		if ep.upstream.Template().HasSecret() || c.routeSendsSecret(rc) {
			c.warnf(path+".upstream", "a secret is sent over plain http to %s: anyone on the path can read it; use https", up.Host)
		}
	}
	if pat != nil && pat.Rest && slices.ContainsFunc(ep.methods, func(m string) bool { return m != "GET" && m != "HEAD" && m != "OPTIONS" }) {
		var writes []string
		for _, m := range ep.methods {
			if m != "GET" && m != "HEAD" && m != "OPTIONS" {
				writes = append(writes, m)
			}
		}
		c.warnf(path+".methods", "greedy path %q allows write methods %v: every upstream path under the prefix can be written", rc.Path, writes)
	}

	// The caller may be written into what the route sets, never into the
	// upstream URL's path or host.
	withCaller := res
	withCaller.Caller = func(name string) error {
		if len(rc.Callers) == 0 {
			return fmt.Errorf("{%s} needs a verified caller: list the route's callers", name)
		}
		return nil
	}
	if len(fromURL) > 0 {
		// ?key={secret.maps} in the upstream URL means query.set.
		rc = c.withURLQuery(path, rc, fromURL, withCaller)
	}
	c.query(path+".query", rc, ep, withCaller)
	c.headers(path+".headers", rc, ep, withCaller)
	c.routeCallers(path, rc, ep, c.kinds)
	ep.callerFields = callerFields(ep)

	ep.timeout = c.duration(path+".timeout", rc.Timeout)
	ep.idleTimeout = c.duration(path+".idle_timeout", rc.IdleTimeout)
	if ep.maxBody, err = config.ParseSize(rc.MaxBody); err != nil {
		c.errorf(path+".max_body", "%v", err)
	}

	c.body(path, rc, ep, st)
	if rc.Cache != nil {
		c.cache(path+".cache", rc, ep)
		if !slices.Contains(ep.methods, "GET") {
			c.warnf(path+".cache", "only GET is cached, and the route allows %s: the cache block does nothing here; remove it, or add GET to methods", strings.Join(ep.methods, ", "))
		}
	}
	c.llmCompile(path, rc, ep)
	switch {
	case rc.Limits != nil:
		c.limits(path+".limits", rc.Limits, ep)
	case cfg.Limits != nil:
		c.limits("limits", cfg.Limits, ep)
	case !c.spendCap.IsZero() && (ep.price > 0 || ep.llm != nil):
		// No limits of its own, but it spends money: the spend cap holds.
		c.limits(path, &config.Limits{}, ep)
	}
	if rc.CappedResponse != nil {
		ep.capped = c.staticResponse(path+".capped_response", rc.CappedResponse)
	}
	if ep.callers == nil && ep.limiter == nil && slices.ContainsFunc(ep.methods, func(m string) bool { return m != "GET" && m != "HEAD" && m != "OPTIONS" }) {
		// Anyone who finds the URL can write through the key as fast as
		// they like: the route is itself a credential.
		c.warnf(path+".methods", "write methods %v with neither callers nor limits: anyone can spend the key without bound; add callers, or limits with a budget", ep.methods)
	}
	if rc.Fallback != nil && ep.callers != nil {
		// The fallback's budget is one pool for every request without a
		// credential: its limiter has its own name, so its counts never
		// mix with the route's.
		fb := &endpoint{name: ep.name + "/fallback", stage: ep.stage}
		ep.fallback = c.limiter(path+".fallback", rc.Fallback, fb)
	}

	if rc.CORS != nil {
		ep.cors = c.cors(path+".cors", rc.CORS, ep.methods, ep.headerAllowNames())
	} else {
		ep.cors = c.cors("cors", cfg.CORS, ep.methods, ep.headerAllowNames())
	}
	if len(c.errs)+c.knockOns > nerr || pat == nil {
		return nil
	}
	return ep
}

// body compiles the route's validation and transforms.
func (c *compiler) body(path string, rc *config.Route, ep *endpoint, st stage) {
	if rc.Validate != nil {
		vc := *rc.Validate
		vc.MaxBodyBytes = ep.maxBody
		v, err := validate.Compile(vc, c.dir())
		for _, e := range unjoin(err) {
			var ve *validate.Error
			if errors.As(e, &ve) {
				c.errorf(path+".validate."+ve.Path, "%s", ve.Msg)
			} else {
				c.errorf(path+".validate", "%v", e)
			}
		}
		ep.validator = v
	}
	if rc.Transform == nil {
		return
	}
	t, err := transform.Compile(*rc.Transform)
	if err != nil {
		for _, e := range unjoin(err) {
			var te *transform.Error
			if errors.As(e, &te) {
				msg := te.Msg
				if te.Offset >= 0 {
					msg = fmt.Sprintf("at offset %d: %s", te.Offset, te.Msg)
				}
				c.errorf(path+".transform."+te.Path, "%s", msg)
			} else {
				c.errorf(path+".transform", "%v", e)
			}
		}
		return
	}
	ep.transform = t
	ep.stageVars = st.vars
	if t.Request != nil {
		ep.transformSecrets = map[string]string{}
		for _, name := range t.Request.SecretNames() {
			c.used[name] = true
			v, ok := c.secretFor(st, name)
			if !c.secretDefined(st, name) {
				c.errorf(path+".transform.request", "unknown secret $secret.%s", name)
				continue
			}
			if ok {
				ep.transformSecrets[name] = v.Reveal()
			}
		}
	}
	if t.Method != "" && !slices.Contains(knownMethods, t.Method) {
		c.errorf(path+".transform.method", "unsupported method %q", t.Method)
	}
}

// dir is the config file's directory, with a trailing slash, or "".
func (c *compiler) dir() string {
	if i := strings.LastIndexByte(c.f.Name, '/'); i >= 0 {
		return c.f.Name[:i+1]
	}
	return ""
}

func (c *compiler) routeSendsSecret(rc *config.Route) bool {
	for _, v := range rc.Query.Set {
		if strings.Contains(v, "{secret.") {
			return true
		}
	}
	for _, v := range rc.Headers.Set {
		if strings.Contains(v, "{secret.") {
			return true
		}
	}
	return false
}

func (c *compiler) query(path string, rc *config.Route, ep *endpoint, res placeholder.Resolver) {
	ep.queryAllow = map[string]bool{}
	for i, name := range rc.Query.Allow {
		if name == "" {
			c.errorf(fmt.Sprintf("%s.allow[%d]", path, i), "empty parameter name")
		}
		ep.queryAllow[name] = true
	}
	names := sortedKeys(rc.Query.Set)
	for _, name := range names {
		tpl, err := placeholder.Compile(rc.Query.Set[name], res)
		if err != nil {
			c.errorf(path+".set."+name, "%v", err)
			continue
		}
		if ep.queryAllow[name] {
			c.errorf(path+".set."+name, "%q is both allowed from the client and set by the gateway; the gateway's value always wins, so remove it from allow", name)
		}
		ep.querySet = append(ep.querySet, querySet{name: name, key: queryKey(name), value: tpl})
	}
}

func (c *compiler) headers(path string, rc *config.Route, ep *endpoint, res placeholder.Resolver) {
	ep.headerAllow = nil
	removed := map[string]bool{}
	for i, h := range rc.Headers.Remove {
		ch := http.CanonicalHeaderKey(h)
		if !slices.Contains(defaultHeaders, ch) {
			c.errorf(fmt.Sprintf("%s.remove[%d]", path, i), "%q is not passed by default, so there is nothing to remove (defaults: %s)", h, strings.Join(defaultHeaders, ", "))
		}
		removed[ch] = true
	}
	for _, h := range defaultHeaders {
		if !removed[h] {
			ep.headerAllow = append(ep.headerAllow, h)
		}
	}
	setNames := sortedKeys(rc.Headers.Set)
	for i, h := range rc.Headers.Allow {
		ch := http.CanonicalHeaderKey(h)
		p := fmt.Sprintf("%s.allow[%d]", path, i)
		switch {
		case !validHeaderName(h):
			c.errorf(p, "%q is not a valid header name", h)
		case slices.Contains(hopByHop, ch):
			c.errorf(p, "%q is a connection header and is never forwarded", h)
		case slices.ContainsFunc(setNames, func(s string) bool { return strings.EqualFold(s, h) }):
			c.errorf(p, "%q is also in headers.set; the gateway's value always wins, so remove it from allow", h)
		case !slices.Contains(ep.headerAllow, ch):
			ep.headerAllow = append(ep.headerAllow, ch)
		}
	}
	for _, h := range setNames {
		p := path + ".set." + h
		ch := http.CanonicalHeaderKey(h)
		if !validHeaderName(h) {
			c.errorf(p, "%q is not a valid header name", h)
			continue
		}
		if slices.Contains(hopByHop, ch) {
			c.errorf(p, "%q is a connection header and cannot be set", h)
			continue
		}
		tpl, err := placeholder.Compile(rc.Headers.Set[h], res)
		if err != nil {
			c.errorf(p, "%v", err)
			continue
		}
		hs := headerSet{name: ch, value: tpl}
		if tpl.Static() {
			v := string(tpl.Expand(nil, nil, nil))
			if strings.ContainsAny(v, "\r\n\x00") {
				c.errorf(p, "value contains a line break or NUL")
				continue
			}
			hs.static = []string{v}
		}
		ep.headerSet = append(ep.headerSet, hs)
	}
	if !slices.ContainsFunc(ep.headerSet, func(h headerSet) bool { return h.name == "User-Agent" }) {
		// Some APIs (GitHub's among them) refuse requests without a
		// User-Agent, and the client's own is not forwarded by default.
		ep.headerSet = append(ep.headerSet, headerSet{name: "User-Agent", static: []string{"keyward/" + Version}})
	}
}

// headerAllowNames are the request headers a preflight may ask for: the
// ones the route forwards, and the ones its callers present credentials
// in (read by the gateway, never forwarded).
func (ep *endpoint) headerAllowNames() []string {
	return append(slices.Clip(ep.headerAllow), ep.credentialHeaders...)
}

// denyOthers is the policy of a route without CORS (no cors block, or
// disabled: true): no origin is allowed, so a request from another
// origin gets 403 and never reaches the upstream. Without it any site
// could make its visitors' browsers spend the key with simple requests
// (the browser would hide the answer, not stop the call).
var denyOthers, _ = cors.New(cors.Options{RejectOtherOrigins: true})

func (c *compiler) cors(path string, cc *config.CORS, methods, allowHeaders []string) *cors.Policy {
	if cc == nil || cc.Disabled {
		return denyOthers
	}
	o := cors.Options{
		AllowOrigins:       cc.AllowOrigins,
		AllowMethods:       cc.AllowMethods,
		AllowHeaders:       cc.AllowHeaders,
		ExposeHeaders:      cc.ExposeHeaders,
		AllowCredentials:   cc.AllowCredentials,
		RejectOtherOrigins: cc.RejectOtherOrigins == nil || *cc.RejectOtherOrigins,
		MaxAge:             10 * time.Minute,
	}
	if len(o.AllowHeaders) == 0 {
		o.AllowHeaders = allowHeaders
	}
	if cc.MaxAge != "" {
		o.MaxAge = c.duration(path+".max_age", cc.MaxAge)
	}
	for i, m := range cc.AllowMethods {
		if !slices.Contains(knownMethods, strings.ToUpper(m)) {
			c.errorf(fmt.Sprintf("%s.allow_methods[%d]", path, i), "unsupported method %q", m)
		}
	}
	p, err := cors.New(o)
	if err != nil {
		for _, e := range unjoin(err) {
			field, msg, _ := strings.Cut(e.Error(), ": ")
			c.errorf(path+"."+field, "%s", msg)
		}
		return nil
	}
	if p.AllowsAnyOrigin() && cc.AllowCredentials {
		c.warnf(path+".allow_origins", `"*" with allow_credentials: browsers refuse this combination, so keyward answers without credentials; list the origins instead`)
	}
	if len(cc.AllowOrigins) == 0 {
		c.warnf(path+".allow_origins", "no origins allowed: browsers will not be able to call these routes")
	}
	return p
}

// unjoin lists the errors inside a joined error (or an error list such as
// validate.Errors), or err itself.
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			// Underscores are legal tokens but proxies disagree on whether
			// X_Api_Key and X-Api-Key are the same header; refuse them.
			return false
		}
	}
	return true
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(h, "[]"))
	return ip != nil && ip.IsLoopback()
}

// queryKey is the spelling-insensitive identity of a query parameter name:
// "KEY", "key ", "key[]" and "%6Bey" (once decoded) all collide with a set
// "key", because upstream frameworks disagree on which of them is "key".
func queryKey(name string) string {
	k := strings.ToLower(strings.TrimSpace(name))
	if i := strings.IndexByte(k, '['); i > 0 {
		k = k[:i]
	}
	return k
}

// addMethods hangs ep off first, a route on the same path: each request
// goes to the route that allows its method. Their methods must not
// overlap, and every route on the path answers 405 and preflights with
// all of them.
func (first *endpoint) addMethods(ep *endpoint) error {
	for o := first; o != nil; o = o.next {
		for _, m := range ep.methods {
			if slices.Contains(o.methods, m) && !(m == "HEAD" && !slices.Contains(ep.ownMethods, "HEAD")) {
				return fmt.Errorf("method %s is also allowed by route %q on this path", m, o.name)
			}
		}
	}
	// HEAD comes with GET: a GET route on a path takes it unless another
	// route there lists HEAD itself.
	last := first
	for last.next != nil {
		last = last.next
	}
	last.next = ep
	var all []string
	for o := first; o != nil; o = o.next {
		for _, m := range o.methods {
			if !slices.Contains(all, m) {
				all = append(all, m)
			}
		}
	}
	allow := []string{strings.Join(all, ", ")}
	for o := first; o != nil; o = o.next {
		o.allMethods, o.allow = all, allow
	}
	return nil
}

// forMethod returns the route on ep's path that allows method, or ep.
func (ep *endpoint) forMethod(method string) *endpoint {
	for o := ep; o != nil; o = o.next {
		if o.allows(method) {
			return o
		}
	}
	return ep
}

// staticResponse compiles an answer written in the config.
func (c *compiler) staticResponse(path string, sr *config.StaticResponse) *staticResponse {
	r := &staticResponse{status: sr.Status, ctype: []string{sr.ContentType}, body: []byte(sr.Body)}
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if r.status < 200 || r.status > 599 {
		c.errorf(path+".status", "%d is not a status code to answer with (200-599)", sr.Status)
	}
	if sr.ContentType == "" {
		r.ctype = jsonType
	}
	return r
}
