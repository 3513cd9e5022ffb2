package gateway

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/secret"
)

// StoreURL is the config's store: value with every {secret.NAME} in it
// replaced by that secret's value, escaped for a URL: so that a Redis
// password can come from the environment or a file, as every other
// credential does, instead of being written in keyward.yaml
// (store: "rediss://:{secret.redis}@redis.internal:6380"). The server
// and `keyward keys` / `keyward pause` open what it returns; getenv nil
// means os.Getenv. Its errors never quote a value.
func StoreURL(f *config.File, getenv func(string) string) (string, error) {
	s := f.Config.Store
	var b strings.Builder
	for {
		i := strings.IndexByte(s, '{')
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return "", fmt.Errorf("an unclosed { in the store URL: write {secret.NAME}")
		}
		ref := s[i+1 : i+j]
		name, ok := strings.CutPrefix(ref, "secret.")
		if !ok {
			// The text between the braces is not repeated: it may be
			// part of a password written in the URL.
			return "", fmt.Errorf("a { in the store URL that is not a {secret.NAME} placeholder: a password with braces goes in a secret")
		}
		src, declared := f.Config.Secrets[name]
		if !declared {
			return "", fmt.Errorf("{secret.%s} in the store URL: declare it under secrets (secrets: { %s: { env: REDIS_PASSWORD } })", name, name)
		}
		file := src.File
		if file != "" && !filepath.IsAbs(file) {
			file = filepath.Join(filepath.Dir(f.Name), file)
		}
		v, err := secret.Load(name, secret.Source{Env: src.Env, File: file}, getenv)
		if err != nil {
			return "", fmt.Errorf("{secret.%s} in the store URL: %w", name, err)
		}
		b.WriteString(s[:i])
		b.WriteString(escapeUserinfo(v.Reveal()))
		s = s[i+j+1:]
	}
}

// escapeUserinfo percent-encodes everything but RFC 3986's unreserved
// characters, so a password holding @, :, / or % stays one password.
func escapeUserinfo(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}
