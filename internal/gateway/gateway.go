// Package gateway compiles a config into an immutable Gateway and serves
// requests through it. The request path reads top to bottom in
// Gateway.ServeHTTP: path check → match → CORS → method → limits → params
// → query and upstream path → body limit → validation and request
// transform → cache (or forward) → upstream request (secrets last, into
// the outbound request only; the route budget on the way out) → response
// filters (headers, scrubbing, response transform) → access log.
package gateway

import (
	"context"
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
	"github.com/keyward/keyward/internal/clientip"
	"github.com/keyward/keyward/internal/cors"
	"github.com/keyward/keyward/internal/metrics"
	"github.com/keyward/keyward/internal/placeholder"
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
	// Transport sends upstream requests. If nil, NewTransport() is used.
	Transport http.RoundTripper
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
	// LimitStore holds rate-limit and budget state. It outlives reloads so
	// a new config continues the old one's counts. If nil, Compile uses a
	// private memory store.
	LimitStore ratelimit.Store
}

func (o Options) withDefaults() Options {
	if o.Transport == nil {
		o.Transport = NewTransport()
	}
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
	outbound  *outboundPolicy
	clients   *clientip.Resolver
	cache     *cache.Cache // nil when no route caches
	faultLog  atomic.Int64 // unix ns of the last logged store fault
}

