package deploy_test

import (
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const composePath = "deploy/compose.yaml"

// shutdownTimeout is server.shutdown_timeout's default: a supervisor
// must give keyward at least this long to drain before killing it.
const shutdownTimeout = 30 * time.Second

// TestCompose checks deploy/compose.yaml: two hardened keyward instances
// built from the Dockerfile, one persistent Redis they wait for, and a
// config whose ports, paths and secrets agree with the file's mounts,
// published ports and env files. `docker compose up` cannot run here (no
// container engine).
func TestCompose(t *testing.T) {
	c := yamlFile(t, composePath)
	df := readDockerfile(t)
	uid, gid := finalUser(t, df)
	services, _ := get(c, "services").(map[string]any)

	var keywards []string
	for name, s := range services {
		if str(s, "build", "dockerfile") == dockerfilePath {
			keywards = append(keywards, name)
		}
	}
	slices.Sort(keywards)
	if len(keywards) != 2 {
		t.Fatalf("services built from %s: %v, want two keyward instances", dockerfilePath, keywards)
	}

	redisName := ""
	for name, s := range services {
		if strings.HasPrefix(str(s, "image"), "redis:") || strings.HasPrefix(str(s, "image"), "valkey/") {
			redisName = name
		}
	}
	redis := services[redisName]
	if redis == nil {
		t.Fatal("no redis service")
	}
	cmd := strings.Join(strs(redis, "command"), " ")
	for _, want := range []string{"--appendonly yes", "--maxmemory-policy noeviction"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("redis command %q: want %s (a restart or eviction would lose budgets and API keys)", cmd, want)
		}
	}
	if len(list(redis, "healthcheck", "test")) == 0 {
		t.Error("redis has no healthcheck: the instances cannot wait for it")
	}
	if list(redis, "ports") != nil {
		t.Error("redis publishes ports: it has no password, only the instances may reach it")
	}
	if !slices.ContainsFunc(strs(redis, "volumes"), func(v string) bool { return strings.HasSuffix(v, ":/data") }) {
		t.Errorf("redis volumes %v: want a volume at /data (appendonly writes there)", strs(redis, "volumes"))
	}

	for _, name := range keywards {
		t.Run(name, func(t *testing.T) {
			s := services[name]
			if str(s, "read_only") != "true" {
				t.Error("read_only is not true")
			}
			if str(s, "user") != uid+":"+gid {
				t.Errorf("user %q, want the image's %s:%s", str(s, "user"), uid, gid)
			}
			if !slices.Equal(strs(s, "cap_drop"), []string{"ALL"}) {
				t.Errorf("cap_drop %v, want [ALL]", strs(s, "cap_drop"))
			}
			if !slices.Contains(strs(s, "security_opt"), "no-new-privileges:true") {
				t.Errorf("security_opt %v: want no-new-privileges:true", strs(s, "security_opt"))
			}
			if str(s, "depends_on", redisName, "condition") != "service_healthy" {
				t.Errorf("depends_on %s: want condition service_healthy", redisName)
			}
			if d, err := time.ParseDuration(str(s, "stop_grace_period")); err != nil || d <= shutdownTimeout {
				t.Errorf("stop_grace_period %q: want more than server.shutdown_timeout (%v)", str(s, "stop_grace_period"), shutdownTimeout)
			}

			// The config: the command's path, inside a directory mounted
			// read-only (a directory, so that an edit on the host is seen:
			// a single-file bind mount keeps the replaced inode).
			args := strs(s, "command")
			if len(args) != 3 || args[0] != "serve" || args[1] != "-c" {
				t.Fatalf("command %v, want [serve -c FILE]", args)
			}
			cfgHost := ""
			mounts := map[string]string{} // container path -> host path or volume
			for _, v := range strs(s, "volumes") {
				parts := strings.Split(v, ":")
				if len(parts) < 2 {
					t.Errorf("volume %q: want SOURCE:TARGET[:ro]", v)
					continue
				}
				mounts[parts[1]] = parts[0]
				if parts[1] == path.Dir(args[2]) {
					if len(parts) != 3 || parts[2] != "ro" {
						t.Errorf("volume %q: the config directory is not read-only", v)
					}
					cfgHost = filepath.Join("deploy", parts[0], path.Base(args[2]))
				}
			}
			if cfgHost == "" {
				t.Fatalf("no volume mounts %s, the directory of the command's config", path.Dir(args[2]))
			}
			if args[2] != configPath {
				t.Errorf("config at %s, want %s as in the other recipes", args[2], configPath)
			}
			if mounts[stateDir] == "" || strings.Contains(mounts[stateDir], "/") {
				t.Errorf("volumes %v: want a named volume at %s (ACME state, shared)", strs(s, "volumes"), stateDir)
			}
			cfg := yamlFile(t, cfgHost)

			// Secrets: every env secret of the config is in the env files'
			// examples, which the user copies and fills in.
			env := map[string]string{}
			for _, f := range strs(s, "env_file") {
				for k, v := range envFile(t, filepath.Join("deploy", f+".example")) {
					env[k] = v
				}
			}
			for _, e := range secretEnvs(cfg) {
				if _, ok := env[e]; !ok {
					t.Errorf("%s reads secret %s, which the env files' examples do not set", cfgHost, e)
				}
			}

			// Certificates are inside the mounted config directory.
			for _, k := range []string{"cert", "key"} {
				if p := configRelative(str(cfg, "tls", k)); p != "" && !strings.HasPrefix(p, path.Dir(args[2])+"/") {
					t.Errorf("tls.%s %s is not under the mounted %s", k, p, path.Dir(args[2]))
				}
			}
			if p := str(cfg, "tls", "acme", "storage"); p != "" && !strings.HasPrefix(p, stateDir+"/") {
				t.Errorf("tls.acme.storage %s is not under the %s volume", p, stateDir)
			}

			// Published ports reach the listeners the config opens.
			listening := []string{port(t, str(cfg, "listen")), port(t, str(cfg, "admin", "listen"))}
			if r := str(cfg, "http_redirect"); r != "" {
				listening = append(listening, port(t, r))
			}
			for _, p := range strs(s, "ports") {
				parts := strings.Split(p, ":")
				target := parts[len(parts)-1]
				if !slices.Contains(listening, target) {
					t.Errorf("port %q: the config listens on %v", p, listening)
				}
				if !slices.Contains(recipePorts, target) {
					t.Errorf("port %q: the Dockerfile does not EXPOSE %s", p, target)
				}
				if target == port(t, str(cfg, "admin", "listen")) && (len(parts) != 3 || parts[0] != "127.0.0.1") {
					t.Errorf("port %q publishes the admin listener beyond the host's loopback", p)
				}
				if needsLowPorts(target) && str(s, "sysctls", unprivilegedPortsSysctl) != "0" {
					t.Errorf("port %q: the non-root user cannot bind %s without sysctls %s: 0", p, target, unprivilegedPortsSysctl)
				}
			}
			if host, _, _ := strings.Cut(strings.TrimPrefix(str(cfg, "admin", "listen"), "["), ":"); host == "" || host == "127.0.0.1" || host == "localhost" {
				t.Errorf("admin.listen %q: loopback inside the container is unreachable through a published port", str(cfg, "admin", "listen"))
			}
			if store := str(cfg, "store"); !strings.HasPrefix(store, "redis://"+redisName+":") {
				t.Errorf("store %q: want the %s service", store, redisName)
			}

			checkConfig(t, cfgHost, readFile(t, cfgHost), env)
		})
	}
}
