package visitor

import (
	"fmt"
	"time"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/caller/jwt"
	"github.com/keyward/keyward/internal/config"
)

// Compile turns the `visitor:` block of caller kind kind into Options,
// checked so that New succeeds on them. Problem paths are relative to the
// kind ("visitor.signing_key"). The gateway then sets ClientKey,
// FailureLimit and OnResult, and calls New.
func Compile(kind string, c config.Visitor, env caller.Env) (Options, []caller.Problem) {
	var probs []caller.Problem
	bad := func(path, format string, args ...any) {
		p := "visitor"
		if path != "" {
			p += "." + path
		}
		probs = append(probs, caller.Problem{Path: p, Msg: fmt.Sprintf(format, args...)})
	}
	o := Options{Kind: kind, Transport: env.Transport, Now: env.Now}
	secretOf := func(path, name string) {
		if name == "" {
			bad(path, "required: the name of a secret")
			return
		}
		v, ok := env.Secret(name)
		if !ok {
			bad(path, "unknown secret %q", name)
			return
		}
		switch path {
		case "signing_key":
			if len(v.Reveal()) < MinKeyBytes {
				bad(path, "secret %q is shorter than %d bytes (make one with: openssl rand -base64 48)", name, MinKeyBytes)
				return
			}
			o.SigningKey = v
		case "turnstile.secret":
			o.Turnstile.Secret = v
		}
	}
	secretOf("signing_key", c.SigningKey)
	if c.TTL != "" {
		d, err := time.ParseDuration(c.TTL)
		if err != nil || d < time.Minute || d > 24*time.Hour {
			bad("ttl", "%q: want a duration between 1m and 24h", c.TTL)
		} else {
			o.TTL = d
		}
	}
	if c.Turnstile == nil && c.AppCheck == nil {
		bad("", "set turnstile, app_check or both: the proofs a visitor may bring")
	}
	if t := c.Turnstile; t != nil {
		o.Turnstile = &TurnstileOptions{Hostnames: t.Hostnames, Action: t.Action, VerifyURL: t.VerifyURL}
		secretOf("turnstile.secret", t.Secret)
		if len(t.Hostnames) == 0 {
			bad("turnstile.hostnames", "required: the sites your widget runs on (a token solved on another site must not pass)")
		}
		if t.VerifyURL != "" {
			if err := jwt.CheckURL(t.VerifyURL); err != nil {
				bad("turnstile.verify_url", "%v", err)
			}
		}
	}
	if a := c.AppCheck; a != nil {
		o.AppCheck = &AppCheckOptions{ProjectNumber: a.ProjectNumber, AppIDs: a.AppIDs, JWKS: a.JWKS}
		if a.ProjectNumber == "" || !digits(a.ProjectNumber) {
			bad("app_check.project_number", "%q: want the Firebase project number (digits, from the project settings), not the project id", a.ProjectNumber)
		}
		if a.JWKS != "" {
			if err := jwt.CheckURL(a.JWKS); err != nil {
				bad("app_check.jwks", "%v", err)
			}
		}
	}
	if len(probs) > 0 {
		return Options{}, probs
	}
	if _, _, err := New(o); err != nil {
		return Options{}, []caller.Problem{{Path: "visitor", Msg: err.Error()}}
	}
	return o, nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
