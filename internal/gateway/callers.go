package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/caller/apikey"
	"github.com/keyward/keyward/internal/caller/jwt"
	"github.com/keyward/keyward/internal/caller/visitor"
	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/cors"
	"github.com/keyward/keyward/internal/ratelimit"
	"github.com/keyward/keyward/internal/secret"
)

// callerKinds are the compiled `callers:` of one config.
type callerKinds struct {
	verifiers map[string]caller.Verifier
	sources   map[string]caller.Source // where each kind reads its credential
	exchange  *visitor.Exchange        // POST /_keyward/visitor; nil without visitors
	files     []*apikey.File           // keys files, flushed on shutdown
}

// callers compiles the caller kinds. A kind is built even when it has
// problems elsewhere in the config, so that every problem is reported.
func (c *compiler) callers(cfg *config.Config, g *Gateway) *callerKinds {
	ck := &callerKinds{verifiers: map[string]caller.Verifier{}, sources: map[string]caller.Source{}}
	env := caller.Env{
		Secret: func(name string) (secret.Value, bool) {
			c.used[name] = true
			v, ok := c.secrets[name]
			return v, ok
		},
		Transport: g.outbound,
		Now:       c.opts.Now,
		Dir:       c.dir(),
	}
	var exchanges []*visitor.Exchange
	for _, kind := range sortedKeys(cfg.Callers) {
		k := cfg.Callers[kind]
		path := "callers." + kind
		if !placeholderName(kind) {
			c.errorf(path, "bad caller kind %q: use letters, digits, _ and -", kind)
			continue
		}
		n := 0
		for _, set := range []bool{k.JWT != nil, k.APIKeys != nil, k.Visitor != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			c.errorf(path, "set exactly one of jwt, api_keys or visitor")
			continue
		}
		report := func(probs []caller.Problem) bool {
			for _, p := range probs {
				c.errorf(path+"."+p.Path, "%s", p.Msg)
			}
			return len(probs) == 0
		}
		switch {
		case k.JWT != nil:
			v, probs := jwt.Compile(kind, *k.JWT, env)
			if report(probs) {
				ck.verifiers[kind], ck.sources[kind] = v, v.Source()
			}
		case k.APIKeys != nil && redisStore(cfg.Store):
			// With Redis the keys live there only (docs/CALLERS.md says why).
			if k.APIKeys.Keys != "" {
				c.warnf(path+".api_keys.keys", "not read: with a Redis store the API keys are in Redis (keyward keys import copies a file's keys there)")
			}
			store := g.opts.KeyStore
			if store == nil {
				store = apikey.NoStore{}
			}
			v, probs := apikey.CompileStore(kind, *k.APIKeys, env, store)
			if report(probs) {
				ck.verifiers[kind], ck.sources[kind] = v, v.Source()
			}
		case k.APIKeys != nil:
			v, f, probs := apikey.Compile(kind, *k.APIKeys, env, func(err error) {
				g.opts.Logger.Warn("keys file", slogString("kind", kind), slogString("error", err.Error()))
			})
			if report(probs) {
				ck.verifiers[kind], ck.sources[kind] = v, v.Source()
				ck.files = append(ck.files, f)
			}
		case k.Visitor != nil:
			o, probs := visitor.Compile(kind, *k.Visitor, env)
			if !report(probs) {
				continue
			}
			o.ClientKey = func(r *http.Request) string { return g.client(r).Key }
			o.FailureLimit = g.visitorFailures(kind)
			o.OnResult = func(r *http.Request, via string, err error) {
				if err != nil && g.opts.Metrics != nil {
					g.opts.Metrics.AuthFailure(visitor.Path, kind, string(caller.ReasonOf(err)))
				}
			}
			v, x, err := visitor.New(o)
			if err != nil {
				c.errorf(path+".visitor", "%v", err)
				continue
			}
			ck.verifiers[kind], ck.sources[kind] = v, v.Source()
			exchanges = append(exchanges, x)
		}
	}
	switch len(exchanges) {
	case 0:
	case 1:
		ck.exchange = exchanges[0]
	default:
		// One exchange endpoint: its tokens would not say which kind
		// minted them.
		c.errorf("callers", "at most one visitor kind: POST %s mints the tokens of one", visitor.Path)
	}
	return ck
}

