package deploy_test

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const k8sDir = "deploy/kubernetes"

// k8sObjects returns the objects of the kustomization's resources by kind
// and name, and the kustomization itself.
func k8sObjects(t *testing.T) (objs map[string]map[string]any, kustomization map[string]any) {
	t.Helper()
	kustomization = yamlFile(t, k8sDir+"/kustomization.yaml")
	objs = map[string]map[string]any{}
	for _, r := range strs(kustomization, "resources") {
		p := k8sDir + "/" + r
		for _, o := range yamlDocs(t, p, readFile(t, p)) {
			key := str(o, "kind") + "/" + str(o, "metadata", "name")
			if objs[key] != nil {
				t.Errorf("%s: %s defined twice", p, key)
			}
			objs[key] = o
		}
	}
	return objs, kustomization
}

// generator returns the kustomization's generator entry named name.
func generator(kustomization map[string]any, kind, name string) map[string]any {
	for _, g := range list(kustomization, kind) {
		if str(g, "name") == name {
			m, _ := g.(map[string]any)
			return m
		}
	}
	return nil
}

// matches reports whether labels carry every selector label.
func matches(selector, labels any) bool {
	sel, _ := selector.(map[string]any)
	lab, _ := labels.(map[string]any)
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if fmt.Sprint(lab[k]) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

// TestKubernetes checks deploy/kubernetes: a hardened Deployment whose
// probes, ports, config path and secrets agree with keyward.yaml and the
// image, a Service, PodDisruptionBudget and HorizontalPodAutoscaler that
// select its pods, and a persistent Redis. kubectl apply cannot run here
// (no cluster).
func TestKubernetes(t *testing.T) {
	objs, kz := k8sObjects(t)
	dep := objs["Deployment/keyward"]
	if dep == nil {
		t.Fatal("no Deployment keyward")
	}
	pod := get(dep, "spec", "template", "spec")
	podLabels := get(dep, "spec", "template", "metadata", "labels")
	if !matches(get(dep, "spec", "selector", "matchLabels"), podLabels) {
		t.Error("the Deployment's selector does not select its pods")
	}
	if n, _ := strconv.Atoi(str(dep, "spec", "replicas")); n < 2 {
		t.Errorf("replicas %s, want at least 2", str(dep, "spec", "replicas"))
	}
	if str(dep, "spec", "strategy", "rollingUpdate", "maxUnavailable") != "0" {
		t.Error("rollingUpdate.maxUnavailable is not 0: a rollout would lower capacity")
	}

	// Hardening: the restricted Pod Security Standard and a read-only
	// root file system.
	uid, gid := finalUser(t, readDockerfile(t))
	for k, want := range map[string]string{"runAsNonRoot": "true", "runAsUser": uid, "runAsGroup": gid, "seccompProfile.type": "RuntimeDefault"} {
		if got := str(pod, append([]string{"securityContext"}, strings.Split(k, ".")...)...); got != want {
			t.Errorf("pod securityContext.%s = %q, want %q", k, got, want)
		}
	}
	if str(pod, "automountServiceAccountToken") != "false" {
		t.Error("automountServiceAccountToken is not false: keyward never calls the API server")
	}
	containers := list(pod, "containers")
	if len(containers) != 1 {
		t.Fatalf("%d containers, want 1", len(containers))
	}
	c := containers[0]
	for k, want := range map[string]string{"allowPrivilegeEscalation": "false", "readOnlyRootFilesystem": "true"} {
		if got := str(c, "securityContext", k); got != want {
			t.Errorf("container securityContext.%s = %q, want %q", k, got, want)
		}
	}
	if !slices.Equal(strs(c, "securityContext", "capabilities", "drop"), []string{"ALL"}) {
		t.Errorf("capabilities.drop %v, want [ALL]", strs(c, "securityContext", "capabilities", "drop"))
	}
	if ns := objs["Namespace/"+str(kz, "namespace")]; str(ns, "metadata", "labels", "pod-security.kubernetes.io/enforce") != "restricted" {
		t.Errorf("namespace %s does not enforce the restricted Pod Security Standard", str(kz, "namespace"))
	}

	// The config: the args' path is keyward.yaml from the ConfigMap, in a
	// volume mounted as a directory (a subPath mount never sees updates,
	// so the config would never reload).
	args := strs(c, "args")
	if len(args) != 3 || args[0] != "serve" || args[1] != "-c" || args[2] != configPath {
		t.Fatalf("args %v, want [serve -c %s]", args, configPath)
	}
	files := map[string]string{} // path in the container -> "configMap NAME KEY" or "secret NAME KEY"
	for _, m := range list(c, "volumeMounts") {
		if str(m, "subPath") != "" {
			t.Errorf("volumeMount %s uses subPath: it is never updated, so keyward would never reload it", str(m, "name"))
		}
		if str(m, "readOnly") != "true" {
			t.Errorf("volumeMount %s is not readOnly", str(m, "name"))
		}
		for _, v := range list(pod, "volumes") {
			if str(v, "name") != str(m, "name") {
				continue
			}
			for _, src := range list(v, "projected", "sources") {
				for _, kind := range []string{"configMap", "secret"} {
					for _, it := range list(src, kind, "items") {
						files[path.Join(str(m, "mountPath"), str(it, "path"))] = kind + " " + str(src, kind, "name") + " " + str(it, "key")
					}
				}
			}
		}
	}
	cm := generator(kz, "configMapGenerator", "keyward-config")
	if files[configPath] != "configMap keyward-config keyward.yaml" || cm == nil || !slices.Contains(strs(cm, "files"), "keyward.yaml") {
		t.Fatalf("%s is %q, want keyward.yaml of the keyward-config ConfigMap generated from %s/keyward.yaml", configPath, files[configPath], k8sDir)
	}
	if str(cm, "options", "disableNameSuffixHash") != "true" {
		t.Error("the keyward-config ConfigMap gets a hash suffix: an edit would restart the pods instead of reloading them")
	}
	cfgPath := k8sDir + "/keyward.yaml"
	cfg := yamlFile(t, cfgPath)
	for _, k := range []string{"cert", "key"} {
		p := configRelative(str(cfg, "tls", k))
		if p == "" {
			t.Errorf("%s has no tls.%s: keyward terminates TLS behind the pass-through Service", cfgPath, k)
		} else if !strings.HasPrefix(files[p], "secret ") {
			t.Errorf("tls.%s %s is not a file of a mounted Secret (mounted: %v)", k, p, files)
		}
	}
	// keyward watches each file's directory for the kubelet's ..data swap;
	// in a subdirectory of the volume that directory is itself a link into
	// the swapped data, and only the first update is seen.
	for f := range files {
		if path.Dir(f) != path.Dir(configPath) {
			t.Errorf("%s is not at the top of its volume (%s): keyward would see it change once only", f, path.Dir(configPath))
		}
	}

	// Ports: the probes and containerPorts are the listeners keyward.yaml
	// opens, the admin listener on an address the kubelet reaches.
	ports := map[string]string{}
	for _, p := range list(c, "ports") {
		ports[str(p, "name")] = str(p, "containerPort")
		if !slices.Contains(recipePorts, str(p, "containerPort")) {
			t.Errorf("containerPort %s: the Dockerfile does not EXPOSE it", str(p, "containerPort"))
		}
	}
	want := map[string]string{"https": port(t, str(cfg, "listen")), "http": port(t, str(cfg, "http_redirect")), "admin": port(t, str(cfg, "admin", "listen"))}
	for name, p := range want {
		if ports[name] != p {
			t.Errorf("containerPort %s = %q, want %s from %s", name, ports[name], p, cfgPath)
		}
		if needsLowPorts(p) {
			var set bool
			for _, s := range list(pod, "securityContext", "sysctls") {
				set = set || str(s, "name") == unprivilegedPortsSysctl && str(s, "value") == "0"
			}
			if !set {
				t.Errorf("containerPort %s: the non-root user cannot bind %s without the sysctl %s=0", name, p, unprivilegedPortsSysctl)
			}
		}
	}
	if host, _, _ := strings.Cut(str(cfg, "admin", "listen"), ":"); host == "" || host == "127.0.0.1" || host == "localhost" {
		t.Errorf("admin.listen %q binds loopback: the kubelet probes the pod's address", str(cfg, "admin", "listen"))
	}
	for probe, wantPath := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		if p := str(c, probe, "httpGet", "path"); p != wantPath {
			t.Errorf("%s path %q, want %s", probe, p, wantPath)
		}
		if p := str(c, probe, "httpGet", "port"); p != "admin" && p != want["admin"] {
			t.Errorf("%s port %q, want the admin port", probe, p)
		}
	}

	// Secrets: from the generated Secret, whose example sets every env
	// secret keyward.yaml reads.
	var fromSecret bool
	for _, e := range list(c, "envFrom") {
		if str(e, "secretRef", "name") == "keyward-secrets" {
			fromSecret = true
		}
	}
	sec := generator(kz, "secretGenerator", "keyward-secrets")
	if !fromSecret || sec == nil {
		t.Fatal("the container does not take its environment from the generated keyward-secrets Secret")
	}
	env := map[string]string{}
	for _, f := range strs(sec, "envs") {
		for k, v := range envFile(t, k8sDir+"/"+f+".example") {
			env[k] = v
		}
	}
	for _, e := range secretEnvs(cfg) {
		if _, ok := env[e]; !ok {
			t.Errorf("%s reads secret %s, which the Secret's example does not set", cfgPath, e)
		}
	}

	// Stopping: the grace period covers the preStop pause and the drain.
	pause, _ := strconv.Atoi(str(c, "lifecycle", "preStop", "sleep", "seconds"))
	grace, _ := strconv.Atoi(str(pod, "terminationGracePeriodSeconds"))
	if time.Duration(grace-pause)*time.Second <= shutdownTimeout {
		t.Errorf("terminationGracePeriodSeconds %d minus the preStop pause %d leaves no more than server.shutdown_timeout (%v)", grace, pause, shutdownTimeout)
	}

	// The Service, PDB and HPA point at these pods.
	svc := objs["Service/keyward"]
	if !matches(get(svc, "spec", "selector"), podLabels) {
		t.Error("Service keyward does not select the pods")
	}
	for _, p := range list(svc, "spec", "ports") {
		if ports[str(p, "targetPort")] == "" {
			t.Errorf("Service port %s targets %q, not a named containerPort", str(p, "name"), str(p, "targetPort"))
		}
	}
	// Without a forwarding proxy, the connection's source is the client:
	// only a Service that keeps it makes per-client limits work.
	if str(svc, "spec", "externalTrafficPolicy") != "Local" && len(list(cfg, "client_ip", "trusted_proxies")) == 0 {
		t.Error("Service externalTrafficPolicy is not Local: every client would have a node's address")
	}
	if pdb := objs["PodDisruptionBudget/keyward"]; pdb == nil || !matches(get(pdb, "spec", "selector", "matchLabels"), podLabels) {
		t.Error("no PodDisruptionBudget keyward selecting the pods")
	}
	hpa := objs["HorizontalPodAutoscaler/keyward"]
	if str(hpa, "spec", "scaleTargetRef", "kind") != "Deployment" || str(hpa, "spec", "scaleTargetRef", "name") != "keyward" {
		t.Error("no HorizontalPodAutoscaler scaling Deployment keyward")
	}
	if n, _ := strconv.Atoi(str(hpa, "spec", "minReplicas")); n < 2 {
		t.Errorf("HPA minReplicas %s, want at least 2", str(hpa, "spec", "minReplicas"))
	}
	if str(c, "resources", "requests", "cpu") == "" {
		t.Error("no cpu request: the HPA's utilization target is a share of it")
	}

	// Redis: persistent, the store keyward.yaml names.
	redis := objs["StatefulSet/keyward-redis"]
	rc := get(redis, "spec", "template", "spec", "containers", "0")
	rargs := strings.Join(strs(rc, "args"), " ")
	for _, want := range []string{"--appendonly yes", "--maxmemory-policy noeviction"} {
		if !strings.Contains(rargs, want) {
			t.Errorf("redis args %q: want %s", rargs, want)
		}
	}
	if len(list(redis, "spec", "volumeClaimTemplates")) == 0 {
		t.Error("redis has no volume: a restart would lose budgets and API keys")
	}
	if store := str(cfg, "store"); !strings.HasPrefix(store, "redis://keyward-redis:") || objs["Service/keyward-redis"] == nil {
		t.Errorf("store %q: want the keyward-redis Service", store)
	}

	checkConfig(t, cfgPath, readFile(t, cfgPath), env)
}

