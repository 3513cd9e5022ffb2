package gateway

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/placeholder"
	"github.com/keyward/keyward/internal/route"
	"github.com/keyward/keyward/internal/scrub"
	"github.com/keyward/keyward/internal/secret"
)

// A credential written in the file is ordinary text to keyward: `keyward
// test` and `keyward routes` print it, and a response that echoes it (a
// Link header with ?access_token=) goes back unscrubbed, because only
// declared secrets are scrubbed. So a value that looks like a credential,
// in a place that carries one, is refused with the secrets: form to write
// instead.
//
// The rule, kept narrow so that ordinary values pass:
//   - the place: a query parameter (in the upstream URL or query.set) or a
//     header (headers.set) whose name says credential (credentialQuery,
//     credentialHeader), or any value starting like a well-known token
//     (ghp_, sk_live_, AIza...);
//   - the value: its text written in the file (literal text and stage
//     variables; {secret.X}, {param} and {caller.X} are not written in
//     the file), less an authorization scheme word (Bearer, Basic,
//     token...), looks like a secret (looksSecret): at least 8 bytes, not
//     a URL, and with a digit, both cases of letters, or 20 bytes or more.
//     "1", "true", "json", "anonymous", "created_at" and
//     "https://docs.example.com/auth" pass.

// credentialNames are the query parameter and header names (lower case,
// dashes as underscores) that carry a credential in common APIs.
var credentialNames = map[string]bool{
	"access_token": true, "token": true, "key": true, "api_key": true, "apikey": true,
	"client_secret": true, "password": true, "passwd": true, "secret": true, "sig": true,
	"signature": true, "auth": true, "auth_token": true, "api_token": true, "private_token": true,
	"access_key": true, "secret_key": true, "app_key": true, "appkey": true, "appid": true, "subscription_key": true,
	"authorization": true, "proxy_authorization": true, "x_api_key": true, "x_auth_token": true,
	"x_access_token": true, "x_auth_key": true, "x_token": true, "cookie": true,
}

// notCredentials end like a credential name and are not one.
var notCredentials = map[string]bool{"idempotency_key": true, "x_idempotency_key": true, "sort_key": true, "cache_key": true}

func credentialName(name string) bool {
	n := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(name), "-", "_"))
	if credentialNames[n] {
		return true
	}
	if notCredentials[n] {
		return false
	}
	for _, suffix := range []string{"_token", "_key", "_secret", "_password", "_signature", "apikey"} {
		if strings.HasSuffix(n, suffix) {
			return true
		}
	}
	return false
}

// tokenPrefix matches the start of well-known credential formats, which
// are credentials whatever the name they are sent under.
var tokenPrefix = regexp.MustCompile(`^(ghp_|gho_|ghu_|ghs_|github_pat_|glpat-|sk-|sk_live_|sk_test_|rk_live_|pk_live_|xox[abpsr]-|AIza[0-9A-Za-z_-]{10})`)

// authSchemes are the words that may precede a credential in a header
// value; they are not part of it.
var authSchemes = []string{"bearer", "basic", "token", "bot", "digest", "apikey", "key", "sso-key", "otp"}

// looksSecret reports whether text written in the file, in a place that
// carries a credential, is one (see the rule above).
func looksSecret(s string) bool {
	s = strings.TrimSpace(s)
	if tokenPrefix.MatchString(s) {
		return true
	}
	if len(s) < 8 || strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") {
		return false
	}
	var digit, upper, lower bool
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9':
			digit = true
		case c >= 'A' && c <= 'Z':
			upper = true
		case c >= 'a' && c <= 'z':
			lower = true
		}
	}
	return digit || upper && lower || len(s) >= 20
}

