package deploy_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
)

const deployDoc = "docs/DEPLOY.md"

// fullConfigMark starts the YAML blocks of docs/DEPLOY.md that are whole
// keyward.yaml files; every other YAML block is a fragment of one.
const fullConfigMark = "# /etc/keyward/keyward.yaml"

// docBlocks returns the fenced yaml blocks of a Markdown file (indented
// ones in lists too, their indentation removed).
func docBlocks(t *testing.T, path string) []string {
	t.Helper()
	var blocks []string
	re := regexp.MustCompile("(?ms)^( *)```yaml\n(.*?)^ *```")
	for _, m := range re.FindAllStringSubmatch(string(readFile(t, path)), -1) {
		indent := m[1]
		var lines []string
		for _, l := range strings.Split(m[2], "\n") {
			lines = append(lines, strings.TrimPrefix(l, indent))
		}
		blocks = append(blocks, strings.Join(lines, "\n"))
	}
	return blocks
}

// TestDeployDocConfigs checks the configs docs/DEPLOY.md tells a reader
// to write: the whole ones pass keyward check and fit the systemd unit
// (ports 443 and 80, ACME state where the unit lets keyward write), and
// each fragment passes keyward check put into the whole one.
func TestDeployDocConfigs(t *testing.T) {
	var full []byte
	var fragments []string
	for _, b := range docBlocks(t, deployDoc) {
		if strings.HasPrefix(b, fullConfigMark+"\n") {
			if full != nil {
				t.Fatalf("%s has two whole configs; this test knows one", deployDoc)
			}
			full = []byte(b)
		} else {
			fragments = append(fragments, b)
		}
	}
	if full == nil {
		t.Fatalf("%s has no block starting %q", deployDoc, fullConfigMark)
	}
	if len(fragments) < 3 {
		t.Fatalf("%s: %d config fragments found; the block syntax changed?", deployDoc, len(fragments))
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(full, &cfg); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, e := range secretEnvs(cfg) {
		env[e] = "placeholder-secret-value-for-check"
	}
	for k, want := range map[string]string{"listen": ":443", "http_redirect": ":80"} {
		if str(cfg, k) != want {
			t.Errorf("the VM config's %s is %q, want %q (the unit binds them with CAP_NET_BIND_SERVICE)", k, str(cfg, k), want)
		}
	}
	if s := str(cfg, "tls", "acme", "storage"); !strings.HasPrefix(s, stateDir+"/") {
		t.Errorf("the VM config's tls.acme.storage is %q: the unit lets keyward write under %s only", s, stateDir)
	}
	if !strings.HasPrefix(str(cfg, "admin", "listen"), "127.0.0.1:") {
		t.Errorf("the VM config's admin.listen %q is not loopback", str(cfg, "admin", "listen"))
	}
	checkConfig(t, deployDoc+" (VM)", full, env)

	for i, f := range fragments {
		var frag map[string]any
		if err := yaml.Unmarshal([]byte(f), &frag); err != nil {
			t.Errorf("fragment %d:\n%s\n%v", i, f, err)
			continue
		}
		merged := map[string]any{}
		for k, v := range cfg {
			merged[k] = v
		}
		for k, v := range frag {
			// A fragment's map (its secrets) adds to the whole config's.
			base, isMap := merged[k].(map[string]any)
			add, addMap := v.(map[string]any)
			if isMap && addMap {
				both := map[string]any{}
				for bk, bv := range base {
					both[bk] = bv
				}
				for ak, av := range add {
					both[ak] = av
				}
				v = both
			}
			merged[k] = v
		}
		b, err := yaml.Marshal(merged)
		if err != nil {
			t.Fatal(err)
		}
		fenv := map[string]string{}
		for k, v := range env {
			fenv[k] = v
		}
		for _, e := range secretEnvs(merged) {
			fenv[e] = "placeholder-secret-value-for-check"
		}
		checkConfig(t, deployDoc+" fragment:\n"+f, b, fenv)
	}
}

// TestDeployDocLinks checks that the files docs/DEPLOY.md links to exist.
func TestDeployDocLinks(t *testing.T) {
	doc := string(readFile(t, deployDoc))
	links := regexp.MustCompile(`\]\((\.\./[^)#]+|[A-Z]+\.md)`).FindAllStringSubmatch(doc, -1)
	if len(links) < 5 {
		t.Fatalf("%d relative links found; the link syntax changed?", len(links))
	}
	for _, l := range links {
		p := filepath.Join(root, "docs", l[1])
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s links to %s: %v", deployDoc, l[1], err)
		}
	}
}
