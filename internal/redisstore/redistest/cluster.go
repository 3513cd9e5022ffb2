package redistest

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// clusterNodeTimeout is how long a cluster node may not answer before
// the others think it failed: short, so that failovers are quick.
const clusterNodeTimeout = 1000

// clusterTimeout bounds how long forming the cluster, or a failover, may
// take.
const clusterTimeout = 20 * time.Second

// Cluster is a Redis Cluster owned by one test: masters that share the
// slots in equal ranges, and the replicas AddReplica added.
type Cluster struct {
	t        testing.TB
	Masters  []*Server
	Replicas []*Server
}

// StartCluster starts a Redis Cluster of masters nodes, each serving an
// equal range of the slots, and stops it in t.Cleanup. It forms the
// cluster by hand, as redis-cli --cluster create does, and returns once
// every node says the cluster is ok.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	for i := range masters {
		n := c.startNode()
		// Distinct config epochs from the start, so that the nodes need not
		// resolve collisions before the cluster is ok.
		n.Do("CLUSTER", "SET-CONFIG-EPOCH", i+1)
		first, last := i*clusterSlots/masters, (i+1)*clusterSlots/masters-1
		n.Do("CLUSTER", "ADDSLOTSRANGE", first, last)
		c.Masters = append(c.Masters, n)
	}
	for _, n := range c.Masters[1:] {
		c.Masters[0].Do("CLUSTER", "MEET", "127.0.0.1", n.Port())
	}
	c.waitOK()
	return c
}

// startNode starts a cluster-enabled redis-server.
func (c *Cluster) startNode() *Server {
	c.t.Helper()
	s := &Server{bin: lookPath(c.t, Binary, "redis-server")}
	s.args = func(s *Server) []string {
		return append(s.serverArgs(),
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.Itoa(clusterNodeTimeout),
		)
	}
	return start(c.t, s)
}

// URL returns a redis-cluster:// URL listing every master.
func (c *Cluster) URL() string {
	addrs := make([]string, len(c.Masters))
	for i, m := range c.Masters {
		addrs[i] = m.Addr()
	}
	return "redis-cluster://" + strings.Join(addrs, ",")
}

// nodes returns every running node.
func (c *Cluster) nodes() []*Server {
	var out []*Server
	for _, n := range append(append([]*Server(nil), c.Masters...), c.Replicas...) {
		if n.running() {
			out = append(out, n)
		}
	}
	return out
}

// waitOK waits until every running node knows every other one and says
// the cluster is ok.
func (c *Cluster) waitOK() {
	c.t.Helper()
	nodes := c.nodes()
	waitFor(c.t, "the cluster to be ok", clusterTimeout, func() (bool, error) {
		for _, n := range nodes {
			f, err := n.clusterInfo()
			if err != nil {
				return false, err
			}
			known, _ := strconv.Atoi(f["cluster_known_nodes"])
			if f["cluster_state"] != "ok" || f["cluster_slots_ok"] != strconv.Itoa(clusterSlots) || known < len(nodes) {
				return false, fmt.Errorf("node %s: %v", n.Addr(), f)
			}
		}
		return true, nil
	})
}

// clusterInfo returns the fields of CLUSTER INFO.
func (s *Server) clusterInfo() (map[string]string, error) {
	c := s.admin()
	defer c.Close()
	txt, err := c.ClusterInfo(context.Background()).Result()
	if err != nil {
		return nil, err
	}
	return fields(txt, ":"), nil
}

// NodeID returns the cluster node id of s.
func (s *Server) NodeID() string {
	s.t.Helper()
	id, ok := s.Do("CLUSTER", "MYID").(string)
	if !ok {
		s.t.Fatalf("CLUSTER MYID on %s: not a string", s.Addr())
	}
	return id
}

