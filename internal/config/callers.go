package config

// Caller is one kind of caller under `callers:`, named by its key ("users",
// "partners", "visitors"). Exactly one of JWT, APIKeys and Visitor is set.
// A route accepts the kinds its `callers:` list names; a route without
// `callers:` is public.
//
//	callers:
//	  users:
//	    jwt: { preset: supabase, project: abcd1234 }
//	  partners:
//	    api_keys: { header: X-Api-Key, keys: keys.yaml }
//	  visitors:
//	    visitor:
//	      turnstile: { secret: turnstile, hostnames: [app.example.com] }
//	      signing_key: visitor_key
type Caller struct {
	// JWT accepts callers that present a JSON Web Token from an identity
	// provider (Supabase, Firebase Auth, Auth0, Clerk, Cognito, any OIDC
	// issuer).
	JWT *JWT `yaml:"jwt"`
	// APIKeys accepts callers that present a key made with
	// `keyward keys create`.
	APIKeys *APIKeys `yaml:"api_keys"`
	// Visitor accepts anonymous visitors holding a visitor token, which a
	// page or app gets from POST /_keyward/visitor with a proof that it is
	// a real browser or a genuine app (Turnstile, App Check).
	Visitor *Visitor `yaml:"visitor"`
}

// JWT verifies JSON Web Tokens. Either write the generic form (issuer,
// audience, jwks or secret) or name a preset, which fills in the issuer,
// the JWKS URL, the audience and the id claim of a known provider; a field
// written next to a preset overrides what the preset fills in.
//
//	jwt: { preset: supabase, project: abcd1234 }                 # JWKS (asymmetric keys)
//	jwt: { preset: supabase, project: abcd1234, secret: sb_jwt } # legacy HS256 secret
//	jwt: { preset: firebase, project: my-app }
//	jwt: { preset: auth0, domain: tenant.us.auth0.com, audience: [https://api.example.com] }
//	jwt: { preset: clerk, domain: clerk.example.com }
//	jwt: { preset: cognito, user_pool: us-east-1_AbCdEf123, audience: [APP_CLIENT_ID] }
type JWT struct {
	// Preset names a provider: "supabase", "firebase", "auth0", "clerk" or
	// "cognito". Default: none (the generic form).
	Preset string `yaml:"preset"`
	// Project is the Supabase project ref or the Firebase project id, for
	// those presets.
	Project string `yaml:"project"`
	// Domain is the Auth0 tenant domain or the Clerk Frontend API domain
	// (a host name, no scheme), for those presets.
	Domain string `yaml:"domain"`
	// UserPool is the Cognito user pool id ("us-east-1_AbCdEf123"), for
	// that preset; the region is read from it.
	UserPool string `yaml:"user_pool"`

	// Issuer is the exact `iss` a token must carry. Required (or from a
	// preset).
	Issuer string `yaml:"issuer"`
	// Audience lists accepted `aud` values; a token must carry at least
	// one. Default: none, and then `aud` is not checked (only sensible
	// for providers whose tokens carry none, such as Clerk's).
	Audience []string `yaml:"audience"`
	// JWKS is the URL of the issuer's public keys (JSON Web Key Set). It
	// must be https://, except on a loopback address. Exactly one of JWKS
	// and Secret is set (or comes from a preset).
	JWKS string `yaml:"jwks"`
	// Secret names a keyward secret holding an HS256 key, for issuers that
	// sign with a shared secret (Supabase's legacy JWT secret). With it,
	// HS256 is the only algorithm accepted; without it, HS256 never is.
	Secret string `yaml:"secret"`
	// Require lists claims that must hold: a scalar must equal the claim,
	// or be a member of it when the claim is a list; a list means "any of
	// these". A token that fails it is refused with 403 forbidden.
	// Default: none.
	Require map[string]any `yaml:"require"`
	// ID is the claim that names the caller in limits and logs. Default
	// "sub".
	ID string `yaml:"id"`
	// From is where the token is read: "header:Authorization" (the
	// default; the Bearer scheme), "header:NAME" (the whole value),
	// "cookie:NAME" or "query:NAME" (for EventSource, which cannot set
	// headers; the parameter is never forwarded).
	From string `yaml:"from"`
	// Leeway tolerates clock skew on exp, nbf and iat. Default "30s";
	// at most "5m".
	Leeway string `yaml:"leeway"`
}

// APIKeys accepts keys made with `keyward keys create KIND`. Only the
// SHA-256 hash of each key is stored.
type APIKeys struct {
	// Header is the request header that carries the key. Default
	// "X-Api-Key"; "Authorization" means the Bearer scheme.
	Header string `yaml:"header"`
	// Keys is the keys file, relative to the config file's directory.
	// It is written by `keyward keys` and re-read within a second of a
	// change. Default "keys.yaml".
	Keys string `yaml:"keys"`
}

// Visitor accepts anonymous visitors who proved, once, that they are a
// real browser (Cloudflare Turnstile) or a genuine app (Firebase App
// Check), in exchange for a short-lived visitor token.
type Visitor struct {
	// Turnstile accepts Cloudflare Turnstile tokens. At least one of
	// Turnstile and AppCheck is set.
	Turnstile *Turnstile `yaml:"turnstile"`
	// AppCheck accepts Firebase App Check tokens.
	AppCheck *AppCheck `yaml:"app_check"`
	// SigningKey names a keyward secret of at least 32 bytes that signs
	// visitor tokens. Every instance must share it. Required.
	SigningKey string `yaml:"signing_key"`
	// TTL is how long a visitor token lasts. Default "15m"; between "1m"
	// and "24h".
	TTL string `yaml:"ttl"`
}

// Turnstile is the Cloudflare Turnstile check of a visitor exchange.
type Turnstile struct {
	// Secret names the keyward secret holding the widget's secret key.
	// Required.
	Secret string `yaml:"secret"`
	// Hostnames lists the sites the widget may run on; a token solved
	// elsewhere is refused. Required.
	Hostnames []string `yaml:"hostnames"`
	// Action, when set, must equal the action the widget was rendered
	// with. Default: not checked.
	Action string `yaml:"action"`
	// VerifyURL replaces Cloudflare's siteverify endpoint (tests, private
	// deployments). It must be https://, except on a loopback address.
	// Default "https://challenges.cloudflare.com/turnstile/v0/siteverify".
	VerifyURL string `yaml:"verify_url"`
}

// AppCheck is the Firebase App Check check of a visitor exchange.
type AppCheck struct {
	// ProjectNumber is the Firebase project number (digits, not the
	// project id). Required.
	ProjectNumber string `yaml:"project_number"`
	// AppIDs, when set, lists the Firebase app ids accepted (the token's
	// subject). Default: any app of the project.
	AppIDs []string `yaml:"app_ids"`
	// JWKS replaces App Check's public keys URL (tests). It must be
	// https://, except on a loopback address. Default
	// "https://firebaseappcheck.googleapis.com/v1/jwks".
	JWKS string `yaml:"jwks"`
}
