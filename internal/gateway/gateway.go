// Package gateway compiles a config into an immutable Gateway and serves
// requests through it. The request path reads top to bottom in
// Gateway.serve: path check → match → CORS → method → per-client rate →
// params → query and upstream path → body limit → validation and request
// transform → cache (or forward) → budgets → upstream request (secrets
// last, into the outbound request only) → internal/proxy (response
// filters, scrubbing, response transform) → access log. Every refusal is
// returned as an error and answered in one place (refuse).
package gateway

import (
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keyward/keyward/internal/accesslog"
	"github.com/keyward/keyward/internal/cache"
	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/caller/apikey"
	"github.com/keyward/keyward/internal/caller/visitor"
	"github.com/keyward/keyward/internal/clientip"
	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/cors"
	"github.com/keyward/keyward/internal/llm"
	"github.com/keyward/keyward/internal/metrics"
	"github.com/keyward/keyward/internal/outbound"
	"github.com/keyward/keyward/internal/placeholder"
	"github.com/keyward/keyward/internal/proxy"
	"github.com/keyward/keyward/internal/ratelimit"
	"github.com/keyward/keyward/internal/route"
	"github.com/keyward/keyward/internal/scrub"
	"github.com/keyward/keyward/internal/secret"
	"github.com/keyward/keyward/internal/transform"
	"github.com/keyward/keyward/internal/validate"
)

// Version is keyward's version, set at build time with -ldflags.
var Version = "dev"