// MasterOf returns the master that serves key's slot.
func (c *Cluster) MasterOf(key string) *Server {
	c.t.Helper()
	slot, ok := c.Masters[0].Do("CLUSTER", "KEYSLOT", key).(int64)
	if !ok {
		c.t.Fatalf("CLUSTER KEYSLOT %q: not a number", key)
	}
	for _, n := range c.nodes() {
		f, err := n.info("replication")
		if err != nil || f["role"] != "master" {
			continue
		}
		for _, line := range strings.Split(fmt.Sprint(n.Do("CLUSTER", "NODES")), "\n") {
			parts := strings.Fields(line)
			if len(parts) < 9 || !strings.Contains(parts[2], "myself") {
				continue
			}
			for _, r := range parts[8:] {
				lo, hi, isRange := strings.Cut(r, "-")
				if !isRange {
					hi = lo
				}
				a, err1 := strconv.ParseInt(lo, 10, 64)
				b, err2 := strconv.ParseInt(hi, 10, 64)
				if err1 == nil && err2 == nil && a <= slot && slot <= b {
					return n
				}
			}
		}
	}
	c.t.Fatalf("no master serves the slot of %q", key)
	return nil
}

// AddReplica starts a node that replicates master and returns once it
// is in sync and every master knows it as master's replica, so that a
// failover to it can be voted for.
func (c *Cluster) AddReplica(master *Server) *Server {
	c.t.Helper()
	r := c.startNode()
	c.Replicas = append(c.Replicas, r)
	r.Do("CLUSTER", "MEET", "127.0.0.1", master.Port())
	id := master.NodeID()
	waitFor(c.t, "the replica to learn of its master", clusterTimeout, func() (bool, error) {
		return strings.Contains(fmt.Sprint(r.Do("CLUSTER", "NODES")), id), nil
	})
	r.Do("CLUSTER", "REPLICATE", id)
	waitFor(c.t, "the replica to be in sync", clusterTimeout, func() (bool, error) {
		f, err := r.info("replication")
		return err == nil && f["master_link_status"] == "up", err
	})
	// A master ignores a manual failover's request from a node it does
	// not yet know as its replica, and the others refuse it their votes:
	// the failover would time out.
	rid := r.NodeID()
	waitFor(c.t, "every master to know the replica", clusterTimeout, func() (bool, error) {
		for _, m := range c.Masters {
			if !m.running() {
				continue
			}
			if line := nodeLine(fmt.Sprint(m.Do("CLUSTER", "NODES")), rid); !strings.Contains(line, "slave "+id) {
				return false, fmt.Errorf("%s sees the replica as %q", m.Addr(), line)
			}
		}
		return true, nil
	})
	c.waitOK()
	return r
}