// redisStore reports whether the `store:` setting names Redis, the rule
// the server and `keyward keys` use.
func redisStore(store string) bool { return store != "" && store != "memory" }

// visitorFailures limits failed visitor exchanges per client address, so
// the exchange cannot be used to test stolen or forged proofs at speed:
// 10 failures a minute, a burst of 5.
func (g *Gateway) visitorFailures(kind string) func(ctx context.Context, key string) (bool, time.Duration) {
	l, err := ratelimit.New(ratelimit.Options{Name: "visitor-exchange/" + kind, Rate: ratelimit.Rate{Count: 10, Per: time.Minute},
		Burst: 5, Store: g.opts.LimitStore, Now: g.opts.Now, OnFault: func(err error) { g.StoreFault("ratelimit", err) }})
	if err != nil {
		return nil
	}
	return func(ctx context.Context, key string) (bool, time.Duration) {
		res := l.AllowRate(ctx, ratelimit.Client{Key: key})
		return res.Allowed, res.Rate.RetryAfter
	}
}

func placeholderName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return s != ""
}

// routeCallers compiles a route's `callers:` list.
func (c *compiler) routeCallers(path string, rc *config.Route, ep *endpoint, ck *callerKinds) {
	if len(rc.Callers) == 0 {
		if rc.Fallback != nil {
			c.errorf(path+".fallback", "a fallback is for callers without a credential: list the route's callers too")
		}
		return
	}
	var vs []caller.Verifier
	for i, kind := range rc.Callers {
		v, ok := ck.verifiers[kind]
		if !ok {
			if _, defined := c.f.Config.Callers[kind]; !defined {
				c.errorf(fmt.Sprintf("%s.callers[%d]", path, i), "unknown caller kind %q (defined: %s)", kind, strings.Join(sortedKeys(c.f.Config.Callers), ", "))
			}
			continue
		}
		vs = append(vs, v)
		src := ck.sources[kind]
		if h := src.HeaderName(); h != "" && !slices.Contains(ep.credentialHeaders, h) {
			ep.credentialHeaders = append(ep.credentialHeaders, h)
		}
		if q := src.Query(); q != "" && ep.queryAllow[q] {
			// The credential would go upstream with the other allowed
			// parameters; the config would have to say so explicitly.
			c.errorf(path+".query.allow", "%q carries the %s callers' token: it must not go upstream", q, kind)
		}
	}
	ep.callers = caller.Any(vs...)
	ep.callerKinds = strings.Join(rc.Callers, "+")
}

// verifyCaller checks who the request comes from, before any limit,
// validation or upstream call. A request without any credential is let
// through under the route's fallback limits, if it has them.
func (g *Gateway) verifyCaller(w http.ResponseWriter, r *http.Request, x *exchange) error {
	ep := x.ep
	addr := g.client(r).Key
	if until := g.authGuard.blocked(addr); !until.IsZero() {
		w.Header()["Retry-After"] = []string{strconv.Itoa(max(1, int(until.Sub(g.opts.Now()).Seconds()+1)))}
		return refused(http.StatusTooManyRequests, "rate_limited", "too many requests with bad credentials; retry after the time in Retry-After")
	}
	id, err := ep.callers.Verify(r.Context(), r)
	if err != nil {
		reason := caller.ReasonOf(err)
		if reason == caller.Missing && ep.fallback != nil {
			x.caller = caller.Identity{Kind: fallbackKind}
			return nil
		}
		if reason != caller.Missing && reason != caller.StoreFailed {
			g.authGuard.failed(addr)
		}
		if m := g.opts.Metrics; m != nil {
			m.AuthFailure(ep.name, ep.callerKinds, string(reason))
		}
		var ce *caller.Error
		status := http.StatusUnauthorized
		if errors.As(err, &ce) {
			status = ce.Status()
		}
		if status == http.StatusServiceUnavailable {
			// The key store (Redis) could not be read: the key may be good,
			// and is refused, never let in; the caller should retry.
			return &refusal{status: status, code: "store_unavailable", msg: "callers cannot be checked right now; try again shortly",
				cause: err, logMsg: "caller store unavailable", level: slog.LevelWarn}
		}
		if status == http.StatusForbidden {
			return &refusal{status: status, code: "forbidden", msg: "the caller is not allowed to use this route",
				cause: err, logMsg: "caller refused", level: slog.LevelInfo}
		}
		if reason != caller.Missing {
			// RFC 6750 section 3.1: a token was sent and is not good.
			w.Header()["Www-Authenticate"] = invalidToken
		} else {
			w.Header()["Www-Authenticate"] = bearer
		}
		return &refusal{status: status, code: "unauthenticated", msg: "this route needs a verified caller: " + string(reason) + " credential",
			cause: err, logMsg: "caller refused", level: slog.LevelInfo}
	}
	// What the config writes upstream ({caller.id}, {caller.claim.X}) is
	// checked like a path parameter: one line, bounded.
	for _, name := range ep.callerFields {
		if v := callerValue(&id, name); !plainValue(v) {
			return &refusal{status: http.StatusUnauthorized, code: "unauthenticated", msg: "the caller's " + name + " cannot be sent upstream",
				cause: fmt.Errorf("caller %s has control characters or is over %d bytes", name, maxCallerValue), logMsg: "caller refused", level: slog.LevelInfo}
		}
	}
	x.caller = id
	return nil
}

