package jwt

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/config"
)

// Presets name the providers whose issuer, JWKS URL, audience and id
// claim a `preset:` fills in.
var Presets = []string{"auth0", "clerk", "cognito", "firebase", "supabase"}

var (
	projectRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	domainRE   = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$`)
	userPoolRE = regexp.MustCompile(`^([a-z]{2}(-gov)?-[a-z]+-[0-9])_[A-Za-z0-9]{1,55}$`)
)

// firebaseJWKS is where Google publishes the keys of Firebase Auth ID
// tokens (https://firebase.google.com/docs/auth/admin/verify-id-tokens).
const firebaseJWKS = "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com"

// Expand returns c with its preset's values filled in where c leaves them
// empty, and the problems found (paths relative to the caller kind,
// "jwt.project"). Without a preset, c is returned as it is.
//
//	supabase  issuer https://PROJECT.supabase.co/auth/v1, audience
//	          [authenticated], jwks PROJECT's /auth/v1/.well-known/jwks.json
//	          unless secret names the legacy HS256 JWT secret
//	firebase  issuer https://securetoken.google.com/PROJECT, audience
//	          [PROJECT], Google's securetoken JWKS
//	auth0     issuer https://DOMAIN/ (with the slash Auth0 writes), jwks
//	          https://DOMAIN/.well-known/jwks.json; audience required
//	clerk     issuer https://DOMAIN, jwks https://DOMAIN/.well-known/jwks.json;
//	          session tokens carry no aud (require azp to pin the origin)
//	cognito   issuer https://cognito-idp.REGION.amazonaws.com/USER_POOL,
//	          jwks ISSUER/.well-known/jwks.json; audience (ID tokens) or
//	          require.client_id (access tokens) required
//
// Every preset's id claim is "sub".
func Expand(c config.JWT) (config.JWT, []caller.Problem) {
	var probs []caller.Problem
	bad := func(path, format string, args ...any) {
		probs = append(probs, caller.Problem{Path: "jwt." + path, Msg: fmt.Sprintf(format, args...)})
	}
	need := func(field, value string, re *regexp.Regexp, what string) bool {
		switch {
		case value == "":
			bad(field, "preset %s needs %s: %s", c.Preset, field, what)
		case !re.MatchString(value):
			bad(field, "%q is not %s", value, what)
		default:
			return true
		}
		return false
	}
	set := func(field *string, v string) {
		if *field == "" {
			*field = v
		}
	}
	extra := func(field, value string) {
		if value != "" {
			bad(field, "only used with preset %s", presetFor(field))
		}
	}
	switch c.Preset {
	case "":
		extra("project", c.Project)
		extra("domain", c.Domain)
		extra("user_pool", c.UserPool)
	case "supabase":
		extra("domain", c.Domain)
		extra("user_pool", c.UserPool)
		if need("project", c.Project, projectRE, "a Supabase project ref (the PROJECT in https://PROJECT.supabase.co)") {
			base := "https://" + c.Project + ".supabase.co/auth/v1"
			set(&c.Issuer, base)
			if c.Secret == "" {
				set(&c.JWKS, base+"/.well-known/jwks.json")
			}
			if c.Audience == nil {
				c.Audience = []string{"authenticated"}
			}
		}
	case "firebase":
		extra("domain", c.Domain)
		extra("user_pool", c.UserPool)
		if need("project", c.Project, projectRE, "a Firebase project id") {
			set(&c.Issuer, "https://securetoken.google.com/"+c.Project)
			set(&c.JWKS, firebaseJWKS)
			if c.Audience == nil {
				c.Audience = []string{c.Project}
			}
		}
	case "auth0", "clerk":
		extra("project", c.Project)
		extra("user_pool", c.UserPool)
		what := "a host name such as tenant.us.auth0.com (no https://)"
		if c.Preset == "clerk" {
			what = "the Frontend API host name, such as clerk.example.com (no https://)"
		}
		if need("domain", strings.TrimSuffix(c.Domain, "/"), domainRE, what) {
			d := strings.TrimSuffix(c.Domain, "/")
			if c.Preset == "auth0" {
				set(&c.Issuer, "https://"+d+"/")
				if len(c.Audience) == 0 {
					bad("audience", "preset auth0 needs audience: your API's identifier, which Auth0 puts in aud (without it, tokens for any of the tenant's APIs would pass)")
				}
			} else {
				set(&c.Issuer, "https://"+d)
			}
			set(&c.JWKS, "https://"+d+"/.well-known/jwks.json")
		}
	case "cognito":
		extra("project", c.Project)
		extra("domain", c.Domain)
		if need("user_pool", c.UserPool, userPoolRE, "a Cognito user pool id such as us-east-1_AbCdEf123") {
			region := userPoolRE.FindStringSubmatch(c.UserPool)[1]
			iss := "https://cognito-idp." + region + ".amazonaws.com/" + c.UserPool
			set(&c.Issuer, iss)
			set(&c.JWKS, iss+"/.well-known/jwks.json")
			if _, ok := c.Require["client_id"]; !ok && len(c.Audience) == 0 {
				bad("audience", "preset cognito needs audience (the app client id, for ID tokens) or require.client_id (for access tokens): without either, tokens of every app client of the pool would pass")
			}
		}
	default:
		bad("preset", "unknown preset %q (known: %s)", c.Preset, strings.Join(Presets, ", "))
	}
	return c, probs
}

func presetFor(field string) string {
	switch field {
	case "project":
		return "supabase or firebase"
	case "domain":
		return "auth0 or clerk"
	}
	return "cognito"
}

// MaxLeeway bounds `leeway`: more would let expired tokens live on.
const MaxLeeway = 5 * time.Minute

// Compile builds the Verifier of the `jwt:` block of caller kind kind.
// Problem paths are relative to the kind ("jwt.issuer"). It opens no
// connection.
func Compile(kind string, c config.JWT, env caller.Env) (*Verifier, []caller.Problem) {
	c, probs := Expand(c)
	bad := func(path, format string, args ...any) {
		probs = append(probs, caller.Problem{Path: "jwt." + path, Msg: fmt.Sprintf(format, args...)})
	}
	o := Options{
		Kind:      kind,
		Issuer:    c.Issuer,
		Audience:  c.Audience,
		JWKS:      c.JWKS,
		Require:   c.Require,
		IDClaim:   c.ID,
		Transport: env.Transport,
		Now:       env.Now,
	}
	if c.Issuer == "" {
		bad("issuer", "required (the exact iss of your tokens), or set a preset (%s)", strings.Join(Presets, ", "))
	}
	switch {
	case c.JWKS != "" && c.Secret != "":
		bad("secret", "set jwks or secret, not both")
	case c.JWKS == "" && c.Secret == "":
		bad("jwks", "required: the URL of the issuer's public keys (or secret: NAME for an HS256 secret)")
	case c.JWKS != "":
		if err := CheckURL(c.JWKS); err != nil {
			bad("jwks", "%v", err)
		}
	default:
		v, ok := env.Secret(c.Secret)
		if !ok {
			bad("secret", "unknown secret %q", c.Secret)
		} else if len(v.Reveal()) < 32 {
			bad("secret", "secret %q is shorter than 32 bytes, too short for HS256 (RFC 7518, section 3.2)", c.Secret)
		} else {
			o.Secret = v
		}
	}
	for _, a := range c.Audience {
		if a == "" {
			bad("audience", "an empty audience matches nothing")
		}
	}
	for name, want := range c.Require {
		if err := checkRequired(want); err != nil {
			bad("require."+name, "%v", err)
		}
	}
	if from, err := caller.ParseSource(c.From); err != nil {
		bad("from", "%v", err)
	} else {
		o.From = from
	}
	if c.Leeway != "" {
		d, err := time.ParseDuration(c.Leeway)
		switch {
		case err != nil || d < 0:
			bad("leeway", "bad duration %q: want e.g. 30s", c.Leeway)
		case d > MaxLeeway:
			bad("leeway", "%s is more than %s", c.Leeway, MaxLeeway)
		case d == 0:
			o.Leeway = -1
		default:
			o.Leeway = d
		}
	}
	if len(probs) > 0 {
		return nil, probs
	}
	v, err := New(o)
	if err != nil {
		return nil, []caller.Problem{{Path: "jwt", Msg: err.Error()}}
	}
	return v, nil
}
