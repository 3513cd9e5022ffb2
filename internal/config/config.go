// Package config defines keyward's YAML file: the documented structs a user
// writes, strict decoding with line numbers, and defaults. It does not
// interpret values beyond their YAML shape; the gateway compiles them and
// reports semantic problems through Errors, with file, line and field path.
//
// It imports no other keyward package: the YAML contract is the leaf the
// runtime packages (validate, transform, gateway) compile from, so a change
// in how they run can never change what a file means.
package config

// Config is the whole keyward.yaml file.
type Config struct {
	// Listen is the public listener address. Default ":8080".
	Listen string `yaml:"listen"`
	// TLS serves Listen over HTTPS (HTTP/2 and HTTP/1.1) with certificate
	// files or certificates obtained by ACME. Default: none (plain HTTP).
	TLS *TLS `yaml:"tls"`
	// HTTPRedirect is a second, plain HTTP listener (":80") that answers
	// every request with a 301 to the same host and path over https, and
	// answers ACME HTTP-01 challenges. It requires tls. A change takes
	// effect on restart. Default: none.
	HTTPRedirect string `yaml:"http_redirect"`
	// Admin configures the optional admin listener (health, metrics).
	Admin Admin `yaml:"admin"`
	// Server holds the public listener's timeouts and size limits.
	Server Server `yaml:"server"`
	// Log configures the access log.
	Log Log `yaml:"log"`
	// Secrets maps a secret name to its single source. Values are never
	// written inline in the file.
	Secrets map[string]SecretSource `yaml:"secrets"`
	// CORS is the default CORS policy for every route; a route's own cors
	// block replaces it. Without any, cross-origin browser calls are refused.
	CORS *CORS `yaml:"cors"`
	// Stages optionally mounts every route under each stage's prefix or host,
	// with per-stage variables. Without stages, routes sit at the root.
	Stages map[string]Stage `yaml:"stages"`
	// Routes are the public endpoints.
	Routes []Route `yaml:"routes"`
	// Outbound restricts which addresses upstream host names may resolve
	// to.
	Outbound Outbound `yaml:"outbound"`
	// ClientIP says how the client address (the key of per-client limits)
	// is found.
	ClientIP ClientIP `yaml:"client_ip"`
	// Store holds limit state, cache entries, API keys and pauses:
	// "memory" (default; one instance) or a Redis shared by every
	// instance that points at it: one server (redis://), the master a
	// Sentinel names (redis-sentinel://) or a cluster (redis-cluster://),
	// each over TLS with rediss (see redisstore.Open). The password may be
	// a {secret.NAME} placeholder. A change takes effect on restart.
	Store string `yaml:"store"`
	// Limits is the default abuse protection for every route; a route's
	// own limits block replaces it. Default: none.
	Limits *Limits `yaml:"limits"`
	// SpendCap is a hard ceiling on what every route together may spend
	// per calendar window, shared by every instance, e.g. "$200/month":
	// past it, routes with a price or llm answer 503 spend_cap_reached
	// (or their capped_response) without calling the upstream. Default:
	// none.
	SpendCap string `yaml:"spend_cap"`
	// CacheSize bounds the memory cache ("64MiB"); with a Redis store it
	// bounds the memory tier in front of Redis (which keeps hits working
	// through a Redis outage; Redis's own maxmemory bounds Redis). Default
	// "64MiB" in memory, 8 MiB as the tier.
	CacheSize string `yaml:"cache_size"`
	// Callers names the kinds of caller routes may require: verified users
	// (JWT), API keys and attested visitors. Default: none.
	Callers map[string]Caller `yaml:"callers"`
}

// Cache configures a route's response cache. Only GET (and HEAD, from a
// stored GET) is cached.
type Cache struct {
	// TTL is how long a response is fresh, e.g. "60s". Required.
	TTL string `yaml:"ttl"`
	// Vary lists extra request headers whose values select different
	// entries. Everything sent upstream (path, query as sent, every
	// forwarded header) always does. Default: none.
	Vary []string `yaml:"vary"`
	// StaleWhileRevalidate serves an expired entry for this long while one
	// background request refreshes it. Default: off.
	StaleWhileRevalidate string `yaml:"stale_while_revalidate"`
	// StaleIfError serves an expired entry for this long when the upstream
	// fails or answers 5xx. Default: off.
	StaleIfError string `yaml:"stale_if_error"`
	// HonorUpstream shortens the TTL to the upstream's Cache-Control
	// max-age/s-maxage when that is smaller. Default false.
	HonorUpstream bool `yaml:"honor_upstream"`
	// MaxEntry bounds one stored response ("1MiB"); a larger one streams
	// through uncached. Default "1MiB".
	MaxEntry string `yaml:"max_entry"`
	// Statuses lists cacheable statuses. Default [200].
	Statuses []int `yaml:"statuses"`
}