// endpoint is one route mounted in one stage, compiled.
type endpoint struct {
	name, stage, host string
	public            *route.Pattern // as written in the route
	pattern           *route.Pattern // with the stage prefix
	paramRE           []*regexp.Regexp
	methods           []string
	allow             []string // prebuilt Allow header value
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
	budget            *ratelimit.Limiter   // route budget of a cached route, checked on misses only
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

// exchange is the per-request state the proxy hooks need. It is also the
// context of the outbound request (it answers Value(exchangeKey{}) with
// itself), which saves an allocation per request over context.WithValue.
type exchange struct {
	context.Context                 // set in forward: cancelled by the client or the timer
	parent          context.Context // the inbound request's context
	rec             recorder
	id              [1]string // X-Request-Id header value
	url             url.URL   // the upstream URL
	g               *Gateway
	ep              *endpoint
	params          route.Params
	start           time.Time
	upStart         time.Time
	upDur           time.Duration
	path            string // escaped upstream path
	rawPath         string // decoded upstream path
	query           string
	timer           *time.Timer
	cancel          context.CancelCauseFunc
	status          int
	errCode         string
	ctype           string        // Content-Type set by a request transform
	in              *http.Request // the inbound request, once forwarding started
	// streaming is set once the upstream's headers arrived; the timer then
	// guards the body's idle time instead of the wait for headers.
	streaming atomic.Bool
}

type exchangeKey struct{}

// clientGone reports whether the inbound request's own context ended (the
// client went away), as opposed to the exchange's timer firing.
func (x *exchange) clientGone() bool { return x.in != nil && x.parent.Err() != nil }

// Value returns the exchange for exchangeKey and asks the parent otherwise.
func (x *exchange) Value(key any) any {
	if key == (exchangeKey{}) {
		return x
	}
	return x.Context.Value(key)
}

// Cancel causes of an exchange, so the error handler can tell a timeout
// from a client that went away.
var (
	// errUpstreamTimeout: the upstream's headers took longer than the
	// route's timeout.
	errUpstreamTimeout = errors.New("upstream response timeout")
	// errUpstreamStalled: the upstream's body was silent for longer than
	// the route's idle_timeout.
	errUpstreamStalled = errors.New("upstream response body stalled")
)

// ServeHTTP is the request path.
func (g *Gateway) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	x := &exchange{g: g, start: g.opts.Now(), rec: recorder{ResponseWriter: rw}}
	w := &x.rec
	x.id[0] = requestID(r)
	id := x.id[0]
	w.Header()["X-Request-Id"] = x.id[:]
	defer func() {
		// proxy aborts the response with http.ErrAbortHandler when the
		// upstream body fails mid-way (reset, stalled past idle_timeout),
		// so the client sees a broken response, never a clean truncated one.
		// Log it as such, then let the server abort the connection.
		if p := recover(); p != nil {
			if x.status != 499 {
				x.errCode = "response_aborted"
			}
			g.finish(w, r, x, id)
			panic(p)
		}
		g.finish(w, r, x, id)
	}()

	// Refuse what a gateway never forwards: absolute-form targets that
	// name another host, CONNECT, TRACE and "OPTIONS *".
	if r.URL.IsAbs() || r.RequestURI == "*" || r.Method == http.MethodConnect || r.Method == http.MethodTrace {
		g.cors.Actual(w.Header(), r.Header.Get("Origin"))
		g.fail(w, x, http.StatusBadRequest, "bad_request", "request target or method not supported")
		return
	}
	escaped := r.URL.EscapedPath()
	if err := route.CheckPath(escaped); err != nil {
		// No route yet: the global CORS policy lets a page read why.
		g.cors.Actual(w.Header(), r.Header.Get("Origin"))
		g.fail(w, x, http.StatusBadRequest, "bad_path", strings.TrimPrefix(err.Error(), route.ErrBadPath.Error()+"\n"))
		return
	}

	router := g.root
	if len(g.hosts) > 0 {
		if hr, ok := g.hosts[strings.ToLower(hostOnly(r.Host))]; ok {
			router = hr
		}
	}
	ep, ok := router.Match(escaped, &x.params)
	if !ok {
		g.cors.Actual(w.Header(), r.Header.Get("Origin"))
		g.fail(w, x, http.StatusNotFound, "not_found", "no route for this path")
		return
	}
	x.ep = ep

	if cors.IsPreflight(r) {
		if ref := ep.cors.Preflight(w.Header(), r, ep.methods); ref != nil {
			g.fail(w, x, http.StatusForbidden, ref.Code, ref.Message)
			return
		}
		x.status = http.StatusNoContent
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if ref := ep.cors.Actual(w.Header(), r.Header.Get("Origin")); ref != nil {
		g.fail(w, x, http.StatusForbidden, ref.Code, ref.Message)
		return
	}

	if !ep.allows(r.Method) {
		w.Header()["Allow"] = ep.allow
		g.fail(w, x, http.StatusMethodNotAllowed, "method_not_allowed", "method "+r.Method+" is not allowed; allowed: "+ep.allow[0])
		return
	}
	if ep.limiter != nil && !g.allowed(w, r, x, ep.limiter) {
		return
	}
	for i, re := range ep.paramRE {
		if _, v := x.params.At(i); re != nil && !re.MatchString(v) {
			g.fail(w, x, http.StatusBadRequest, "invalid_param", "path parameter {"+ep.public.Names[i]+"} does not match its pattern")
			return
		}
	}
	var err error
	if x.query, err = ep.outboundQuery(r.URL.RawQuery, &x.params); err != nil {
		g.fail(w, x, http.StatusBadRequest, "invalid_query", err.Error())
		return
	}
	if x.path, x.rawPath, err = ep.upstream.Path(&x.params); err != nil {
		g.fail(w, x, http.StatusBadRequest, "bad_path", "path parameters do not form a valid upstream path")
		return
	}
	if r.ContentLength > ep.maxBody {
		g.fail(w, x, http.StatusRequestEntityTooLarge, "body_too_large", "request body exceeds "+strconv.FormatInt(ep.maxBody, 10)+" bytes")
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = g.slowBodyGuard(w, http.MaxBytesReader(w, r.Body, ep.maxBody))
	}
	if ep.validator != nil || ep.transform != nil && ep.transform.Request != nil {
		if !g.prepareBody(w, r, x) {
			return
		}
	}

	if ep.cache != nil {
		g.serveCached(w, r, x)
		// The cache may have answered with a stale entry instead of an
		// upstream error: log what the client got.
		if w.status != 0 {
			x.status = w.status
		}
	} else {
		g.forward(w, r, x)
	}
	if x.status == 0 {
		x.status = w.status
	}
}

// forward sends the request upstream and relays the answer.
func (g *Gateway) forward(w http.ResponseWriter, r *http.Request, x *exchange) {
	if x.ep.budget != nil && !g.allowed(w, r, x, x.ep.budget) {
		return
	}
	x.parent = r.Context()
	ctx, cancel := context.WithCancelCause(x.parent)
	x.cancel = cancel
	x.timer = time.AfterFunc(x.ep.timeout, func() {
		if x.streaming.Load() {
			cancel(errUpstreamStalled)
			return
		}
		cancel(errUpstreamTimeout)
	})
	defer func() {
		x.timer.Stop()
		cancel(nil)
	}()
	x.upStart = g.opts.Now()
	x.Context = ctx
	x.in = r
	g.proxy(w, r, x)
}

// serveCached answers from the cache or forwards, coalescing concurrent
// misses. What the cache stores is what forward wrote: scrubbed and
// transformed.
func (g *Gateway) serveCached(w http.ResponseWriter, r *http.Request, x *exchange) {
	ep := x.ep
	if ep.vary != "" {
		w.Header().Add("Vary", ep.vary)
	}
	var query url.Values // nil without a query: parsing "" still allocates
	if r.URL.RawQuery != "" {
		query = ep.allowedQuery(r)
	}
	key := ep.cache.Key(ep.stage, ep.cacheRoute, x.path, query, r.Header)
	g.cache.Serve(w, r, key, ep.cache, func(cw http.ResponseWriter, cr *http.Request) {
		if cache.IsRevalidation(cr.Context()) {
			// A background refresh runs after this request has ended: it
			// gets an exchange of its own.
			g.forward(cw, cr, &exchange{g: g, ep: ep, params: x.params, start: g.opts.Now(),
				path: x.path, rawPath: x.rawPath, query: x.query})
			return
		}
		g.forward(cw, cr, x)
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
