package visitor

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/caller/jwt"
	"github.com/keyward/keyward/internal/secret"
)

// Path is where the gateway mounts the exchange.
const Path = "/_keyward/visitor"

// AppCheckHeader carries a Firebase App Check token.
const AppCheckHeader = "X-Firebase-AppCheck"

// Public endpoints, replaced in tests and private deployments.
const (
	DefaultVerifyURL    = "https://challenges.cloudflare.com/turnstile/v0/siteverify"
	DefaultAppCheckJWKS = "https://firebaseappcheck.googleapis.com/v1/jwks"
)

// Bounds of an exchange.
const (
	// MaxTurnstileToken is the longest Turnstile token Cloudflare issues
	// (its documentation: "up to 2048 characters").
	MaxTurnstileToken = 2048
	// maxBody bounds the JSON body of an exchange.
	maxBody = 8 << 10
	// maxVerifyAnswer bounds siteverify's answer.
	maxVerifyAnswer = 64 << 10
	// turnstileValidity is how long Cloudflare accepts a token (300 s):
	// a token older than that is refused, and a used one is remembered
	// that long.
	turnstileValidity = 5 * time.Minute
	// DefaultTTL is a visitor token's default lifetime.
	DefaultTTL = 15 * time.Minute
	// DefaultVerifyTimeout bounds one siteverify call.
	DefaultVerifyTimeout = 10 * time.Second
	// maxUsed bounds the remembered Turnstile tokens of one instance.
	maxUsed = 100_000
)

// TurnstileOptions configure the Turnstile check.
type TurnstileOptions struct {
	// Secret is the widget's secret key. Required.
	Secret secret.Value
	// Hostnames lists the sites the widget may have run on (siteverify's
	// hostname). Required.
	Hostnames []string
	// Action, when set, must equal siteverify's action.
	Action string
	// VerifyURL replaces DefaultVerifyURL.
	VerifyURL string
}

// AppCheckOptions configure the App Check check.
type AppCheckOptions struct {
	// ProjectNumber is the Firebase project number. Required.
	ProjectNumber string
	// AppIDs, when set, lists the accepted app ids (the token's sub).
	AppIDs []string
	// JWKS replaces DefaultAppCheckJWKS.
	JWKS string
}

// Options configure visitors of one caller kind.
type Options struct {
	// Kind is the caller kind, copied into every Identity.
	Kind string
	// SigningKey signs visitor tokens; at least MinKeyBytes. Required.
	SigningKey secret.Value
	// TTL is a visitor token's lifetime. Zero means DefaultTTL.
	TTL time.Duration
	// Turnstile and AppCheck are the proofs accepted; at least one.
	Turnstile *TurnstileOptions
	AppCheck  *AppCheckOptions
	// Transport sends siteverify calls and App Check JWKS fetches; the
	// gateway passes its outbound policy. Nil means http.DefaultTransport.
	Transport http.RoundTripper
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Random makes visitor ids. Nil means crypto/rand.Reader.
	Random io.Reader
	// ClientKey names the client an exchange comes from, for FailureLimit
	// (the gateway passes its client-address key). Nil means the peer
	// address.
	ClientKey func(r *http.Request) string
	// FailureLimit counts one failed exchange for key and reports whether
	// key is still within its allowance; a false answer turns the refusal
	// into 429, and the exchange then refuses key's next attempts for
	// retryAfter without checking their proofs (no siteverify call, no
	// JWKS work). Nil means failures are not limited.
	FailureLimit func(ctx context.Context, key string) (ok bool, retryAfter time.Duration)
	// OnResult, when set, is told of every exchange it checks (not those
	// refused unchecked for FailureLimit): how it was proven
	// ("turnstile", "app_check", or "" when no proof was found) and the
	// error (nil on success). Its errors never quote a token.
	OnResult func(r *http.Request, via string, err error)
}

// Exchange is the http.Handler of POST /_keyward/visitor.
type Exchange struct {
	o         Options
	signer    *signer
	turnstile *TurnstileOptions
	client    *http.Client
	appCheck  *jwt.Verifier
	appIDs    []string
	used      usedSet
	blocked   blockedSet // addresses over FailureLimit, refused before any check
}