// ClientIP identifies clients behind proxies.
type ClientIP struct {
	// TrustedProxies lists CIDRs (or addresses) of proxies in front of
	// keyward. Only a peer inside them is believed about the client's
	// address. Default: none (the socket peer is the client).
	TrustedProxies []string `yaml:"trusted_proxies"`
	// Header is the one header trusted proxies write: "x-forwarded-for"
	// (default) or "forwarded". Reading both would let a client forge the
	// one the proxy does not write.
	Header string `yaml:"header"`
	// IPv6Prefix keys IPv6 clients by their network, since one user
	// controls a whole /64. Default 64.
	IPv6Prefix int `yaml:"ipv6_prefix"`
	// IPv6WidePrefix is the wider network an IPv6 client is also counted
	// in, together with the other clients there: one /48 holds 65,536
	// /64s, each otherwise a fresh client. 0 turns it off. Default 48.
	IPv6WidePrefix *int `yaml:"ipv6_wide_prefix"`
	// IPv6WideFactor is how many clients' rate, burst and client budget
	// the clients of one wide network share in total. Default 8.
	IPv6WideFactor int `yaml:"ipv6_wide_factor"`
}

// Limits bounds how much a client, and all clients together, may call a
// route.
type Limits struct {
	// Rate is the sustained per-client rate, e.g. "60/m", "10/s".
	Rate string `yaml:"rate"`
	// Burst is how many requests a client may send at once before Rate
	// applies. Default 10, so a page that loads several resources at once
	// is not refused.
	Burst int64 `yaml:"burst"`
	// Budget caps what all clients together send upstream per calendar
	// window (UTC): a count of calls ("10000/day", "500/h",
	// "100000/month") or money ("$20/day", on a route with a price or
	// llm): the upstream bill's ceiling. Default: none.
	Budget string `yaml:"budget"`
	// ClientBudget caps one client's share per window, a count or money
	// ("100/day", "$1/day"); the client is the verified caller or the
	// address, as Per says. Default: none.
	ClientBudget string `yaml:"client_budget"`
	// Tokens caps the tokens (input and output) all clients together use
	// per window on a model-API route, e.g. "2000000/day". Default: none.
	Tokens string `yaml:"tokens"`
	// ClientTokens caps one client's tokens per window, e.g.
	// "100000/day". Default: none.
	ClientTokens string `yaml:"client_tokens"`
	// OnStoreError is what happens when the store (Redis) fails:
	// "fail_open" (default; the request proceeds) or "fail_closed" (503).
	OnStoreError string `yaml:"on_store_error"`
	// StoreTimeout bounds the store round trips of one request; past it
	// the on_store_error policy applies. Default "50ms".
	StoreTimeout string `yaml:"store_timeout"`
	// Per says whom the per-client limits (rate, client_budget) count:
	// "caller" (the verified caller: kind and id) or "ip" (the client
	// address). Default "caller" on a route with callers, "ip" otherwise.
	Per string `yaml:"per"`
}

// Outbound is the policy for upstream connections. It applies to host
// names: an IP address written in an upstream URL is the config's own
// choice and is always dialled.
type Outbound struct {
	// Deny lists CIDRs (or single addresses) upstream names may not
	// resolve to. Default: unspecified, link-local (cloud metadata at
	// 169.254.169.254 and fd00:ec2::254), multicast and broadcast
	// addresses; add 127.0.0.0/8 or private ranges to deny those too.
	Deny []string `yaml:"deny"`
	// Allow lists exceptions to Deny.
	Allow []string `yaml:"allow"`
}

// Admin is the admin listener. It is off unless Listen is set.
type Admin struct {
	// Listen is the admin address, e.g. "127.0.0.1:9090". A bare ":9090"
	// binds 127.0.0.1 only, because metrics and health are not public.
	// Default "" (off).
	Listen string `yaml:"listen"`
}

