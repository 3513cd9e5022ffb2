package deploy_test

import (
	"bytes"
	"compress/gzip"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const (
	dockerfilePath   = "deploy/Dockerfile"
	dockerignorePath = "deploy/Dockerfile.dockerignore"
	// configPath is where every recipe puts keyward.yaml: the image's
	// CMD, compose's and Kubernetes' mounts, the systemd unit.
	configPath = "/etc/keyward/keyward.yaml"
	// stateDir is where every recipe keeps ACME state: the image's
	// volume directory, the systemd unit's StateDirectory.
	stateDir = "/var/lib/keyward"
	// maxBinary bounds the image's binary (24 MB stripped today; the
	// image adds 2 MB of distroless/static). A dependency that bloats it
	// should be a decision, not an accident.
	maxBinary = 32 << 20
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line  int
	cmd   string   // upper case: FROM, RUN, COPY
	flags []string // leading --flags
	args  string   // the rest
}

// stage is a FROM and the instructions up to the next one.
type stage struct {
	from instruction
	ins  []instruction
}

// image is the stage's base image; name its AS name.
func (s *stage) image() string { return strings.Fields(s.from.args)[0] }
func (s *stage) name() string {
	f := strings.Fields(s.from.args)
	if len(f) == 3 && strings.EqualFold(f[1], "AS") {
		return f[2]
	}
	return ""
}

// all returns the stage's instructions named cmd.
func (s *stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.ins {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// dockerfile is a parsed Dockerfile.
type dockerfile struct{ stages []*stage }

// parseDockerfile reads the instructions the way BuildKit does for the
// subset this repository uses: comments and blank lines skipped (also
// inside continuations), lines ending in a backslash joined.
func parseDockerfile(b []byte) (*dockerfile, error) {
	df := &dockerfile{}
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		text := strings.TrimSpace(lines[i])
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		start := i + 1
		for strings.HasSuffix(text, `\`) {
			text = strings.TrimSuffix(text, `\`)
			i++
			for i < len(lines) && (strings.TrimSpace(lines[i]) == "" || strings.HasPrefix(strings.TrimSpace(lines[i]), "#")) {
				i++
			}
			if i == len(lines) {
				return nil, fmt.Errorf("line %d: continuation at the end of the file", start)
			}
			text += " " + strings.TrimSpace(lines[i])
		}
		cmd, rest, _ := strings.Cut(text, " ")
		in := instruction{line: start, cmd: strings.ToUpper(cmd)}
		rest = strings.TrimSpace(rest)
		for strings.HasPrefix(rest, "--") {
			flag, r, _ := strings.Cut(rest, " ")
			in.flags, rest = append(in.flags, flag), strings.TrimSpace(r)
		}
		in.args = rest
		if in.cmd == "FROM" {
			df.stages = append(df.stages, &stage{from: in})
			continue
		}
		if len(df.stages) == 0 {
			if in.cmd == "ARG" {
				continue // an ARG before FROM parameterizes the FROM lines
			}
			return nil, fmt.Errorf("line %d: %s before FROM", start, in.cmd)
		}
		s := df.stages[len(df.stages)-1]
		s.ins = append(s.ins, in)
	}
	if len(df.stages) == 0 {
		return nil, fmt.Errorf("no FROM")
	}
	return df, nil
}

// goBuild returns the command of the build stage's one RUN that runs go
// build, without the RUN's flags.
func (df *dockerfile) goBuild() (string, error) {
	var found []string
	for _, in := range df.stages[0].all("RUN") {
		if strings.Contains(in.args, "go build") {
			found = append(found, in.args)
		}
	}
	if len(found) != 1 {
		return "", fmt.Errorf("%d RUN instructions with go build in the first stage, want 1", len(found))
	}
	return found[0], nil
}

func readDockerfile(t *testing.T) *dockerfile {
	t.Helper()
	df, err := parseDockerfile(readFile(t, dockerfilePath))
	if err != nil {
		t.Fatalf("%s: %v", dockerfilePath, err)
	}
	return df
}

// execForm decodes an instruction's JSON (exec form) arguments; the shell
// form would need a shell, which the final image does not have.
func execForm(t *testing.T, in instruction) []string {
	t.Helper()
	var args []string
	if err := json.Unmarshal([]byte(in.args), &args); err != nil {
		t.Fatalf("%s line %d: %s %s is not in exec form (a JSON array): %v", dockerfilePath, in.line, in.cmd, in.args, err)
	}
	return args
}

// goModVersion returns go.mod's go line's major.minor ("1.26").
func goModVersion(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(readFile(t, "go.mod"))
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}

// finalUser returns the final stage's USER as uid and gid.
func finalUser(t *testing.T, df *dockerfile) (uid, gid string) {
	t.Helper()
	final := df.stages[len(df.stages)-1]
	users := final.all("USER")
	if len(users) != 1 {
		t.Fatalf("final stage has %d USER instructions, want 1", len(users))
	}
	u, g, _ := strings.Cut(users[0].args, ":")
	return u, g
}

func TestDockerfileStages(t *testing.T) {
	df := readDockerfile(t)
	if len(df.stages) != 2 {
		t.Fatalf("%d stages, want 2 (build, final)", len(df.stages))
	}
	build, final := df.stages[0], df.stages[1]

	if want := "golang:" + goModVersion(t); build.image() != want && !strings.HasPrefix(build.image(), want+"-") && !strings.HasPrefix(build.image(), want+".") {
		t.Errorf("build stage FROM %s, want %s (go.mod's Go)", build.image(), want)
	}
	if build.name() != "build" {
		t.Errorf("build stage is named %q, want build", build.name())
	}
	if !slices.Contains(build.from.flags, "--platform=$BUILDPLATFORM") {
		t.Errorf("build stage FROM flags %q: want --platform=$BUILDPLATFORM (cross-compile, no emulation)", build.from.flags)
	}

	// The final image: no shell, no libc, no package manager.
	if !regexp.MustCompile(`^gcr\.io/distroless/static-debian\d+:nonroot$`).MatchString(final.image()) {
		t.Errorf("final stage FROM %s, want gcr.io/distroless/static-debianN:nonroot", final.image())
	}
	if runs := final.all("RUN"); len(runs) > 0 {
		t.Errorf("final stage line %d: RUN needs a shell, which distroless has not", runs[0].line)
	}
	uid, gid := finalUser(t, df)
	if !regexp.MustCompile(`^[1-9][0-9]*$`).MatchString(uid) || !regexp.MustCompile(`^[0-9]+$`).MatchString(gid) {
		t.Errorf("USER %s:%s: want a numeric non-root uid:gid (Kubernetes' runAsNonRoot cannot verify a name)", uid, gid)
	}

	// The binary go build writes is the one copied and run.
	run, err := df.goBuild()
	if err != nil {
		t.Fatal(err)
	}
	words, err := shellWords(run, map[string]string{"VERSION": "v", "TARGETOS": "linux", "TARGETARCH": "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	out := words[slices.Index(words, "-o")+1]
	var binaryDest string
	for _, in := range final.all("COPY") {
		f := strings.Fields(in.args)
		if slices.Contains(in.flags, "--from=build") && len(f) == 2 && f[0] == out {
			binaryDest = f[1]
		}
	}
	if binaryDest == "" {
		t.Fatalf("final stage does not COPY --from=build %s (go build's -o)", out)
	}
	entry := final.all("ENTRYPOINT")
	if len(entry) != 1 || !slices.Equal(execForm(t, entry[0]), []string{binaryDest}) {
		t.Errorf("ENTRYPOINT %v, want [%q]", entry, binaryDest)
	}
	cmd := final.all("CMD")
	if len(cmd) != 1 || !slices.Equal(execForm(t, cmd[0]), []string{"serve", "-c", configPath}) {
		t.Errorf("CMD %v, want [serve -c %s]", cmd, configPath)
	}

	// The state directory exists in the image, owned by the user, so that
	// a volume mounted there (a copy of it) is writable on a read-only
	// root file system.
	var stateOwned bool
	for _, in := range final.all("COPY") {
		f := strings.Fields(in.args)
		if len(f) == 2 && f[1] == stateDir && slices.Contains(in.flags, "--chown="+uid+":"+gid) {
			stateOwned = true
		}
	}
	if !stateOwned {
		t.Errorf("final stage: want a COPY --chown=%s:%s of an empty directory to %s", uid, gid, stateDir)
	}

	var exposed []string
	for _, in := range final.all("EXPOSE") {
		exposed = append(exposed, strings.Fields(in.args)...)
	}
	for _, p := range recipePorts {
		if !slices.Contains(exposed, p) {
			t.Errorf("EXPOSE %v: %s missing", exposed, p)
		}
	}
}

// recipePorts are the container ports the compose and Kubernetes recipes
// use (the TLS listener, http_redirect, admin), and the default listen.
var recipePorts = []string{"443", "80", "9090", "8080"}

// unprivilegedPortsSysctl lets a non-root process bind ports under 1024 in
// its container's network namespace when set to 0.
const unprivilegedPortsSysctl = "net.ipv4.ip_unprivileged_port_start"

// needsLowPorts reports whether a container port needs
// unprivilegedPortsSysctl: the image's user has no capability.
func needsLowPorts(port string) bool {
	n, err := strconv.Atoi(port)
	return err == nil && n < 1024
}

func TestDockerfileBuildCommandMatchesMakefile(t *testing.T) {
	df := readDockerfile(t)
	cmd, err := dockerBuildCommand(df, "/tmp/x")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(cmd.Env, "CGO_ENABLED=0") {
		t.Errorf("go build runs without CGO_ENABLED=0: a cgo binary needs a libc the final image does not have")
	}
	args := cmd.Args[1:]
	if !slices.Contains(args, "-trimpath") {
		t.Errorf("go build %v: want -trimpath", args)
	}
	if args[len(args)-1] != "./cmd/keyward" {
		t.Errorf("go build %v: want ./cmd/keyward last", args)
	}
	// The version is stamped into the variable the Makefile stamps.
	m := regexp.MustCompile(`(?m)^LDFLAGS :=.*(-X \S+=)\$\(VERSION\)`).FindSubmatch(readFile(t, "Makefile"))
	if m == nil {
		t.Fatal("Makefile: no LDFLAGS := ... -X ...=$(VERSION)")
	}
	stamp := string(m[1]) + version
	var ldflags string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "-ldflags="); ok {
			ldflags = v
		}
	}
	if !strings.Contains(ldflags, stamp) {
		t.Errorf("go build -ldflags=%q: want %q, as the Makefile's LDFLAGS", ldflags, stamp)
	}
}

// TestDockerBinary runs the Dockerfile's go build and checks the binary
// the image would hold.
func TestDockerBinary(t *testing.T) {
	bin := binary(t)

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has a dynamic loader (PT_INTERP): it is not static")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v (%v): it is not static", libs, err)
	}

	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("build settings CGO_ENABLED=%q -trimpath=%q, want 0 and true", settings["CGO_ENABLED"], settings["-trimpath"])
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	content, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(content, []byte(abs+"/")) {
		t.Errorf("the binary contains the build machine's path %s (-trimpath)", abs)
	}

	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "keyward "+version {
		t.Errorf("keyward version: %q, %v; want %q", out, err, "keyward "+version)
	}

	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	if _, err := io.Copy(w, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Logf("binary: %.1f MB, %.1f MB compressed (the image adds distroless/static, about 2 MB)",
		float64(len(content))/1e6, float64(gz.Len())/1e6)
	if len(content) > maxBinary {
		t.Errorf("binary is %d bytes, over %d: what grew it?", len(content), maxBinary)
	}
}

// TestDockerignoreKeepsTheBuild checks that the build context keeps every
// file go build reads (a context without one fails only in docker build,
// which cannot run here) and leaves out the rest.
func TestDockerignoreKeepsTheBuild(t *testing.T) {
	rules := dockerignore(t)
	needed := []string{"go.mod", "go.sum"}
	for _, arch := range []string{"amd64", "arm64"} {
		cmd := exec.Command("go", "list", "-deps", "-f",
			`{{if .Module}}{{if .Module.Main}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}
{{end}}{{range .EmbedFiles}}{{$d}}/{{.}}
{{end}}{{end}}{{end}}`, "./cmd/keyward")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list: %v", err)
		}
		abs, err := filepath.Abs(root)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range strings.Fields(string(out)) {
			rel, err := filepath.Rel(abs, f)
			if err != nil {
				t.Fatal(err)
			}
			needed = append(needed, filepath.ToSlash(rel))
		}
	}
	if len(needed) < 20 {
		t.Fatalf("go list found %d files; the listing is wrong", len(needed))
	}
	for _, f := range needed {
		if ignored(rules, f) {
			t.Errorf("%s leaves out %s, which go build reads", dockerignorePath, f)
		}
	}
	for _, f := range []string{".git/config", "bin/keyward", "internal/cli/cli_test.go", "internal/cli/testdata/five-errors.yaml", "bench/run.sh", "deploy/compose/secrets.env"} {
		if !ignored(rules, f) {
			t.Errorf("%s sends %s to the build", dockerignorePath, f)
		}
	}
}

// ignoreRule is one line of a .dockerignore file.
type ignoreRule struct {
	re      *regexp.Regexp
	include bool // a "!" line
}

// dockerignore reads the Dockerfile's .dockerignore.
func dockerignore(t *testing.T) []ignoreRule {
	t.Helper()
	var rules []ignoreRule
	for _, line := range strings.Split(string(readFile(t, dockerignorePath)), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r := ignoreRule{}
		if p, ok := strings.CutPrefix(line, "!"); ok {
			r.include, line = true, p
		}
		r.re = regexp.MustCompile("^" + globRegexp(strings.Trim(line, "/")) + "$")
		rules = append(rules, r)
	}
	return rules
}

// globRegexp translates a .dockerignore pattern (Go's filepath.Match with
// ** for any number of directories) to a regular expression.
func globRegexp(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		switch {
		case strings.HasPrefix(p[i:], "**/"):
			b.WriteString("(.*/)?")
			i += 2
		case strings.HasPrefix(p[i:], "**"):
			b.WriteString(".*")
			i++
		case p[i] == '*':
			b.WriteString("[^/]*")
		case p[i] == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(p[i : i+1]))
		}
	}
	return b.String()
}

// ignored reports whether a path is left out of the build context: the
// last rule matching it or one of its parent directories decides, as in
// Docker's pattern matcher.
func ignored(rules []ignoreRule, path string) bool {
	out := false
	for _, r := range rules {
		for p := path; ; {
			if r.re.MatchString(p) {
				out = !r.include
				break
			}
			i := strings.LastIndexByte(p, '/')
			if i < 0 {
				break
			}
			p = p[:i]
		}
	}
	return out
}