// writtenText splits a value template into what is written in the file:
// the authorization scheme it starts with ("Bearer "), the words of its
// literal text, and its stage variables' values by name. Secrets,
// parameters and caller fields are not written in the file.
func writtenText(value string, st stage) (scheme string, words []string, vars map[string][]string) {
	parts, err := placeholder.Parse(value)
	if err != nil {
		return "", nil, nil // compiling reports it
	}
	var text strings.Builder
	for i, p := range parts {
		switch p.Kind {
		case placeholder.Literal:
			t := p.Text
			if i == 0 {
				scheme, t = cutScheme(t)
			}
			text.WriteString(t)
		case placeholder.Stage:
			_, v := cutScheme(st.vars[p.Text])
			if vars == nil {
				vars = map[string][]string{}
			}
			vars[p.Text] = strings.Fields(v)
			text.WriteByte(' ')
		default:
			text.WriteByte(' ')
		}
	}
	return scheme, strings.Fields(text.String()), vars
}

// cutScheme splits a leading authorization scheme ("Bearer ") from s.
func cutScheme(s string) (scheme, rest string) {
	word, after, ok := strings.Cut(s, " ")
	if ok && slices.Contains(authSchemes, strings.ToLower(word)) {
		return word + " ", after
	}
	return "", s
}

// literalCredentials refuses credentials written in the route's upstream
// URL query, query.set and headers.set (literally or through a stage
// variable), each with the secrets: form to write instead.
func (c *compiler) literalCredentials(path string, rc *config.Route, st stage, up *route.Upstream, fromURL map[string]string) {
	name := c.secretSuggestion(rc, up)
	if up != nil && up.RawQuery != "" {
		for pair := range strings.SplitSeq(up.RawQuery, "&") {
			k, v, _ := strings.Cut(pair, "=")
			k, kerr := url.QueryUnescape(k)
			v, verr := url.QueryUnescape(v)
			if kerr != nil || verr != nil || !(credentialName(k) && looksSecret(v) || tokenPrefix.MatchString(v)) {
				continue
			}
			secretName, env := name(k)
			c.errorf(path+".upstream", "%q is a credential written in the upstream URL: keyward test and routes would print it, and a response that echoes it would not be scrubbed; "+
				"remove it from the URL and keep it in a secret: secrets: { %s: { env: %s } } and, on the route, query: { set: { %s: \"{secret.%s}\" } }",
				k, secretName, env, k, secretName)
		}
	}
	check := func(field, key, value string, credential bool) {
		// Outside a credential's name, only a well-known token format
		// counts.
		isSecret := looksSecret
		if !credential {
			isSecret = tokenPrefix.MatchString
		}
		scheme, words, vars := writtenText(value, st)
		literal := slices.ContainsFunc(words, isSecret)
		stageVar := ""
		for _, v := range sortedKeys(vars) {
			if slices.ContainsFunc(vars[v], isSecret) {
				stageVar = v
				break
			}
		}
		if !literal && stageVar == "" {
			return
		}
		secretName, env := name(key)
		form := fmt.Sprintf("query: { set: { %s: \"{secret.%s}\" } }", key, secretName)
		if field == "headers.set" {
			form = fmt.Sprintf("headers: { set: { %s: \"%s{secret.%s}\" } }", key, scheme, secretName)
		}
		p := path + "." + field + "." + key
		if field == "url" {
			p = path + ".upstream"
		}
		if literal {
			c.errorf(p, "a credential written in the file: keyward test and routes would print it, and a response that echoes it would not be scrubbed; "+
				"keep it in a secret: secrets: { %s: { env: %s } } and, on the route, %s", secretName, env, form)
			return
		}
		c.errorf(p, "{stage.%s} puts a value written in the file (stages.%s.vars.%s) into a credential, where it is neither masked nor scrubbed; "+
			"give each stage its own secret instead: secrets: { %s: { env: %s } }, stages: { %s: { secrets: { %s: { env: %s_%s } } } }, and %s",
			stageVar, st.name, stageVar, secretName, env, st.name, secretName, env, strings.ToUpper(strings.ReplaceAll(st.name, "-", "_")), form)
	}
	for _, k := range sortedKeys(fromURL) {
		check("url", k, fromURL[k], credentialName(k))
	}
	for _, k := range sortedKeys(rc.Query.Set) {
		check("query.set", k, rc.Query.Set[k], credentialName(k))
	}
	for _, k := range sortedKeys(rc.Headers.Set) {
		check("headers.set", k, rc.Headers.Set[k], credentialName(k))
	}
}

