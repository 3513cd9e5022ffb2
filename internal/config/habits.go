package config

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// habits reports what people used to a cloud console's API gateway (or to
// shell and Compose files) write, with what keyward means by it: a
// greedy {proxy+}, an origin without a scheme, '*' with its quotes,
// ${VAR} for a credential. Each is a problem in Unknown, so that compiling
// refuses the file, and the value is made harmless so that nothing else
// complains about it (the compiler would only repeat the problem less
// helpfully).
func (f *File) habits() {
	c := &f.Config
	if c.Log.Format != "" && c.Log.Format != "text" && c.Log.Format != "json" {
		f.problem(nil, "log.format", "%q: want text or json", c.Log.Format)
	}
	f.origins("cors", c.CORS)
	for i := range c.Routes {
		r := &c.Routes[i]
		path := fmt.Sprintf("routes[%d]", i)
		if fixed, ok := greedy(r.Path); ok {
			f.problem(nil, path+".path", "%q: keyward writes a greedy parameter as {name...} at the end of the path (the cloud console's {proxy+}): path: %q", r.Path, fixed)
		}
		f.origins(path+".cors", r.CORS)
		r.Upstream = f.envRefs(path+".upstream", r.Upstream, true, "")
		for _, k := range slices.Sorted(mapKeys(r.Query.Set)) {
			r.Query.Set[k] = f.envRefs(path+".query.set."+k, r.Query.Set[k], false, "")
		}
		for _, k := range slices.Sorted(mapKeys(r.Headers.Set)) {
			r.Headers.Set[k] = f.envRefs(path+".headers.set."+k, r.Headers.Set[k], false, "")
		}
	}
	for _, st := range slices.Sorted(mapKeys(c.Stages)) {
		for _, v := range slices.Sorted(mapKeys(c.Stages[st].Vars)) {
			p := "stages." + st + ".vars." + v
			val := c.Stages[st].Vars[v]
			if fixed := f.envRefs(p, val, false, st); fixed != val {
				c.Stages[st].Vars[v] = fixed
				// The routes that use the variable would fail on it too.
				for i, r := range c.Routes {
					for field, s := range map[string]string{"upstream": r.Upstream, "query": fmt.Sprint(r.Query.Set), "headers": fmt.Sprint(r.Headers.Set)} {
						if strings.Contains(s, "{stage."+v+"}") {
							f.shadow = append(f.shadow, fmt.Sprintf("routes[%d].%s", i, field))
						}
					}
				}
			}
		}
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// greedyParam matches a cloud console's greedy parameter {proxy+}, and a
// bare * or ** segment.
var greedyParam = regexp.MustCompile(`\{([A-Za-z_][A-Za-z0-9_-]*)\+\}|/\*\*?$`)

// greedy rewrites a path written with a greedy parameter the way keyward
// spells it.
func greedy(path string) (string, bool) {
	if !greedyParam.MatchString(path) {
		return "", false
	}
	return greedyParam.ReplaceAllStringFunc(path, func(m string) string {
		if strings.HasPrefix(m, "/") {
			return "/{rest...}"
		}
		return "{" + strings.TrimSuffix(strings.TrimPrefix(m, "{"), "+}") + "...}"
	}), true
}

// origins checks a CORS block's origins for the forms a console accepts
// and browsers never send.
func (f *File) origins(path string, c *CORS) {
	if c == nil {
		return
	}
	for i, o := range c.AllowOrigins {
		p := fmt.Sprintf("%s.allow_origins[%d]", path, i)
		switch unq := strings.Trim(o, `'"`); {
		case unq != o:
			// API Gateway's header mapping wants '*' with its quotes; here
			// the quotes would be part of the origin.
			f.problem(nil, p, "%s: the quotes are part of the value here; did you mean %q?", o, unq)
		case o == "*" || o == "null" || strings.Contains(o, "://"):
		case o != "":
			scheme := "https://"
			if h := strings.Split(o, ":")[0]; h == "localhost" || h == "127.0.0.1" || h == "[::1]" {
				scheme = "http://"
			}
			f.problem(nil, p, "%q is not an origin: an origin has a scheme; did you mean %q?", o, scheme+strings.TrimSuffix(o, "/"))
		}
	}
}

// envRef matches the ways other tools read an environment variable:
// ${VAR}, $VAR (capitals), {env.VAR} and {env:VAR}.
var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Z_][A-Z0-9_]{2,})|\{env[.:]([A-Za-z_][A-Za-z0-9_]*)\}`)

// envRefs reports environment variable references in s, which keyward
// does not expand, saying what to write, and returns s without them.
// inURL is set for upstream URLs, whose scheme and host come from stage
// variables, never from secrets; stage names the stage of a stage
// variable.
func (f *File) envRefs(path, s string, inURL bool, stage string) string {
	m := envRef.FindStringSubmatchIndex(s)
	if m == nil {
		return s
	}
	ref := s[m[0]:m[1]]
	name := ""
	for g := 1; g <= 3; g++ {
		if m[2*g] >= 0 {
			name = s[m[2*g]:m[2*g+1]]
		}
	}
	lower := strings.ToLower(name)
	switch {
	case stage != "":
		f.problem(nil, path, "keyward does not expand %s: write the value itself (stage variables are plain text in the file), or, for a credential, stages: { %s: { secrets: { %s: { env: %s } } } } and {secret.%s} where it is used",
			ref, stage, lower, name, lower)
	case inURL && inAuthority(s, m[0]):
		f.problem(nil, path, "keyward does not expand %s: the scheme and host come from a stage variable: stages: { prod: { prefix: /prod, vars: { %s: \"https://...\" } } } and write {stage.%s}", ref, lower, lower)
	default:
		secretName, declared := lower, false
		for n, src := range f.Config.Secrets {
			if src.Env == name {
				secretName, declared = n, true
			}
		}
		if declared {
			f.problem(nil, path, "keyward does not expand %s: write {secret.%s} (secrets.%s reads %s)", ref, secretName, secretName, name)
		} else {
			f.problem(nil, path, "keyward does not expand %s: declare it as a secret, secrets: { %s: { env: %s } }, and write {secret.%s}", ref, secretName, name, secretName)
		}
	}
	return envRef.ReplaceAllString(s, "")
}

// inAuthority reports whether offset i of URL s is in its scheme or host.
func inAuthority(s string, i int) bool {
	sep := strings.Index(s, "://")
	if sep < 0 || i < sep {
		return true
	}
	slash := strings.IndexAny(s[sep+3:], "/?")
	return slash < 0 || i < sep+3+slash
}
