package deploy_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	unitPath   = "deploy/keyward.service"
	dropInPath = "deploy/keyward.service.d/secrets.conf"
	// installedBinary is where the unit runs keyward from.
	installedBinary = "/usr/local/bin/keyward"
	// maxExposure is the highest `systemd-analyze security` exposure the
	// unit may reach (0 is fully locked down, 10 is unprotected; 1.5
	// today).
	maxExposure = 2.0
)

// unitSettings parses a systemd unit file into section.Key -> values (a
// key given twice keeps both, as SystemCallFilter= does).
func unitSettings(t *testing.T, path string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, path)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Errorf("%s: %q is not KEY=value", path, line)
				continue
			}
			out[section+"."+k] = append(out[section+"."+k], v)
		}
	}
	return out
}

// TestSystemdUnit checks the unit's hardening and commands, and verifies
// it with systemd-analyze when installed (a unit cannot be started here:
// systemd is not this machine's init).
func TestSystemdUnit(t *testing.T) {
	u := unitSettings(t, unitPath)
	for k, want := range map[string]string{
		"Service.DynamicUser":             "yes",
		"Service.ProtectSystem":           "strict",
		"Service.ProtectHome":             "yes",
		"Service.PrivateTmp":              "yes",
		"Service.NoNewPrivileges":         "yes",
		"Service.CapabilityBoundingSet":   "CAP_NET_BIND_SERVICE",
		"Service.AmbientCapabilities":     "CAP_NET_BIND_SERVICE",
		"Service.StateDirectory":          "keyward",
		"Service.RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"Service.ExecStart":               installedBinary + " serve -c " + configPath,
		"Service.ExecStartPre":            installedBinary + " check -c " + configPath,
		"Service.ExecReload":              "/bin/kill -HUP $MAINPID",
	} {
		if got := u[k]; !slices.Equal(got, []string{want}) {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if !slices.Contains(u["Service.SystemCallFilter"], "@system-service") {
		t.Errorf("SystemCallFilter %q: want @system-service", u["Service.SystemCallFilter"])
	}
	if "/var/lib/"+u["Service.StateDirectory"][0] != stateDir {
		t.Errorf("StateDirectory %q is not %s", u["Service.StateDirectory"], stateDir)
	}
	if d, err := time.ParseDuration(strings.Join(u["Service.TimeoutStopSec"], "")); err != nil || d <= shutdownTimeout {
		t.Errorf("TimeoutStopSec %q: want more than server.shutdown_timeout (%v)", u["Service.TimeoutStopSec"], shutdownTimeout)
	}
	if u["Service.EnvironmentFile"] != nil {
		t.Error("the unit names an EnvironmentFile: secrets belong in the drop-in")
	}
	d := unitSettings(t, dropInPath)
	if !slices.Equal(d["Service.EnvironmentFile"], []string{"/etc/keyward/secrets.env"}) {
		t.Errorf("%s: EnvironmentFile %q, want /etc/keyward/secrets.env", dropInPath, d["Service.EnvironmentFile"])
	}
}

// installUnit copies the unit and its drop-in into a unit directory, with
// the binary's path replaced by bin (systemd-analyze verify checks that
// it is executable), and returns the unit's path.
func installUnit(t *testing.T, bin string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "keyward.service.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	unit := bytes.ReplaceAll(readFile(t, unitPath), []byte(installedBinary), []byte(bin))
	if err := os.WriteFile(filepath.Join(dir, "keyward.service"), unit, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keyward.service.d", "secrets.conf"), readFile(t, dropInPath), 0o644); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "keyward.service")
}

// systemdAnalyze runs systemd-analyze with the unit's directory as the
// unit search path, so that the drop-in is read too.
func systemdAnalyze(t *testing.T, unit string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin, lookErr := exec.LookPath("systemd-analyze")
	if lookErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze is missing (scripts/deps.sh installs Debian's systemd)")
		}
		t.Skip("systemd-analyze not installed (Debian: apt-get install systemd)")
	}
	cmd := exec.Command(bin, append(args, unit)...)
	cmd.Dir = filepath.Dir(unit)
	// The trailing colon keeps the built-in search path after it.
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+filepath.Dir(unit)+":")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// TestSystemdAnalyzeVerify runs systemd-analyze verify: unknown keys,
// bad values and a missing binary are reported on stderr (often with exit
// status 0), so any output fails.
func TestSystemdAnalyzeVerify(t *testing.T) {
	unit := installUnit(t, binary(t))
	stdout, stderr, err := systemdAnalyze(t, unit, "verify")
	if err != nil || stdout != "" || stderr != "" {
		t.Errorf("systemd-analyze verify: %v\n%s%s", err, stdout, stderr)
	}
}

// TestSystemdAnalyzeSecurity keeps the unit's exposure score, which
// docs/DEPLOY.md quotes, at or under maxExposure.
func TestSystemdAnalyzeSecurity(t *testing.T) {
	unit := installUnit(t, installedBinary)
	stdout, stderr, err := systemdAnalyze(t, unit, "security", "--offline=true", "--no-pager")
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s%s", err, stdout, stderr)
	}
	m := regexp.MustCompile(`Overall exposure level for keyward\.service: (\d+\.\d+)`).FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("no overall exposure level in:\n%s", stdout)
	}
	score, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("systemd-analyze security: exposure %.1f", score)
	if score > maxExposure {
		t.Errorf("exposure %.1f, over %.1f: what lost its protection?\n%s", score, maxExposure, stdout)
	}
	// The figure the unit and the docs quote.
	for _, doc := range []string{unitPath, deployDoc} {
		quoted := regexp.MustCompile(`(\d+\.\d) OK`).FindAllSubmatch(readFile(t, doc), -1)
		if len(quoted) == 0 {
			t.Errorf("%s quotes no exposure figure", doc)
		}
		for _, q := range quoted {
			if string(q[1]) != m[1] {
				t.Errorf("%s quotes exposure %s; systemd-analyze says %s", doc, q[1], m[1])
			}
		}
	}
}