// Options are the process-wide parts a Gateway uses. They outlive reloads:
// one Transport keeps its upstream connections across config changes.
type Options struct {
	// WrapTransport, if non-nil, wraps what sends upstream requests: it
	// gets the config's outbound policy (which enforces the address rules
	// and owns the connection pools) and returns the RoundTripper to use.
	// `keyward test` records requests this way; benchmarks swap clients.
	WrapTransport func(policy http.RoundTripper) http.RoundTripper
	// Logger receives errors and events. If nil, nothing is logged.
	Logger *slog.Logger
	// AccessLog receives one line per request (when log.access is on). If
	// nil, there is no access log.
	AccessLog *accesslog.Logger
	// Metrics records Prometheus metrics. If nil, none are recorded.
	Metrics *metrics.Metrics
	// Getenv reads secrets from the environment. If nil, os.Getenv is used.
	Getenv func(string) string
	// Now is the clock. If nil, time.Now is used.
	Now func() time.Time
	// Cache stores responses of routes with a cache block. It outlives
	// reloads. If nil, Compile uses a private memory cache.
	Cache *cache.Cache
	// BodyBuffers bounds the request bodies held in memory by all requests
	// (server.max_buffered_bytes). It outlives reloads. If nil, Compile
	// makes one from the config's bound.
	BodyBuffers *BodyBuffers
	// KeyStore holds the API keys when the config's store is Redis
	// (caller/apikey/redis). It outlives reloads. If nil with a Redis
	// store (keyward check, keyward test), every key is refused with
	// store_failed: those commands do not connect to Redis.
	KeyStore apikey.Store
	// LimitStore holds rate-limit and budget state. It outlives reloads so
	// a new config continues the old one's counts. If nil, Compile uses a
	// private memory store.
	LimitStore ratelimit.Store
	// SkipTLSFiles leaves tls.cert and tls.key unread when compiling:
	// keyward check --no-secrets, in CI, where the key is a secret that
	// is not there.
	SkipTLSFiles bool
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Gateway is one compiled config. It is immutable: a reload compiles a new
// one and swaps it in (see Handler), and requests already running finish on
// the one they started with.
type Gateway struct {
	opts      Options
	settings  Settings
	root      *route.Router[*endpoint]
	hosts     map[string]*route.Router[*endpoint] // stage hosts
	cors      *cors.Policy                        // global policy, for 404s
	endpoints []*endpoint
	secrets   []secret.Value
	scrub     *scrub.Scrubber
	proxy     *proxy.Proxy
	outbound  *outbound.Policy
	clients   *clientip.Resolver
	cache     *cache.Cache // nil when no route caches
	buffers   *BodyBuffers
	pauses    ratelimit.Pauses // the kill switch's state; nil: none
	callers   *callerKinds
	authGuard authGuard
	faultLog  atomic.Int64 // unix ns of the last logged store fault
}

// endpoint is one route mounted in one stage, compiled.
type endpoint struct {
	name, stage, host string
	public            *route.Pattern // as written in the route
	pattern           *route.Pattern // with the stage prefix
	paramRE           []*regexp.Regexp
	methods           []string
	ownMethods        []string  // as written (without the HEAD that GET brings)
	allMethods        []string  // of every route on this path (see next)
	allow             []string  // prebuilt Allow header value: allMethods
	next              *endpoint // another route on the same path, for other methods
	upstream          *route.Upstream
	queryAllow        map[string]bool
	querySet          []querySet
	headerAllow       []string // canonical names
	headerSet         []headerSet
	timeout           time.Duration
	idleTimeout       time.Duration
	maxBody           int64
	cors              *cors.Policy
	limiter           *ratelimit.Limiter   // nil: no limits
	spends            bool                 // a budget is spent on each upstream call
	callers           caller.Verifier      // nil: a public route
	callerKinds       string               // the kinds it accepts, for metrics ("users+visitors")
	callerFields      []string             // caller placeholders its templates write
	credentialHeaders []string             // headers its callers present credentials in (CORS may allow them)
	fallback          *ratelimit.Limiter   // limits of requests without a credential; nil: refused
	perCaller         bool                 // per-client limits count the caller, not the address
	plans             *planLimiters        // API keys' own plans
	llm               *llm.Policy          // nil: the upstream is no model API
	price             config.Money         // what one upstream call costs; 0: unpriced
	capped            *staticResponse      // capped_response; nil: 503
	cache             *cache.Policy        // nil: not cached
	cacheRoute        string               // route identity in cache keys
	vary              string               // request headers the cache varies on, for the response's Vary
	validator         *validate.Validator  // nil: no checks
	transform         *transform.Transform // nil: bodies pass unchanged
	transformSecrets  map[string]string    // only the secrets the request transform reads
	stageVars         map[string]string
}

type querySet struct {
	name, key string
	value     placeholder.Template
}

type headerSet struct {
	name   string
	value  placeholder.Template
	static []string // prebuilt value when the template has no parameters
}

// transport is what the proxy sends on: the outbound policy, wrapped as
// the options say.
func (g *Gateway) transport() http.RoundTripper {
	if g.opts.WrapTransport != nil {
		return g.opts.WrapTransport(g.outbound)
	}
	return g.outbound
}

// Inherit is called before g serves, with the Gateway it replaces (nil
// at start): when the outbound policy is unchanged, g keeps prev's
// upstream connections instead of dialling new ones.
func (g *Gateway) Inherit(prev *Gateway) {
	if prev != nil && prev.outbound.Equal(g.outbound) {
		g.outbound = prev.outbound
		g.proxy.Transport = g.transport()
	}
}

// Replaced is called once next serves in g's place. If next does not use
// g's upstream connections (the outbound policy changed), they retire:
// idle ones close at once, busy ones when their requests end, so a
// tightened outbound.deny holds for every request from now on.
func (g *Gateway) Replaced(next *Gateway) {
	if next == nil || next.outbound != g.outbound {
		g.outbound.Retire()
	}
	g.Close()
}

// Close writes what g holds for later: the last uses of API keys read
// from keys files (kept in memory, written at most once a minute). The
// server calls it when g is replaced and when it stops.
func (g *Gateway) Close() error {
	var errs []error
	for _, f := range g.callers.files {
		errs = append(errs, f.Flush())
	}
	return errors.Join(errs...)
}

// Settings returns the process-level settings of this config.
func (g *Gateway) Settings() Settings { return g.settings }

// Handler serves requests through the current Gateway and lets a reload
// replace it atomically.
type Handler struct {
	cur atomic.Pointer[Gateway]
}

// NewHandler returns a Handler serving g.
func NewHandler(g *Gateway) *Handler {
	h := &Handler{}
	h.cur.Store(g)
	return h
}

// Swap installs g for new requests and returns the previous Gateway.
func (h *Handler) Swap(g *Gateway) *Gateway { return h.cur.Swap(g) }

// Current returns the Gateway new requests use.
func (h *Handler) Current() *Gateway { return h.cur.Load() }

// ServeHTTP serves r with the Gateway current when it arrived.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.cur.Load().ServeHTTP(w, r)
}

