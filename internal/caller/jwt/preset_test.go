package jwt

import (
	"context"
	"strings"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/secret"
)

func TestPresets(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   config.JWT
		want config.JWT // Issuer, JWKS, Audience
	}{
		{"supabase", config.JWT{Preset: "supabase", Project: "abcd1234"}, config.JWT{
			Issuer:   "https://abcd1234.supabase.co/auth/v1",
			JWKS:     "https://abcd1234.supabase.co/auth/v1/.well-known/jwks.json",
			Audience: []string{"authenticated"}}},
		{"supabase legacy HS256", config.JWT{Preset: "supabase", Project: "abcd1234", Secret: "sb"}, config.JWT{
			Issuer:   "https://abcd1234.supabase.co/auth/v1",
			Secret:   "sb",
			Audience: []string{"authenticated"}}},
		{"supabase custom domain", config.JWT{Preset: "supabase", Project: "abcd1234",
			Issuer: "https://auth.example.com/auth/v1", JWKS: "https://auth.example.com/auth/v1/.well-known/jwks.json"}, config.JWT{
			Issuer:   "https://auth.example.com/auth/v1",
			JWKS:     "https://auth.example.com/auth/v1/.well-known/jwks.json",
			Audience: []string{"authenticated"}}},
		{"firebase", config.JWT{Preset: "firebase", Project: "my-app"}, config.JWT{
			Issuer:   "https://securetoken.google.com/my-app",
			JWKS:     "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com",
			Audience: []string{"my-app"}}},
		{"auth0", config.JWT{Preset: "auth0", Domain: "tenant.us.auth0.com", Audience: []string{"https://api.example.com"}}, config.JWT{
			Issuer:   "https://tenant.us.auth0.com/",
			JWKS:     "https://tenant.us.auth0.com/.well-known/jwks.json",
			Audience: []string{"https://api.example.com"}}},
		{"clerk", config.JWT{Preset: "clerk", Domain: "clerk.example.com"}, config.JWT{
			Issuer: "https://clerk.example.com",
			JWKS:   "https://clerk.example.com/.well-known/jwks.json"}},
		{"cognito", config.JWT{Preset: "cognito", UserPool: "eu-west-3_AbCdEf123", Audience: []string{"client1"}}, config.JWT{
			Issuer:   "https://cognito-idp.eu-west-3.amazonaws.com/eu-west-3_AbCdEf123",
			JWKS:     "https://cognito-idp.eu-west-3.amazonaws.com/eu-west-3_AbCdEf123/.well-known/jwks.json",
			Audience: []string{"client1"}}},
		{"cognito gov", config.JWT{Preset: "cognito", UserPool: "us-gov-west-1_X1", Require: map[string]any{"client_id": "c"}}, config.JWT{
			Issuer: "https://cognito-idp.us-gov-west-1.amazonaws.com/us-gov-west-1_X1",
			JWKS:   "https://cognito-idp.us-gov-west-1.amazonaws.com/us-gov-west-1_X1/.well-known/jwks.json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, probs := Expand(tc.in)
			if len(probs) > 0 {
				t.Fatalf("problems: %v", probs)
			}
			if diff := cmp.Diff(tc.want, config.JWT{Issuer: got.Issuer, JWKS: got.JWKS, Audience: got.Audience, Secret: got.Secret}); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func prob(path, msg string) caller.Problem { return caller.Problem{Path: path, Msg: msg} }

func TestCompileProblems(t *testing.T) {
	env := caller.Env{Secret: func(name string) (secret.Value, bool) {
		switch name {
		case "short":
			return secret.New(name, "short-canary"), true
		case "sb":
			return secret.New(name, strings.Repeat("k", 40)), true
		}
		return secret.Value{}, false
	}}
	for _, tc := range []struct {
		name string
		in   config.JWT
		want []caller.Problem
	}{
		{"empty", config.JWT{}, []caller.Problem{
			prob("jwt.issuer", "required (the exact iss of your tokens), or set a preset (auth0, clerk, cognito, firebase, supabase)"),
			prob("jwt.jwks", "required: the URL of the issuer's public keys (or secret: NAME for an HS256 secret)")}},
		{"unknown preset", config.JWT{Preset: "okta", Issuer: testIss, JWKS: "https://x.example/j"}, []caller.Problem{
			prob("jwt.preset", `unknown preset "okta" (known: auth0, clerk, cognito, firebase, supabase)`)}},
		{"preset without project", config.JWT{Preset: "supabase"}, []caller.Problem{
			prob("jwt.project", "preset supabase needs project: a Supabase project ref (the PROJECT in https://PROJECT.supabase.co)"),
			prob("jwt.issuer", "required (the exact iss of your tokens), or set a preset (auth0, clerk, cognito, firebase, supabase)"),
			prob("jwt.jwks", "required: the URL of the issuer's public keys (or secret: NAME for an HS256 secret)")}},
		{"auth0 with a scheme and no audience", config.JWT{Preset: "auth0", Domain: "https://t.auth0.com"}, []caller.Problem{
			prob("jwt.domain", `"https://t.auth0.com" is not a host name such as tenant.us.auth0.com (no https://)`),
			prob("jwt.issuer", "required (the exact iss of your tokens), or set a preset (auth0, clerk, cognito, firebase, supabase)"),
			prob("jwt.jwks", "required: the URL of the issuer's public keys (or secret: NAME for an HS256 secret)")}},
		{"auth0 without audience", config.JWT{Preset: "auth0", Domain: "t.auth0.com"}, []caller.Problem{
			prob("jwt.audience", "preset auth0 needs audience: your API's identifier, which Auth0 puts in aud (without it, tokens for any of the tenant's APIs would pass)")}},
		{"cognito without audience", config.JWT{Preset: "cognito", UserPool: "us-east-1_A"}, []caller.Problem{
			prob("jwt.audience", "preset cognito needs audience (the app client id, for ID tokens) or require.client_id (for access tokens): without either, tokens of every app client of the pool would pass")}},
		{"field of another preset", config.JWT{Preset: "firebase", Project: "p", Domain: "x.example.com"}, []caller.Problem{
			prob("jwt.domain", "only used with preset auth0 or clerk")}},
		{"both keys", config.JWT{Issuer: testIss, JWKS: "https://x.example/j", Secret: "sb"}, []caller.Problem{
			prob("jwt.secret", "set jwks or secret, not both")}},
		{"unknown secret", config.JWT{Issuer: testIss, Secret: "nope"}, []caller.Problem{
			prob("jwt.secret", `unknown secret "nope"`)}},
		{"short secret", config.JWT{Issuer: testIss, Secret: "short"}, []caller.Problem{
			prob("jwt.secret", `secret "short" is shorter than 32 bytes, too short for HS256 (RFC 7518, section 3.2)`)}},
		{"http jwks, bad from, leeway", config.JWT{Issuer: testIss, JWKS: "http://idp.example/j", From: "body:x", Leeway: "1h"}, []caller.Problem{
			prob("jwt.jwks", `"http://idp.example/j" must be https:// (http:// only on a loopback address)`),
			prob("jwt.from", `"body:x": want header:NAME, cookie:NAME or query:NAME`),
			prob("jwt.leeway", "1h is more than 5m0s")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, probs := Compile("users", tc.in, env)
			if diff := cmp.Diff(tc.want, probs); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			if (v == nil) != (len(tc.want) > 0) {
				t.Errorf("verifier = %v with %d problems", v, len(probs))
			}
			for _, p := range probs {
				if strings.Contains(p.Msg, "short-canary") {
					t.Errorf("problem quotes the secret: %s", p.Msg)
				}
			}
		})
	}
}

// TestCompileEndToEnd builds from config a verifier that checks tokens
// from a local JWKS server, the way the gateway will.
func TestCompileEndToEnd(t *testing.T) {
	genKeys(t)
	k := testKey{kid: "k1", alg: "ES256", priv: ecA}
	is := newIssuer(t, k)
	clk := newClock()
	v, probs := Compile("users", config.JWT{
		Issuer:   testIss,
		Audience: []string{"authenticated"},
		JWKS:     is.url(),
		Require:  map[string]any{"role": "authenticated"},
		ID:       "user_id",
		From:     "cookie:session",
		Leeway:   "0s",
	}, caller.Env{Now: clk.Now})
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	c := gojwt.MapClaims{"iss": testIss, "aud": "authenticated", "role": "authenticated", "user_id": "u1",
		"exp": clk.Now().Add(time.Second).Unix()}
	r := bearer("")
	r.Header.Del("Authorization")
	r.Header.Set("Cookie", "session="+mint(t, k, c, nil))
	id, err := v.Verify(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if id.ID != "u1" || id.Kind != "users" {
		t.Errorf("identity = %+v", id)
	}
	clk.Advance(time.Second) // leeway 0: expired at exp exactly
	c["exp"] = clk.Now().Unix()
	r.Header.Set("Cookie", "session="+mint(t, k, c, nil))
	if _, err := v.Verify(context.Background(), r); caller.ReasonOf(err) != caller.Expired {
		t.Errorf("leeway 0: %v", err)
	}
}
