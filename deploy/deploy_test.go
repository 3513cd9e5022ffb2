// Package deploy_test checks the deployment recipes in deploy/ against
// each other and against keyward itself: the Dockerfile's build command is
// run and its binary inspected, the compose file and the Kubernetes
// manifests are parsed (and built with kubectl kustomize when it is
// installed) and held to their invariants, the systemd unit is verified
// with systemd-analyze, each recipe's keyward.yaml passes keyward check,
// and the built binary is started with the recipes' configs. What cannot
// run on a machine without a container engine or a cluster (docker build,
// docker compose up, kubectl apply) is checked statically;
// docs/DEPLOY.md says which is which.
package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/keyward/keyward/internal/cli"
)

// root is the repository root, relative to this package's directory (the
// working directory of its tests).
const root = ".."

// readFile returns the content of a file under the repository root.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return b
}

// yamlDocs decodes every document of a YAML stream into generic values.
func yamlDocs(t *testing.T, name string, b []byte) []map[string]any {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("parsing %s: %v", name, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	return docs
}

// yamlFile decodes a one-document YAML file under the repository root.
func yamlFile(t *testing.T, path string) map[string]any {
	t.Helper()
	docs := yamlDocs(t, path, readFile(t, path))
	if len(docs) != 1 {
		t.Fatalf("%s: %d YAML documents, want 1", path, len(docs))
	}
	return docs[0]
}

// get walks a generic YAML value along keys (map keys, or list indexes
// as decimal strings) and returns what is there, or nil.
func get(v any, keys ...string) any {
	for _, k := range keys {
		switch m := v.(type) {
		case map[string]any:
			v = m[k]
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(m) {
				return nil
			}
			v = m[i]
		default:
			return nil
		}
	}
	return v
}

// str returns the value at keys as a string ("" if absent); numbers and
// booleans are formatted, since YAML decodes 65532 as a number.
func str(v any, keys ...string) string {
	switch x := get(v, keys...).(type) {
	case nil:
		return ""
	case string:
		return x
	default:
		return fmt.Sprint(x)
	}
}

// list returns the list at keys, or nil.
func list(v any, keys ...string) []any {
	l, _ := get(v, keys...).([]any)
	return l
}

// strs returns the list at keys as strings.
func strs(v any, keys ...string) []string {
	var out []string
	for _, e := range list(v, keys...) {
		out = append(out, str(e))
	}
	return out
}

// configRelative resolves a path in a recipe's keyward.yaml as keyward
// does: relative to the config file's directory, configPath's.
func configRelative(p string) string {
	if p == "" || path.IsAbs(p) {
		return p
	}
	return path.Join(path.Dir(configPath), p)
}

// port returns the port of a listen address such as ":8443" or
// "0.0.0.0:9090".
func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	return p
}

// envFile parses KEY=value lines (comments and blank lines skipped), the
// format of docker's env_file, kustomize's envs and systemd's
// EnvironmentFile alike.
func envFile(t *testing.T, path string) map[string]string {
	t.Helper()
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, path)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.ContainsAny(k, " \t") {
			t.Errorf("%s: %q is not a KEY=value line", path, line)
			continue
		}
		env[k] = v
	}
	return env
}

// secretEnvs returns the environment variables a keyward config reads its
// secrets from (secrets.NAME.env, and the same in stages).
func secretEnvs(cfg map[string]any) []string {
	var names []string
	add := func(secrets any) {
		m, _ := secrets.(map[string]any)
		for _, s := range m {
			if e := str(s, "env"); e != "" {
				names = append(names, e)
			}
		}
	}
	add(get(cfg, "secrets"))
	stages, _ := get(cfg, "stages").(map[string]any)
	for _, st := range stages {
		add(get(st, "secrets"))
	}
	return names
}

// checkConfig runs `keyward check` on a recipe's config with env as its
// environment, after pointing the files it names on the deployment's
// machine (certificate, key, ACME storage) at stand-ins in a temporary
// directory: check may read them, and they exist only where it is
// deployed. It fails the test with check's output unless check passes.
func checkConfig(t *testing.T, name string, cfg []byte, env map[string]string) {
	t.Helper()
	path := writeRunnable(t, cfg, nil)
	for k, v := range env {
		t.Setenv(k, v)
	}
	var stdout, stderr bytes.Buffer
	if code := cli.Run(context.Background(), []string{"check", "-c", path}, &stdout, &stderr); code != 0 {
		t.Errorf("keyward check %s: exit %d\n%s%s", name, code, stdout.String(), stderr.String())
	}
}