// exchange is the state of one request. It embeds the forwarding state
// (proxy.Exchange, the outbound request's context), so a request costs one
// allocation for both.
type exchange struct {
	proxy.Exchange
	rec          recorder
	id           [1]string // X-Request-Id header value
	url          url.URL   // the upstream URL
	g            *Gateway
	ep           *endpoint
	params       route.Params
	start        time.Time
	path         string // escaped upstream path
	rawPath      string // decoded upstream path
	query        string
	status       int
	errCode      string
	ctype        string // Content-Type set by a request transform
	held         int64  // body bytes reserved against g.buffers
	droppedQuery int    // client query parameters left out
	caller       caller.Identity
	limiter      *ratelimit.Limiter // what this request counts against
	spend        spend
	reservation  *ratelimit.Reservation // what the budgets hold for this call until settled; nil: none
	client       ratelimit.Client
	wait         ratelimit.Wait // store time this request's limit calls spent (client.Wait)
	in           *http.Request  // the inbound request, once forwarding started
}

// ServeHTTP is the request path. Every refusal on the way is returned as
// an error and answered in one place (refuse).
func (g *Gateway) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	x := &exchange{g: g, start: g.opts.Now(), rec: recorder{ResponseWriter: rw}}
	w := &x.rec
	x.id[0] = requestID(r)
	w.Header()["X-Request-Id"] = x.id[:]
	// finish runs even when refuse cuts the connection with a panic.
	defer g.finish(w, r, x)
	defer func() {
		if x.held > 0 {
			g.buffers.give(x.held)
		}
	}()
	if err := g.serve(w, r, x); err != nil {
		g.refuse(w, x, err)
	}
	if x.status == 0 {
		x.status = w.status
	}
}