// New builds the Verifier of visitor tokens and the Exchange that mints
// them. It opens no connection.
func New(o Options) (*Verifier, *Exchange, error) {
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.TTL < time.Minute || o.TTL > 24*time.Hour {
		return nil, nil, fmt.Errorf("ttl %s: want between 1m and 24h", o.TTL)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Random == nil {
		o.Random = rand.Reader
	}
	if o.ClientKey == nil {
		o.ClientKey = peer
	}
	s, err := newSigner(o.SigningKey, o.TTL)
	if err != nil {
		return nil, nil, err
	}
	if o.Turnstile == nil && o.AppCheck == nil {
		return nil, nil, errors.New("set turnstile, app_check or both")
	}
	x := &Exchange{o: o, signer: s, used: usedSet{m: map[[32]byte]time.Time{}}}
	transport := o.Transport
	if transport == nil {
		transport = http.DefaultTransport
	}
	if t := o.Turnstile; t != nil {
		if t.Secret.Reveal() == "" {
			return nil, nil, errors.New("turnstile: secret is required")
		}
		if len(t.Hostnames) == 0 {
			return nil, nil, errors.New("turnstile: hostnames is required: a token solved on another site must not pass")
		}
		tc := *t
		if tc.VerifyURL == "" {
			tc.VerifyURL = DefaultVerifyURL
		}
		if err := jwt.CheckURL(tc.VerifyURL); err != nil {
			return nil, nil, fmt.Errorf("turnstile: verify_url: %w", err)
		}
		x.turnstile = &tc
		x.client = &http.Client{
			Transport:     transport,
			Timeout:       DefaultVerifyTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if a := o.AppCheck; a != nil {
		if a.ProjectNumber == "" || strings.Trim(a.ProjectNumber, "0123456789") != "" {
			return nil, nil, fmt.Errorf("app_check: project_number %q: want the project number (digits), not the project id", a.ProjectNumber)
		}
		jwks := a.JWKS
		if jwks == "" {
			jwks = DefaultAppCheckJWKS
		}
		// https://firebase.google.com/docs/app-check/custom-resource-backend
		v, err := jwt.New(jwt.Options{
			Kind:       o.Kind,
			Issuer:     "https://firebaseappcheck.googleapis.com/" + a.ProjectNumber,
			Audience:   []string{"projects/" + a.ProjectNumber},
			JWKS:       jwks,
			Algorithms: []string{"RS256"},
			From:       caller.Header(AppCheckHeader),
			Transport:  transport,
			Now:        o.Now,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("app_check: %w", err)
		}
		x.appCheck = v
		x.appIDs = a.AppIDs
	}
	v := &Verifier{kind: o.Kind, signer: s, now: o.Now}
	v.claims[viaTurnstile] = claimsFor("turnstile")
	v.claims[viaAppCheck] = claimsFor("app_check")
	return v, x, nil
}

func peer(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// Grant is a successful exchange's answer.
type Grant struct {
	Token     string `json:"token"`
	ExpiresIn int64  `json:"expires_in"`
}

// ErrUnavailable is the cause when the attestation service could not be
// asked (siteverify down, App Check keys unreachable): not the visitor's
// fault, so it is neither 401 nor counted as a failure.
var ErrUnavailable = errors.New("the attestation service is unavailable")

// Mint checks the request's proof and returns a visitor token, and how
// the visitor proved itself. Its errors are *caller.Error, or wrap
// ErrUnavailable.
func (x *Exchange) Mint(r *http.Request) (Grant, string, error) {
	ctx := r.Context()
	if x.appCheck != nil && len(r.Header.Values(AppCheckHeader)) > 0 {
		g, err := x.mintAppCheck(ctx, r)
		return g, "app_check", err
	}
	if x.turnstile != nil {
		tok, err := turnstileToken(r)
		if err != nil {
			return Grant{}, "", err
		}
		g, err := x.mintTurnstile(ctx, tok)
		return g, "turnstile", err
	}
	return Grant{}, "", caller.Errorf(caller.Missing, errors.New("no accepted proof: send an "+AppCheckHeader+" header"))
}

func (x *Exchange) mintAppCheck(ctx context.Context, r *http.Request) (Grant, error) {
	id, err := x.appCheck.Verify(ctx, r)
	if err != nil {
		if caller.ReasonOf(err) == caller.JWKSUnavailable {
			return Grant{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return Grant{}, err
	}
	if len(x.appIDs) > 0 && !slices.Contains(x.appIDs, id.ID) {
		return Grant{}, caller.Errorf(caller.ClaimFailed, fmt.Errorf("app %q is not in app_ids", id.ID))
	}
	// The same App Check token always yields the same visitor id: an app
	// that re-exchanges its cached token keeps its id, and a client that
	// wants a fresh id (to dodge its limits) needs a fresh attestation.
	tok, _ := caller.Header(AppCheckHeader).Token(r)
	sum := sha256.Sum256([]byte(tok))
	var vid [idBytes]byte
	var mac [sha256.Size]byte
	copy(vid[:], x.signer.mac(mac[:0], []byte("app_check visitor id"), sum[:]))
	return x.grant(viaAppCheck, vid), nil
}

// turnstileToken reads {"turnstile":"TOKEN"} from the body.
func turnstileToken(r *http.Request) (string, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return "", caller.Errorf(caller.Malformed, errors.New("want a JSON body"))
		}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return "", caller.Errorf(caller.Malformed, fmt.Errorf("reading the body: %w", err))
	}
	if len(body) > maxBody {
		return "", caller.Errorf(caller.TooLarge, nil)
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return "", caller.Errorf(caller.Missing, errors.New(`no proof: send {"turnstile":"TOKEN"}`))
	}
	var req struct {
		Turnstile *string `json:"turnstile"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return "", caller.Errorf(caller.Malformed, errors.New(`want {"turnstile":"TOKEN"}`))
	}
	switch {
	case req.Turnstile == nil:
		return "", caller.Errorf(caller.Missing, errors.New(`no proof: send {"turnstile":"TOKEN"}`))
	case *req.Turnstile == "":
		return "", caller.Errorf(caller.Malformed, errors.New("empty turnstile token"))
	case len(*req.Turnstile) > MaxTurnstileToken:
		return "", caller.Errorf(caller.TooLarge, nil)
	}
	return *req.Turnstile, nil
}

// siteverify's answer (https://developers.cloudflare.com/turnstile/get-started/server-side-validation/).
type verifyAnswer struct {
	Success     bool     `json:"success"`
	ChallengeTS string   `json:"challenge_ts"`
	Hostname    string   `json:"hostname"`
	Action      string   `json:"action"`
	ErrorCodes  []string `json:"error-codes"`
}

func (x *Exchange) mintTurnstile(ctx context.Context, tok string) (Grant, error) {
	now := x.o.Now()
	sum := sha256.Sum256([]byte(tok))
	// Marked used before asking, so two concurrent exchanges of one token
	// cannot both pass; a token that fails stays marked, since Cloudflare
	// would refuse it again anyway.
	if ok, full := x.used.claim(sum, now, now.Add(turnstileValidity)); !ok {
		if full {
			return Grant{}, fmt.Errorf("%w: too many recent exchanges", ErrUnavailable)
		}
		return Grant{}, caller.Errorf(caller.Replayed, nil)
	}
	// remoteip is left out: behind a proxy the peer is not the visitor,
	// and Cloudflare does not need it.
	form := url.Values{"secret": {x.turnstile.Secret.Reveal()}, "response": {tok}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, x.turnstile.VerifyURL, strings.NewReader(form.Encode()))
	if err != nil {
		return Grant{}, fmt.Errorf("%w: building the siteverify request", ErrUnavailable)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := x.client.Do(req)
	if err != nil {
		// The error names the URL, never the form (secret and token).
		return Grant{}, fmt.Errorf("%w: siteverify: %w", ErrUnavailable, scrubURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Grant{}, fmt.Errorf("%w: siteverify answered %d", ErrUnavailable, resp.StatusCode)
	}
	var ans verifyAnswer
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxVerifyAnswer))
	if err != nil || json.Unmarshal(body, &ans) != nil {
		return Grant{}, fmt.Errorf("%w: siteverify's answer is not JSON", ErrUnavailable)
	}
	switch {
	case !ans.Success:
		if slices.Contains(ans.ErrorCodes, "timeout-or-duplicate") {
			return Grant{}, caller.Errorf(caller.Replayed, errors.New("siteverify: timeout-or-duplicate"))
		}
		if slices.ContainsFunc(ans.ErrorCodes, func(c string) bool { return strings.HasSuffix(c, "-secret") || c == "internal-error" }) {
			// Our secret is wrong, or Cloudflare failed: not the visitor's fault.
			return Grant{}, fmt.Errorf("%w: siteverify: %s", ErrUnavailable, codes(ans.ErrorCodes))
		}
		return Grant{}, caller.Errorf(caller.Attestation, fmt.Errorf("siteverify: %s", codes(ans.ErrorCodes)))
	case !slices.ContainsFunc(x.turnstile.Hostnames, func(h string) bool { return strings.EqualFold(h, ans.Hostname) }):
		return Grant{}, caller.Errorf(caller.Attestation, fmt.Errorf("solved on host %s, not an allowed hostname", quoteShort(ans.Hostname)))
	case x.turnstile.Action != "" && ans.Action != x.turnstile.Action:
		return Grant{}, caller.Errorf(caller.Attestation, fmt.Errorf("action %s, want %q", quoteShort(ans.Action), x.turnstile.Action))
	}
	if ts, err := time.Parse(time.RFC3339, ans.ChallengeTS); err == nil && now.Sub(ts) > turnstileValidity {
		return Grant{}, caller.Errorf(caller.Expired, errors.New("challenge older than 5 minutes"))
	}
	var vid [idBytes]byte
	if _, err := io.ReadFull(x.o.Random, vid[:]); err != nil {
		return Grant{}, fmt.Errorf("%w: reading random bytes: %w", ErrUnavailable, err)
	}
	return x.grant(viaTurnstile, vid), nil
}

func (x *Exchange) grant(via byte, vid [idBytes]byte) Grant {
	exp := x.o.Now().Add(x.signer.ttl).Truncate(time.Second)
	return Grant{Token: x.signer.mint(via, vid, exp), ExpiresIn: int64(x.signer.ttl / time.Second)}
}

// codes lists siteverify's error codes for a log, bounded.
func codes(cs []string) string {
	if len(cs) > 5 {
		cs = cs[:5]
	}
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = quoteShort(c)
	}
	return "error-codes " + strings.Join(out, ",")
}

func quoteShort(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strconv.Quote(s)
}

// scrubURLError drops the request URL's query from a *url.Error (there is
// none today; the form is in the body) and keeps the cause.
func scrubURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		u, perr := url.Parse(ue.URL)
		if perr == nil {
			u.RawQuery = ""
			return &url.Error{Op: ue.Op, URL: u.String(), Err: ue.Err}
		}
	}
	return err
}

// ServeHTTP answers POST /_keyward/visitor: 200 {"token","expires_in"},
// 401 (or 403 for an app not allowed) when the proof fails, 429 when the
// address failed too often, 503 when the attestation service is down.
// CORS is the gateway's: it wraps this handler.
func (x *Exchange) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use POST")
		return
	}
	var key string
	if x.o.FailureLimit != nil {
		key = x.o.ClientKey(r)
		if wait := x.blocked.left(key, x.o.Now()); wait > 0 {
			// Over the limit: not even one more siteverify call.
			w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
			writeError(w, http.StatusTooManyRequests, "rate_limited", "too many failed visitor checks")
			return
		}
	}
	g, via, err := x.Mint(r)
	if x.o.OnResult != nil {
		x.o.OnResult(r, via, err)
	}
	if err == nil {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-store")
		body, _ := json.Marshal(g)
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(append(body, '\n'))
		return
	}
	if errors.Is(err, ErrUnavailable) {
		writeError(w, http.StatusServiceUnavailable, "attestation_unavailable", "the visitor check is unavailable; try again")
		return
	}
	if x.o.FailureLimit != nil {
		if ok, retry := x.o.FailureLimit(r.Context(), key); !ok {
			now := x.o.Now()
			x.blocked.add(key, now, now.Add(retry))
			w.Header().Set("Retry-After", strconv.Itoa(int((retry+time.Second-1)/time.Second)))
			writeError(w, http.StatusTooManyRequests, "rate_limited", "too many failed visitor checks")
			return
		}
	}
	var ce *caller.Error
	if errors.As(err, &ce) && ce.Status() == http.StatusForbidden {
		writeError(w, http.StatusForbidden, "forbidden", "this app may not get visitor tokens")
		return
	}
	writeError(w, http.StatusUnauthorized, "unauthenticated", "the visitor check failed ("+string(caller.ReasonOf(err))+")")
}

// writeError writes keyward's JSON error shape.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": msg}})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// blockedSet remembers, on this instance, the client keys that went over
// FailureLimit and until when, so that their next attempts cost no
// verification. It holds at most maxBlocked keys: past that, a new key is
// not remembered and its attempts are checked (and counted) as before.
type blockedSet struct {
	mu sync.Mutex
	m  map[string]time.Time
}

// maxBlocked bounds blockedSet.
const maxBlocked = 10_000

// left is how long key stays refused, or 0.
func (b *blockedSet) left(key string, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	until, ok := b.m[key]
	if !ok {
		return 0
	}
	if !now.Before(until) {
		delete(b.m, key)
		return 0
	}
	return until.Sub(now)
}

// add refuses key until until. A full set first forgets the keys whose
// time has passed, then, if still full, the one that ends soonest.
func (b *blockedSet) add(key string, now, until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = make(map[string]time.Time)
	}
	if _, ok := b.m[key]; !ok && len(b.m) >= maxBlocked {
		soonest, first := "", time.Time{}
		for k, u := range b.m {
			if !now.Before(u) {
				delete(b.m, k)
			} else if soonest == "" || u.Before(first) {
				soonest, first = k, u
			}
		}
		if len(b.m) >= maxBlocked {
			delete(b.m, soonest)
		}
	}
	b.m[key] = until
}

// usedSet remembers Turnstile tokens (by hash) until they could no
// longer be valid.
type usedSet struct {
	mu sync.Mutex
	m  map[[32]byte]time.Time
}

// claim marks sum used until until. ok is false when it already was, or
// when the set is full of live tokens (full).
func (u *usedSet) claim(sum [32]byte, now, until time.Time) (ok, full bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if exp, seen := u.m[sum]; seen && now.Before(exp) {
		return false, false
	}
	if len(u.m) >= maxUsed {
		for k, exp := range u.m {
			if !now.Before(exp) {
				delete(u.m, k)
			}
		}
		if len(u.m) >= maxUsed {
			return false, true
		}
	}
	u.m[sum] = until
	return true, false
}