// Server holds limits of the public listener.
type Server struct {
	// ReadHeaderTimeout bounds how long a client may take to send request
	// headers (slowloris). Default "10s".
	ReadHeaderTimeout string `yaml:"read_header_timeout"`
	// IdleTimeout closes idle keep-alive client connections. Default "120s".
	IdleTimeout string `yaml:"idle_timeout"`
	// MaxHeaderBytes bounds the request line plus headers. Default 65536.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// ShutdownTimeout is how long SIGTERM waits for in-flight requests.
	// Default "30s".
	ShutdownTimeout string `yaml:"shutdown_timeout"`
	// MaxConnections bounds open client connections; more wait to be
	// accepted. Default 10000; -1 means unlimited.
	MaxConnections int `yaml:"max_connections"`
	// MaxHeaders bounds the header lines of a request (431 above it).
	// Default 100.
	MaxHeaders int `yaml:"max_headers"`
	// ReadBodyTimeout bounds how long a client may take to send a request
	// body, in total from the end of the request head (a slow upload holds
	// a connection and an upstream request). Default "60s".
	ReadBodyTimeout string `yaml:"read_body_timeout"`
	// WriteTimeout closes a client connection that has taken none of a
	// response for this long: a client that stops reading would otherwise
	// hold its connection slot forever. It measures progress, so a slow
	// reader that keeps reading, and a long stream, are never cut.
	// Default "30s".
	WriteTimeout string `yaml:"write_timeout"`
	// MaxBufferedBytes bounds the request bodies all requests hold in
	// memory at once (bodies that are validated, transformed, or sent on a
	// route with a budget are read whole first); a request that would
	// cross it gets 503 busy with Retry-After. Default "64MiB".
	MaxBufferedBytes string `yaml:"max_buffered_bytes"`
	// Engine is the HTTP/1.x server on the public listener: "keyward"
	// (keyward's own, internal/http1: faster and leaner) or "stdlib"
	// (Go's net/http), each behind the framing guard. HTTP/2 (over TLS)
	// is always net/http's. A change takes effect on restart. Default
	// "keyward".
	Engine string `yaml:"engine"`
}

// Log configures logging.
type Log struct {
	// Access turns the access log (one line per request, on stderr) on
	// or off. Default true.
	Access *bool `yaml:"access"`
	// Format is how log lines are written: "text" (key=value, for a
	// person at a terminal) or "json" (one object per line, for a log
	// collector). Default: text when stderr is a terminal, else json. A
	// change takes effect on restart.
	Format string `yaml:"format"`
}

// SecretSource names exactly one place a secret's value is read from.
type SecretSource struct {
	// Env is an environment variable name.
	Env string `yaml:"env"`
	// File is a file path; one trailing newline is trimmed.
	File string `yaml:"file"`
}

// Stage is a deployment stage: a prefix or host, and variables.
type Stage struct {
	// Prefix mounts the stage's routes under a path, e.g. "/dev".
	Prefix string `yaml:"prefix"`
	// Host mounts the stage's routes on a Host header, e.g. "dev.example.com".
	Host string `yaml:"host"`
	// Vars are available as {stage.NAME} in upstream URLs, query and header
	// values. They are written in the file, so they are never credentials:
	// a credential that differs by stage goes in Secrets.
	Vars map[string]string `yaml:"vars"`
	// Secrets overrides top-level secrets for this stage's routes (a dev
	// key and a prod key under one name), or adds secrets only this stage
	// uses. Default: none (the top-level secrets).
	Secrets map[string]SecretSource `yaml:"secrets"`
}

// CORS is a CORS policy answered by the gateway itself.
type CORS struct {
	// AllowOrigins lists exact origins ("https://app.example.com"), anchored
	// subdomain wildcards ("https://*.example.com") or "*". Default: none.
	AllowOrigins []string `yaml:"allow_origins"`
	// AllowMethods defaults to the route's methods.
	AllowMethods []string `yaml:"allow_methods"`
	// AllowHeaders are request headers a page may send; default: the
	// CORS-safelisted ones plus the route's headers.allow.
	AllowHeaders []string `yaml:"allow_headers"`
	// ExposeHeaders are response headers a page may read. Default none.
	ExposeHeaders []string `yaml:"expose_headers"`
	// AllowCredentials lets pages send cookies/credentials. Default false.
	AllowCredentials bool `yaml:"allow_credentials"`
	// MaxAge lets browsers cache a preflight. Default "10m".
	MaxAge string `yaml:"max_age"`
	// RejectOtherOrigins answers 403, without calling the upstream, to
	// requests whose Origin header is not allowed. A browser would hide the
	// response anyway, but the upstream call (and its cost) would happen.
	// Default true.
	RejectOtherOrigins *bool `yaml:"reject_other_origins"`
	// Disabled turns CORS off for a route that overrides the global policy.
	Disabled bool `yaml:"disabled"`
}

