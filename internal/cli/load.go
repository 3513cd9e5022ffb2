package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
)

// compile loads and compiles the config at path, printing its warnings.
// With noSecrets, every secret is taken as present with a placeholder
// value (placeholderSecrets), so that CI can check a config without the
// credentials.
func compile(path string, noSecrets bool, opts gateway.Options, stderr io.Writer) (*config.File, *gateway.Gateway, error) {
	f, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	if noSecrets {
		opts.Getenv = placeholderSecrets(f)
		opts.SkipTLSFiles = true // the key is a secret too
	}
	g, warns, err := gateway.Compile(f, opts)
	printWarnings(stderr, warns)
	return f, g, err
}

// printWarnings prints each warning once, in the form of errors, in the
// order of the file.
func printWarnings(w io.Writer, warns []*config.Error) {
	warns = slices.Clone(warns)
	slices.SortStableFunc(warns, func(a, b *config.Error) int { return a.Line - b.Line })
	seen := map[string]bool{}
	for _, warn := range warns {
		line := fmt.Sprintf("%s:%d: warning: %s: %s", warn.File, warn.Line, warn.Path, warn.Msg)
		if !seen[line] {
			seen[line] = true
			fmt.Fprintln(w, line)
		}
	}
}

// placeholderSecrets rewrites every well-formed secret source of f to an
// environment variable of its own and returns the getenv that supplies
// them: a placeholder per secret, long enough for every use (a visitor
// signing key wants 32 bytes) and distinct, so `keyward test` still
// shows which secret goes where. A source that is not well formed (both
// env and file, or neither) is left alone: its error is still reported.
func placeholderSecrets(f *config.File) func(string) string {
	values := map[string]string{}
	rewrite := func(scope string, m map[string]config.SecretSource) {
		for name, src := range m {
			if (src.Env == "") == (src.File == "") {
				continue
			}
			env := "KEYWARD_PLACEHOLDER_" + scope + name
			m[name] = config.SecretSource{Env: env}
			v := "placeholder-" + name + "-"
			values[env] = v + strings.Repeat("0", max(0, 48-len(v)))
		}
	}
	rewrite("", f.Config.Secrets)
	for stage, st := range f.Config.Stages {
		rewrite(stage+"/", st.Secrets)
	}
	return func(k string) string { return values[k] }
}

// summary says what a gateway serves, counted as serve's log counts it
// (gateway.Count).
func summary(g *gateway.Gateway) string {
	c := g.Count()
	s := plural(c.Routes, "route")
	if c.Stages > 0 {
		s += fmt.Sprintf(" in %s (%d mounted)", plural(c.Stages, "stage"), c.Mounted)
	}
	return s
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