// secretSuggestion returns the names a refusal suggests, for the
// credential sent as param: a secret named for the upstream's site
// (github for api.github.com), or for the route, and its environment
// variable (GITHUB_TOKEN).
func (c *compiler) secretSuggestion(rc *config.Route, up *route.Upstream) func(param string) (name, env string) {
	base := ""
	if up != nil {
		base = siteName(hostOnly(up.Host))
	}
	if base == "" {
		base = strings.NewReplacer("-", "_", ".", "_", "/", "_").Replace(strings.ToLower(rc.Name))
	}
	if !placeholder.ValidName(base) {
		base = "api"
	}
	return func(param string) (string, string) {
		name := base
		p := strings.ToLower(strings.ReplaceAll(param, "-", "_"))
		if _, taken := c.f.Config.Secrets[name]; taken {
			name += "_" + p
		}
		suffix := "TOKEN"
		switch {
		case strings.Contains(p, "secret"):
			suffix = "SECRET"
		case strings.Contains(p, "pass"):
			suffix = "PASSWORD"
		case strings.Contains(p, "key") && !strings.Contains(p, "token"):
			suffix = "KEY"
		}
		return name, strings.ToUpper(strings.ReplaceAll(base, "-", "_")) + "_" + suffix
	}
}

// siteName is the name a site goes by: the label before its public
// suffix (github for api.github.com, example for www.example.co.uk), or
// "" for an address.
func siteName(host string) string {
	if host == "" || host == "localhost" || net.ParseIP(strings.Trim(host, "[]")) != nil {
		return ""
	}
	labels := strings.Split(strings.TrimSuffix(strings.ToLower(host), "."), ".")
	if len(labels) < 2 {
		return labels[0]
	}
	i := len(labels) - 2
	if i > 0 && slices.Contains([]string{"co", "com", "org", "net", "gov", "ac", "edu"}, labels[i]) && len(labels[i+1]) == 2 {
		i--
	}
	return labels[i]
}

// restParam matches a greedy parameter written in an upstream template
// the way the route's path writes it: {rest...}.
var restParam = regexp.MustCompile(`\{([A-Za-z_][A-Za-z0-9_-]*)\.\.\.\}`)

// splitUpstream prepares an upstream URL as written for compiling: a
// greedy {rest...} is the parameter {rest} (the path's spelling is
// accepted), and query parameters whose value has a placeholder
// (?key={secret.maps}) are taken out of the URL and returned, to be set
// as query.set sets them: never overridable by the client.
func splitUpstream(raw string) (upstream string, set map[string]string) {
	raw = restParam.ReplaceAllString(raw, "{$1}")
	base, query, ok := strings.Cut(raw, "?")
	if !ok || !strings.ContainsAny(query, "{}") {
		return raw, nil
	}
	frag := ""
	if i := strings.IndexByte(query, '#'); i >= 0 {
		query, frag = query[:i], query[i:]
	}
	var keep []string
	for pair := range strings.SplitSeq(query, "&") {
		k, v, _ := strings.Cut(pair, "=")
		name, kerr := url.QueryUnescape(k)
		value, verr := url.QueryUnescape(v)
		if !strings.ContainsAny(v, "{}") || kerr != nil || verr != nil || name == "" {
			keep = append(keep, pair)
			continue
		}
		if set == nil {
			set = map[string]string{}
		}
		set[name] = value
	}
	upstream = base
	if len(keep) > 0 {
		upstream += "?" + strings.Join(keep, "&")
	}
	return upstream + frag, set
}