// nodeLine returns the line of CLUSTER NODES about the node id.
func nodeLine(nodes, id string) string {
	for line := range strings.Lines(nodes) {
		if strings.HasPrefix(line, id+" ") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// Failover promotes replica in place of its master: with TAKEOVER, as
// after the master died, when the master is down. It returns once the
// replica says it is a master, and every running node that the cluster
// is ok again; the replica is then in Masters, and its old master, if
// it is running, in Replicas.
func (c *Cluster) Failover(replica *Server, takeover bool) {
	c.t.Helper()
	args := []any{"CLUSTER", "FAILOVER"}
	if takeover {
		args = append(args, "TAKEOVER")
	}
	replica.Do(args...)
	waitFor(c.t, "the replica to be promoted", clusterTimeout, func() (bool, error) {
		f, err := replica.info("replication")
		return err == nil && f["role"] == "master", err
	})
	c.waitOK()
	var masters, replicas []*Server
	for _, n := range append(append([]*Server(nil), c.Masters...), c.Replicas...) {
		if n == replica || (n.running() && n.Role() == "master") {
			masters = append(masters, n)
		} else {
			replicas = append(replicas, n)
		}
	}
	c.Masters, c.Replicas = masters, replicas
}

// shared is the cluster the tests of one package share (SharedCluster).
var shared struct {
	mu       sync.Mutex
	main     bool     // Main is running the tests
	url      string   // "" until started
	masters  []string // the masters' addresses, for FLUSHALL
	failed   string   // why starting it failed, if it did
	cleanups []func() // what Main runs after the tests, last first
}

// sharedOwner is the testing.TB the shared cluster is started with: the
// first test that asks for it, whose failures are that test's, except
// that what it would clean up when it ends waits for Main instead.
type sharedOwner struct{ testing.TB }

func (sharedOwner) Cleanup(f func()) { shared.cleanups = append(shared.cleanups, f) }

func (o sharedOwner) TempDir() string {
	dir, err := os.MkdirTemp("", "redistest")
	if err != nil {
		o.Fatalf("making a directory for the shared cluster: %v", err)
	}
	shared.cleanups = append(shared.cleanups, func() { os.RemoveAll(dir) })
	return dir
}

// Main runs the package's tests and then stops the cluster SharedCluster
// started. A package whose tests use SharedCluster calls it from its
// TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }
func Main(m *testing.M) int {
	shared.mu.Lock()
	shared.main = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	for i := len(shared.cleanups) - 1; i >= 0; i-- {
		shared.cleanups[i]()
	}
	shared.cleanups = nil
	return code
}

// SharedCluster returns the redis-cluster:// URL of a Redis Cluster of
// three masters that the tests of the package share: the first call
// starts it (about two seconds), Main stops it. Every call empties it
// first, so each test starts from nothing; tests that use it must not
// run in parallel with each other. A test that kills or fails over
// nodes starts a cluster of its own (StartCluster).
func SharedCluster(t testing.TB) string {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.main {
		t.Fatal("redistest.SharedCluster needs the package's TestMain to call redistest.Main, which stops the cluster")
	}
	if shared.failed != "" {
		t.Fatalf("the shared cluster did not start: %s", shared.failed)
	}
	if shared.url == "" {
		lookPath(t, Binary, "redis-server") // a skip, not a failure, locally
		// Kept if StartCluster fails this test, so that the next ones do
		// not wait for it to fail again.
		shared.failed = "it failed to start in an earlier test (see its output)"
		c := StartCluster(sharedOwner{t}, 3)
		for _, m := range c.Masters {
			shared.masters = append(shared.masters, m.Addr())
		}
		shared.url, shared.failed = c.URL(), ""
	}
	for _, addr := range shared.masters {
		admin := goredis.NewClient(&goredis.Options{Addr: addr, DialTimeout: 2 * time.Second, ReadTimeout: 5 * time.Second})
		FlushAll(t, admin)
		admin.Close()
	}
	return shared.url
}

// Each runs f as a subtest on each kind of deployment the stores must
// work on: "single", a redis-server of its own, and "cluster", the
// package's shared Redis Cluster (see SharedCluster), with url the store
// URL of each.
func Each(t *testing.T, f func(t *testing.T, url string)) {
	t.Run("single", func(t *testing.T) { f(t, Start(t).URL()) })
	t.Run("cluster", func(t *testing.T) { f(t, SharedCluster(t)) })
}

// forEachMaster runs f on c, or on each master of c if it is a cluster
// client, and fails t on an error.
func forEachMaster(t testing.TB, c goredis.UniversalClient, f func(ctx context.Context, m *goredis.Client) error) {
	t.Helper()
	ctx := context.Background()
	var err error
	switch c := c.(type) {
	case *goredis.ClusterClient:
		err = c.ForEachMaster(ctx, f)
	case *goredis.Client:
		err = f(ctx, c)
	default:
		err = fmt.Errorf("a %T is neither a server's client nor a cluster's", c)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// Keys returns the keys matching pattern, on every master if c is a
// cluster client, sorted.
func Keys(t testing.TB, c goredis.UniversalClient, pattern string) []string {
	t.Helper()
	var mu sync.Mutex
	var out []string
	forEachMaster(t, c, func(ctx context.Context, m *goredis.Client) error {
		k, err := m.Keys(ctx, pattern).Result()
		mu.Lock()
		out = append(out, k...)
		mu.Unlock()
		return err
	})
	slices.Sort(out)
	return out
}

// FlushAll empties the server, or every master if c is a cluster client.
func FlushAll(t testing.TB, c goredis.UniversalClient) {
	t.Helper()
	forEachMaster(t, c, func(ctx context.Context, m *goredis.Client) error { return m.FlushAll(ctx).Err() })
}