// writeRunnable writes cfg to a temporary directory with its certificate
// and key replaced by a fresh self-signed pair there, its ACME storage
// moved there, and the top-level fields in set replaced, and returns its
// path.
func writeRunnable(t *testing.T, cfg []byte, set map[string]any) string {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal(cfg, &m); err != nil {
		t.Fatalf("parsing config: %v", err)
	}
	dir := t.TempDir()
	if tlsBlock, ok := m["tls"].(map[string]any); ok {
		if tlsBlock["cert"] != nil || tlsBlock["key"] != nil {
			tlsBlock["cert"], tlsBlock["key"] = selfSigned(t, dir)
		}
		if acme, ok := tlsBlock["acme"].(map[string]any); ok && acme["storage"] != nil {
			acme["storage"] = filepath.Join(dir, "acme")
		}
	}
	for k, v := range set {
		m[k] = v
	}
	out, err := yaml.Marshal(m)
	if err != nil {
		t.Fatalf("writing config: %v", err)
	}
	path := filepath.Join(dir, "keyward.yaml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// selfSigned writes a self-signed certificate for localhost and 127.0.0.1
// and its key into dir and returns their paths.
func selfSigned(t *testing.T, dir string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour), // check warns about one that expires soon
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// The binary built by the Dockerfile's own go build command, once per test
// run, shared by the tests that run it.
var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildDir  string
)

// version is what the tests stamp into the binary they build.
const version = "deploy-test"

// binary returns the keyward binary built with the Dockerfile's go build
// command (see dockerBuild), building it on first use. It skips the test
// in -short mode: the build takes tens of seconds.
func binary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary; not in -short mode")
	}
	buildOnce.Do(func() {
		b, err := os.ReadFile(filepath.Join(root, dockerfilePath))
		if err != nil {
			buildErr = err
			return
		}
		df, err := parseDockerfile(b)
		if err != nil {
			buildErr = err
			return
		}
		buildDir, buildErr = os.MkdirTemp("", "keyward-deploy-test-")
		if buildErr != nil {
			return
		}
		builtBin = filepath.Join(buildDir, "keyward")
		cmd, err := dockerBuildCommand(df, builtBin)
		if err != nil {
			buildErr = err
			return
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("building keyward as the Dockerfile does: %v", buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// dockerBuildCommand returns the Dockerfile's go build command, to be run
// from the repository root with its output at out, for this machine's
// platform and with VERSION set to version.
func dockerBuildCommand(df *dockerfile, out string) (*exec.Cmd, error) {
	run, err := df.goBuild()
	if err != nil {
		return nil, err
	}
	vars := map[string]string{"VERSION": version, "TARGETOS": runtime.GOOS, "TARGETARCH": runtime.GOARCH}
	words, err := shellWords(run, vars)
	if err != nil {
		return nil, err
	}
	var env []string
	for len(words) > 0 && strings.Contains(words[0], "=") && words[0] != "go" {
		env, words = append(env, words[0]), words[1:]
	}
	if len(words) < 2 || words[0] != "go" || words[1] != "build" {
		return nil, fmt.Errorf("RUN %q: want [VAR=value...] go build ...", run)
	}
	args := slicesClone(words[1:])
	for i := range args {
		if args[i] == "-o" && i+1 < len(args) {
			args[i+1] = out
		}
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	return cmd, nil
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// shellWords splits a POSIX shell command line into words, expanding $VAR
// and ${VAR} from vars outside single quotes: enough for a Dockerfile's
// RUN line, and an error for anything it does not handle (so that a
// RUN line the test cannot read fails the test instead of being
// misread).
func shellWords(s string, vars map[string]string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		in    bool // inside a word
		quote byte
	)
	expand := func(i int) (int, error) {
		// s[i] == '$'
		j := i + 1
		var name string
		if j < len(s) && s[j] == '{' {
			end := strings.IndexByte(s[j:], '}')
			if end < 0 {
				return 0, fmt.Errorf("unclosed ${ in %q", s)
			}
			name, j = s[j+1:j+end], j+end+1
		} else {
			k := j
			for k < len(s) && (s[k] == '_' || s[k] >= 'A' && s[k] <= 'Z' || s[k] >= 'a' && s[k] <= 'z' || s[k] >= '0' && s[k] <= '9') {
				k++
			}
			name, j = s[j:k], k
		}
		v, ok := vars[name]
		if !ok {
			return 0, fmt.Errorf("variable %q in %q has no test value", name, s)
		}
		cur.WriteString(v)
		return j, nil
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
			i++
		case quote == '"':
			switch c {
			case '"':
				quote = 0
				i++
			case '$':
				j, err := expand(i)
				if err != nil {
					return nil, err
				}
				i = j
			case '\\', '`':
				return nil, fmt.Errorf("%q: escapes in double quotes are not supported here", s)
			default:
				cur.WriteByte(c)
				i++
			}
		case c == ' ' || c == '\t' || c == '\n':
			if in {
				words, in = append(words, cur.String()), false
				cur.Reset()
			}
			i++
		case c == '\'' || c == '"':
			quote, in = c, true
			i++
		case c == '$':
			in = true
			j, err := expand(i)
			if err != nil {
				return nil, err
			}
			i = j
		case strings.IndexByte(";&|<>()`\\*?", c) >= 0:
			return nil, fmt.Errorf("%q: shell syntax %q is not supported here", s, c)
		default:
			cur.WriteByte(c)
			in = true
			i++
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unclosed quote in %q", s)
	}
	if in {
		words = append(words, cur.String())
	}
	return words, nil
}