// TestKustomizeBuild builds the kustomization with kubectl (when
// installed) and checks what kustomize changes: the generated names and
// the namespace.
func TestKustomizeBuild(t *testing.T) {
	build := kustomizeCommand(t)
	dir := t.TempDir()
	entries, err := os.ReadDir(filepath.Join(root, k8sDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b := readFile(t, k8sDir+"/"+e.Name())
		name := e.Name()
		if name == "secrets.env" {
			continue // the user's own; the example stands in for it
		}
		if err := os.WriteFile(filepath.Join(dir, strings.TrimSuffix(name, ".example")), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(build[0], append(build[1:], dir)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(build, " "), err, out)
	}
	objs := map[string]map[string]any{}
	for _, o := range yamlDocs(t, "kustomize output", out) {
		if ns := str(o, "metadata", "namespace"); ns != "keyward" && str(o, "kind") != "Namespace" {
			t.Errorf("%s/%s is in namespace %q, want keyward", str(o, "kind"), str(o, "metadata", "name"), ns)
		}
		objs[str(o, "kind")+"/"+str(o, "metadata", "name")] = o
	}
	if objs["ConfigMap/keyward-config"] == nil {
		t.Error("no ConfigMap keyward-config (without a hash suffix)")
	}
	if !strings.Contains(str(objs["ConfigMap/keyward-config"], "data", "keyward.yaml"), "routes:") {
		t.Error("the ConfigMap does not hold keyward.yaml")
	}
	c := get(objs["Deployment/keyward"], "spec", "template", "spec", "containers", "0")
	secret := str(c, "envFrom", "0", "secretRef", "name")
	if !strings.HasPrefix(secret, "keyward-secrets-") || objs["Secret/"+secret] == nil {
		t.Errorf("envFrom names Secret %q: want the generated keyward-secrets-HASH", secret)
	}
}

// kustomizeCommand finds what builds a kustomization: kubectl kustomize,
// or kustomize build (scripts/deps.sh installs kustomize with go install
// where there is no kubectl: Debian's kubectl is too old for the
// ConfigMap generator's options). Missing both, the test skips locally
// and fails in CI.
func kustomizeCommand(t *testing.T) []string {
	t.Helper()
	if kubectl, err := exec.LookPath("kubectl"); err == nil {
		return []string{kubectl, "kustomize"}
	}
	candidates := []string{"kustomize"}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		candidates = append(candidates, filepath.Join(strings.TrimSpace(string(out)), "bin", "kustomize"))
	}
	for _, c := range candidates {
		if p, err := exec.LookPath(c); err == nil {
			return []string{p, "build"}
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("neither kubectl nor kustomize is installed (scripts/deps.sh installs kustomize)")
	}
	t.Skip("neither kubectl nor kustomize is installed (go install sigs.k8s.io/kustomize/kustomize/v5@v5.6.0)")
	return nil
}