// serve runs the request path: match → CORS → method → rate → params →
// upstream query and path → body → cache or forward.
func (g *Gateway) serve(w *recorder, r *http.Request, x *exchange) error {
	origin := r.Header.Get("Origin")
	// Refuse what a gateway never forwards: absolute-form targets that
	// name another host, CONNECT, TRACE and "OPTIONS *".
	if r.URL.IsAbs() || r.RequestURI == "*" || r.Method == http.MethodConnect || r.Method == http.MethodTrace {
		g.cors.Actual(w.Header(), origin)
		return refused(http.StatusBadRequest, "bad_request", "request target or method not supported")
	}
	escaped := r.URL.EscapedPath()
	if err := route.CheckPath(escaped); err != nil {
		// No route yet: the global CORS policy lets a page read why.
		g.cors.Actual(w.Header(), origin)
		return refused(http.StatusBadRequest, "bad_path", strings.TrimPrefix(err.Error(), route.ErrBadPath.Error()+"\n"))
	}

	if g.callers.exchange != nil && escaped == visitor.Path {
		return g.visitorExchange(w, r, origin)
	}

	router := g.root
	if len(g.hosts) > 0 {
		if hr, ok := g.hosts[strings.ToLower(hostOnly(r.Host))]; ok {
			router = hr
		}
	}
	ep, ok := router.Match(escaped, &x.params)
	if !ok {
		g.cors.Actual(w.Header(), origin)
		return refused(http.StatusNotFound, "not_found", "no route for this path")
	}
	preflight := cors.IsPreflight(r)
	if ep.next != nil {
		// Several routes share the path, one per method.
		if preflight {
			ep = ep.forMethod(r.Header.Get("Access-Control-Request-Method"))
		} else {
			ep = ep.forMethod(r.Method)
		}
	}
	x.ep = ep

	if preflight {
		if ref := ep.cors.Preflight(w.Header(), r, ep.allMethods); ref != nil {
			return refused(http.StatusForbidden, ref.Code, ref.Message)
		}
		x.status = http.StatusNoContent
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	// A request from another origin never reaches the upstream unless the
	// policy allows that origin: a browser hiding the answer would not
	// stop the bill. A page on the gateway's own origin needs no policy.
	if ref := ep.cors.Actual(w.Header(), origin); ref != nil && !cors.SameOrigin(origin, r) {
		return refused(http.StatusForbidden, ref.Code, ref.Message)
	}

	if !ep.allows(r.Method) {
		w.Header()["Allow"] = ep.allow
		return refused(http.StatusMethodNotAllowed, "method_not_allowed", "method "+r.Method+" is not allowed; allowed: "+ep.allow[0])
	}
	if ep.callers != nil {
		if err := g.verifyCaller(w, r, x); err != nil {
			return err
		}
	}
	if x.limiter, x.client = g.limiterFor(r, x); x.limiter != nil {
		x.client.Wait = &x.wait // store_timeout bounds the request's store calls together
		if err := g.limit(w, x, x.limiter.AllowRate(r.Context(), x.client)); err != nil {
			return err
		}
	}
	for i, re := range ep.paramRE {
		if _, v := x.params.At(i); re != nil && !re.MatchString(v) {
			return refused(http.StatusBadRequest, "invalid_param", "path parameter {"+ep.public.Names[i]+"} does not match its pattern")
		}
	}
	var err error
	if x.query, x.droppedQuery, err = ep.outboundQuery(r.URL.RawQuery, x.param); err != nil {
		return refused(http.StatusBadRequest, "invalid_query", err.Error())
	}
	if x.path, x.rawPath, err = ep.upstream.Path(&x.params); err != nil {
		return refused(http.StatusBadRequest, "bad_path", "path parameters do not form a valid upstream path")
	}
	if r.ContentLength > ep.maxBody {
		return refused(http.StatusRequestEntityTooLarge, "body_too_large", "request body exceeds "+strconv.FormatInt(ep.maxBody, 10)+" bytes")
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = http.MaxBytesReader(w, r.Body, ep.maxBody)
	}
	switch {
	case ep.validator != nil || ep.transform != nil && ep.transform.Request != nil || ep.llm != nil:
		if err := g.prepareBody(w, r, x); err != nil {
			return err
		}
	case ep.spends && r.Body != nil && r.Body != http.NoBody:
		// A budget is spent only on a request that will go upstream
		// whole: a body over max_body found while streaming it would cost
		// the budget and an upstream call for nothing.
		body, err := g.readBody(w, r, x, ep.maxBody)
		if err != nil {
			return err
		}
		setBody(r, body)
	}

	if ep.cache != nil {
		g.serveCached(w, r, x)
		// The cache may have answered with a stale entry instead of an
		// upstream error: log what the client got.
		if w.status != 0 {
			x.status = w.status
		}
		return nil
	}
	return g.forward(w, r, x)
}

// forward spends the route's budgets, then sends the request upstream and
// relays the answer. Budgets count what goes upstream: a request refused
// on the way here, or answered from the cache, costs none of them.
func (g *Gateway) forward(w http.ResponseWriter, r *http.Request, x *exchange) error {
	if g.pauses != nil {
		// The kill switch: every instance reads it from the store, so a
		// pause holds within a second without a reload.
		if paused, _ := g.pauses.Paused(r.Context(), x.ep.name); paused {
			return capped(x.ep, "paused", "this route is paused by its operator; try again later")
		}
	}
	if err := g.reserve(w, r, x); err != nil {
		return err
	}
	x.in = r
	x.Begin(r.Context(), x.ep.timeout, x.ep.idleTimeout)
	defer x.End()
	err := g.proxy.Forward(w, g.outboundRequest(r, x), &x.Exchange, x)
	g.settle(x, err)
	if x.SetCookie && x.ep.cache != nil {
		// A cookie in the upstream's trailers arrives after the body.
		cache.DoNotStore(r.Context())
	}
	return err
}

// serveCached answers from the cache or forwards, coalescing concurrent
// misses. What the cache stores is what forward wrote: scrubbed and
// transformed.
func (g *Gateway) serveCached(w http.ResponseWriter, r *http.Request, x *exchange) {
	ep := x.ep
	if ep.vary != "" {
		w.Header().Add("Vary", ep.vary)
	}
	// The key is everything that goes upstream on a miss: path, query as
	// sent, and every header (the cache leaves out the conditional ones it
	// answers itself), so no variant of the answer is served to a request
	// that would have got another.
	key := ep.cache.KeyFor(ep.stage, ep.cacheRoute, x.path, x.query, ep.outboundHeader(r.Header, x), r.Header)
	g.cache.Serve(w, r, key, ep.cache, func(cw http.ResponseWriter, cr *http.Request) {
		if cache.IsRevalidation(cr.Context()) {
			// A background refresh runs after this request has ended: it
			// gets an exchange of its own.
			bx := &exchange{g: g, ep: ep, params: x.params, start: g.opts.Now(),
				path: x.path, rawPath: x.rawPath, query: x.query, client: x.client, limiter: x.limiter, caller: x.caller}
			bx.client.Wait = &bx.wait // its own store time, not the ended request's
			if err := g.forward(cw, cr, bx); err != nil {
				g.refuse(cw, bx, err)
			}
			return
		}
		if err := g.forward(cw, cr, x); err != nil {
			g.refuse(cw, x, err)
		}
	})
}

func (ep *endpoint) allows(m string) bool {
	for _, a := range ep.methods {
		if a == m {
			return true
		}
	}
	return false
}