// fallbackKind is the caller kind of a request let through under a
// route's fallback limits.
const fallbackKind = "anonymous"

var (
	invalidToken = []string{`Bearer error="invalid_token"`}
	bearer       = []string{"Bearer"}
)

// maxCallerValue bounds a caller value written upstream.
const maxCallerValue = 1024

func plainValue(v string) bool {
	if len(v) > maxCallerValue {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// callerValue is the value of a {caller.*} placeholder name ("caller.id",
// "caller.kind", "caller.claim.NAME"): a claim that is not a string is
// written as JSON.
func callerValue(id *caller.Identity, name string) string {
	switch name {
	case "caller.id":
		return id.ID
	case "caller.kind":
		return id.Kind
	}
	claim, _ := strings.CutPrefix(name, "caller.claim.")
	switch v := id.Claims[claim].(type) {
	case nil:
		return ""
	case string:
		return v
	case json.Number:
		return v.String()
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// callerKey is whom per-caller limits count: the kind and a hash of the
// id (ids can be long, and need not sit in the store as written).
func callerKey(id *caller.Identity) string {
	sum := sha256.Sum256([]byte(id.Kind + "\x00" + id.ID))
	return "caller:" + id.Kind + ":" + hex.EncodeToString(sum[:12])
}

// callerHash is the short hash of a caller id for the access log.
func callerHash(id *caller.Identity) string {
	if id.ID == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(id.Kind + "\x00" + id.ID))
	return hex.EncodeToString(sum[:6])
}

// planLimiters are the limiters of API keys that carry their own plan,
// made on first use: a plan replaces the route's per-caller rate and
// client budget; the route's budget still applies to all callers.
type planLimiters struct {
	mu    sync.Mutex
	base  ratelimit.Options
	by    map[caller.Plan]*ratelimit.Limiter
	onErr func(error)
}

func (p *planLimiters) get(plan caller.Plan) *ratelimit.Limiter {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.by[plan]; ok {
		return l
	}
	o := p.base
	if !plan.Rate.IsZero() {
		o.Rate, o.Burst = plan.Rate, max(plan.Burst, 1)
	}
	if !plan.Budget.IsZero() {
		o.ClientBudget = plan.Budget
	}
	l, err := ratelimit.New(o)
	if err != nil {
		// A plan the keys file accepted but the limiter refuses: the
		// route's own limits apply, and the operator hears of it.
		p.onErr(fmt.Errorf("API key plan: %w", err))
		return nil
	}
	if p.by == nil {
		p.by = map[caller.Plan]*ratelimit.Limiter{}
	}
	p.by[plan] = l
	return l
}

// limiterFor returns the limiter and the client key the request counts
// against: the fallback's for a request without a credential, an API
// key's plan, or the route's; per caller or per address as `per` says.
func (g *Gateway) limiterFor(r *http.Request, x *exchange) (*ratelimit.Limiter, ratelimit.Client) {
	ep := x.ep
	if x.caller.Kind == fallbackKind {
		return ep.fallback, g.client(r)
	}
	l := ep.limiter
	if l == nil {
		return nil, ratelimit.Client{}
	}
	if plan := x.caller.Limits; plan != nil && ep.plans != nil {
		if pl := ep.plans.get(*plan); pl != nil {
			l = pl
		}
	}
	if ep.perCaller && x.caller.Kind != "" {
		return l, ratelimit.Client{Key: callerKey(&x.caller)}
	}
	return l, g.client(r)
}

// callerKindsUsed lists the placeholder names a route's templates fill
// from the caller, so verifyCaller checks exactly those values.
func callerFields(ep *endpoint) []string {
	var out []string
	add := func(names ...string) {
		for _, n := range names {
			if !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	for _, hs := range ep.headerSet {
		add(hs.value.CallerNames()...)
	}
	for _, qs := range ep.querySet {
		add(qs.value.CallerNames()...)
	}
	sort.Strings(out)
	return out
}

// visitorExchange answers POST /_keyward/visitor: a page or app trades a
// Turnstile or App Check proof for a short-lived visitor token. CORS is the
// gateway's global policy (the page that asks is the page that calls).
func (g *Gateway) visitorExchange(w http.ResponseWriter, r *http.Request, origin string) error {
	if cors.IsPreflight(r) {
		if ref := g.cors.Preflight(w.Header(), r, postOnly); ref != nil {
			return refused(http.StatusForbidden, ref.Code, ref.Message)
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	if ref := g.cors.Actual(w.Header(), origin); ref != nil && !cors.SameOrigin(origin, r) {
		return refused(http.StatusForbidden, ref.Code, ref.Message)
	}
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, maxVisitorBody)
	}
	g.callers.exchange.ServeHTTP(w, r)
	return nil
}

var postOnly = []string{"POST"}

// maxVisitorBody bounds the exchange's JSON body: a Turnstile token is
// at most 2 KiB.
const maxVisitorBody = 8 << 10

// param is the value of a template's parameter: a path parameter, or the
// caller's id, kind or claim.
func (x *exchange) param(name string) string {
	if strings.HasPrefix(name, "caller.") {
		return callerValue(&x.caller, name)
	}
	return x.params.Get(name)
}

// authGuard holds off an address that keeps presenting bad credentials.
// Each failed check of a forged token costs a signature verification
// (0.1-0.2 ms of CPU for RSA or ECDSA): a flood of them is a cheap way to
// burn the gateway's CPU, and the route's own limits, which count per
// verified caller, come after the check. An address with more than
// authFailLimit failures in a minute is refused with 429 before its
// credential is looked at, for the rest of that minute. It is per
// instance, as the CPU it protects is.
type authGuard struct {
	mu  sync.Mutex
	now func() time.Time
	m   map[string]*authFails
}

type authFails struct {
	start, until time.Time
	n            int
}

const (
	authFailLimit  = 20
	authFailWindow = time.Minute
	// authGuardCap bounds the addresses remembered; past it, expired ones
	// are swept, and if that is not enough the oldest memory is dropped.
	authGuardCap = 100_000
)

// blocked reports until when key is held off, or the zero time.
func (a *authGuard) blocked(key string) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	if f := a.m[key]; f != nil && a.now().Before(f.until) {
		return f.until
	}
	return time.Time{}
}

// failed counts a failed check for key.
func (a *authGuard) failed(key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if a.m == nil {
		a.m = map[string]*authFails{}
	}
	f := a.m[key]
	if f == nil || now.Sub(f.start) > authFailWindow {
		if len(a.m) >= authGuardCap {
			a.sweep(now)
		}
		f = &authFails{start: now}
		a.m[key] = f
	}
	f.n++
	if f.n > authFailLimit {
		f.until = f.start.Add(authFailWindow)
	}
}

func (a *authGuard) sweep(now time.Time) {
	for k, f := range a.m {
		if now.Sub(f.start) > authFailWindow && !now.Before(f.until) {
			delete(a.m, k)
		}
	}
	if len(a.m) >= authGuardCap {
		clear(a.m)
	}
}