// Route is one public endpoint.
type Route struct {
	// Name identifies the route in logs, metrics and errors. Required, unique.
	Name string `yaml:"name"`
	// Path is the public path: literal segments, {name} for one segment and
	// a final {name...} for the rest. Required.
	Path string `yaml:"path"`
	// Params restricts path parameters by regular expression (anchored).
	// Default: any single segment.
	Params map[string]string `yaml:"params"`
	// Methods allowed; anything else gets 405 with Allow. Default [GET].
	Methods []string `yaml:"methods"`
	// Upstream is the URL template requests go to. Required.
	Upstream string `yaml:"upstream"`
	// Query controls the upstream query string.
	Query Query `yaml:"query"`
	// Headers controls the upstream request headers.
	Headers Headers `yaml:"headers"`
	// Timeout bounds the wait for the upstream's response headers. A
	// streaming body may then run for as long as it streams. Default "30s".
	Timeout string `yaml:"timeout"`
	// IdleTimeout bounds the silence between two reads of the upstream's
	// response body, so an upstream that stalls mid-body is cut off (the
	// client sees an aborted response, never a silent truncated one).
	// Default "2m".
	IdleTimeout string `yaml:"idle_timeout"`
	// MaxBody bounds the request body, e.g. "1MiB", "64KB". Default "1MiB".
	MaxBody string `yaml:"max_body"`
	// CORS replaces the global policy for this route.
	CORS *CORS `yaml:"cors"`
	// Limits replaces the top-level limits for this route.
	Limits *Limits `yaml:"limits"`
	// Cache stores upstream responses; concurrent misses make one upstream
	// call. Default: off.
	Cache *Cache `yaml:"cache"`
	// Validate checks the request before it is forwarded: query, headers
	// and a JSON Schema for the body. Default: no checks.
	Validate *Validate `yaml:"validate"`
	// Transform reshapes JSON bodies with jq on the way up and down.
	// Default: bodies pass unchanged.
	Transform *Transform `yaml:"transform"`
	// Callers lists the kinds of caller (keys of the top-level callers:)
	// the route accepts; a request that proves none of them is refused
	// before limits, validation or any upstream call. Default: none (the
	// route is public).
	Callers []string `yaml:"callers"`
	// LLM says the upstream is a model API (OpenAI, Anthropic, Gemini):
	// keyward checks the model, bounds the answer's length and reads the
	// tokens it used, streams included, to charge money budgets. Default:
	// none.
	LLM *LLM `yaml:"llm"`
	// Price is what one upstream call costs, e.g. "$0.005": money
	// budgets are charged this much per call that goes upstream (cache
	// hits cost nothing). Default: none.
	Price string `yaml:"price"`
	// CappedResponse is what the route answers instead of 503
	// spend_cap_reached while the spend cap is reached (or the route is
	// paused): a degraded answer a front end can show. Default: none.
	CappedResponse *StaticResponse `yaml:"capped_response"`
	// Fallback lets requests that carry no credential at all through
	// under these limits instead of refusing them (401): for callers who
	// cannot prove themselves, such as devices that fail attestation. Its
	// rate is per client address; its budget is shared by every such
	// request, so keep it small. A bad credential is still refused.
	// Default: none (no credential, no call).
	Fallback *Limits `yaml:"fallback"`
}

// Query controls which client query parameters reach the upstream and
// which the gateway sets.
type Query struct {
	// Allow lists client parameters passed on. Default: none.
	Allow []string `yaml:"allow"`
	// Set adds parameters (placeholders allowed); the client can never
	// override or duplicate them, in any spelling.
	Set map[string]string `yaml:"set"`
}

// Headers controls upstream request headers.
type Headers struct {
	// Allow lists client headers passed on besides the default safe set
	// (Accept, Accept-Language, Content-Type, If-None-Match,
	// If-Modified-Since).
	Allow []string `yaml:"allow"`
	// Set adds headers (placeholders allowed), overwriting client values.
	Set map[string]string `yaml:"set"`
	// Remove lists default-set headers not to pass on.
	Remove []string `yaml:"remove"`
}

// StaticResponse is an answer written in the config.
type StaticResponse struct {
	// Status is the status code. Default 200.
	Status int `yaml:"status"`
	// ContentType is the Content-Type. Default "application/json".
	ContentType string `yaml:"content_type"`
	// Body is the body, as written. Default: empty.
	Body string `yaml:"body"`
}