// withURLQuery returns rc with the upstream URL's placeholder parameters
// added to its query.set. A problem with one is reported on the upstream,
// where it is written.
func (c *compiler) withURLQuery(path string, rc *config.Route, set map[string]string, res placeholder.Resolver) *config.Route {
	merged := make(map[string]string, len(rc.Query.Set)+len(set))
	for k, v := range rc.Query.Set {
		merged[k] = v
	}
	for _, k := range sortedKeys(set) {
		if _, err := placeholder.Compile(set[k], res); err != nil {
			c.errorf(path+".upstream", "query parameter %s: %v", k, err)
			continue
		}
		if slices.ContainsFunc(sortedKeys(rc.Query.Set), func(s string) bool { return queryKey(s) == queryKey(k) }) {
			c.errorf(path+".upstream", "query parameter %s is set both in the upstream URL and in query.set; keep one", k)
			continue
		}
		merged[k] = set[k]
	}
	copied := *rc
	copied.Query.Set = merged
	return &copied
}

// secretFor returns the secret name stands for on stage st: the stage's
// own (stages.NAME.secrets), else the top-level one. A stage that
// declares the secret never falls back to the top-level value, even when
// its own failed to load: a dev route must not send the prod key.
func (c *compiler) secretFor(st stage, name string) (secret.Value, bool) {
	if st.name != "" {
		if _, own := c.f.Config.Stages[st.name].Secrets[name]; own {
			v, ok := c.secrets[stageSecretKey(st.name, name)]
			return v, ok
		}
	}
	v, ok := c.secrets[name]
	return v, ok
}

// secretDefined reports whether name is declared for stage st, loaded or
// not (one that failed to load is reported once, where it is declared).
func (c *compiler) secretDefined(st stage, name string) bool {
	if _, ok := c.f.Config.Secrets[name]; ok {
		return true
	}
	_, ok := c.f.Config.Stages[st.name].Secrets[name]
	return st.name != "" && ok
}

// stageSecretKey is where a stage's own secret is kept among the
// compiler's secrets: "@" cannot be in a secret's name, so it never
// collides with a top-level one, and every stage's value is scrubbed.
func stageSecretKey(stage, name string) string { return name + "@" + stage }

// loadSecret loads one secret declared at path, or reports why it cannot
// be; a value too short to be scrubbed is a warning.
func (c *compiler) loadSecret(path, name string, src config.SecretSource) (secret.Value, bool) {
	if !placeholder.ValidName(name) {
		c.errorf(path, "bad secret name %q: use letters, digits, _ and -", name)
		return secret.Value{}, false
	}
	if (src.Env == "") == (src.File == "") {
		c.errorf(path, "set exactly one of env or file")
		return secret.Value{}, false
	}
	file := src.File
	if file != "" && !strings.HasPrefix(file, "/") {
		file = c.relative(file)
	}
	v, err := secret.Load(name, secret.Source{Env: src.Env, File: file}, c.getenv)
	if err != nil {
		c.errorf(path, "%v", err)
		return secret.Value{}, false
	}
	if v.Len() < scrub.MinLen {
		c.warnf(path, "the value is shorter than %d bytes: keyward test does not mask it and responses are not scrubbed of it (it would match ordinary text); is it the whole credential?", scrub.MinLen)
	}
	return v, true
}

// loadStageSecrets loads every stage's own secrets.
func (c *compiler) loadStageSecrets(cfg *config.Config) {
	names := make([]string, 0, len(cfg.Stages))
	for n := range cfg.Stages {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, st := range names {
		for _, name := range sortedKeys(cfg.Stages[st].Secrets) {
			if v, ok := c.loadSecret("stages."+st+".secrets."+name, name, cfg.Stages[st].Secrets[name]); ok {
				c.secrets[stageSecretKey(st, name)] = v
			}
		}
	}
}
