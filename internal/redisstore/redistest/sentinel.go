package redistest

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// MasterName is the name the Sentinel of StartSentinel monitors.
const MasterName = "mymaster"

// sentinelTimeout bounds how long the Sentinel may take to see the
// servers, or to fail over.
const sentinelTimeout = 20 * time.Second

// Sentinel is a master, a replica of it and one Sentinel (quorum 1)
// watching them, owned by one test. Master and Replica swap places on a
// failover.
type Sentinel struct {
	t        testing.TB
	Master   *Server
	Replica  *Server
	Sentinel *Server
	sc       *goredis.SentinelClient // the test's own, on Sentinel
}

// StartSentinel starts a master, a replica in sync with it and a
// redis-sentinel (from Debian's redis-sentinel package) that monitors
// them as MasterName, and stops them in t.Cleanup. It returns once the
// Sentinel knows the replica, so that it can fail over to it.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	sbin := lookPath(t, SentinelBinary, "redis-sentinel")
	st := &Sentinel{t: t, Master: Start(t)}
	st.Replica = start(t, &Server{bin: st.Master.bin, args: func(s *Server) []string {
		return append(s.serverArgs(), "--replicaof", "127.0.0.1", strconv.Itoa(st.Master.Port()))
	}})
	st.WaitReplicated()
	st.Sentinel = start(t, &Server{bin: sbin, args: func(s *Server) []string {
		// Sentinel rewrites its configuration file, so each start writes
		// a fresh one with the port just picked.
		conf := filepath.Join(s.dir, "sentinel.conf")
		writeFile(t, conf, fmt.Sprintf(`port %d
bind 127.0.0.1
daemonize no
dir %s
sentinel monitor %s 127.0.0.1 %d 1
sentinel down-after-milliseconds %s 1000
sentinel failover-timeout %s 5000
`, s.port, s.dir, MasterName, st.Master.Port(), MasterName, MasterName))
		return []string{conf}
	}})
	st.sc = goredis.NewSentinelClient(&goredis.Options{Addr: st.Sentinel.Addr(), DialTimeout: 2 * time.Second, ReadTimeout: 5 * time.Second})
	t.Cleanup(func() { st.sc.Close() })
	waitFor(t, "the sentinel to know the replica", sentinelTimeout, func() (bool, error) {
		replicas, err := st.sc.Replicas(context.Background(), MasterName).Result()
		for _, r := range replicas {
			if r["port"] == strconv.Itoa(st.Replica.Port()) && r["flags"] == "slave" && r["master-link-status"] == "ok" {
				return true, nil
			}
		}
		return false, fmt.Errorf("replicas %v, %v", replicas, err)
	})
	return st
}

// URL returns the redis-sentinel:// URL of database 0 of MasterName.
func (st *Sentinel) URL() string {
	return "redis-sentinel://" + st.Sentinel.Addr() + "/" + MasterName + "/0"
}

// WaitReplicated waits until the replica has everything the master
// wrote so far.
func (st *Sentinel) WaitReplicated() {
	st.t.Helper()
	c := st.Master.admin()
	defer c.Close()
	waitFor(st.t, "the replica to catch up", sentinelTimeout, func() (bool, error) {
		n, err := c.Wait(context.Background(), 1, time.Second).Result()
		return err == nil && n >= 1, err
	})
}

// Failover asks the Sentinel to promote the replica (SENTINEL FAILOVER,
// which does not wait for the master to fail, and works when it has) and
// returns once the Sentinel names the replica as the master and it says
// so itself, and the old master, if it is running, is a replica of it;
// Master and Replica have then swapped. The Sentinel turns the old master
// into a replica at its next look at it, up to ten seconds later; Failover
// does it at once itself, as the Sentinel would. (Until then the old
// master takes writes, and loses them as it turns.)
func (st *Sentinel) Failover() {
	st.t.Helper()
	sc := st.sc
	if err := sc.Failover(context.Background(), MasterName).Err(); err != nil {
		st.t.Fatalf("SENTINEL FAILOVER: %v", err)
	}
	want := strconv.Itoa(st.Replica.Port())
	waitFor(st.t, "the sentinel to name the replica", sentinelTimeout, func() (bool, error) {
		addr, err := sc.GetMasterAddrByName(context.Background(), MasterName).Result()
		if err != nil || len(addr) != 2 || addr[1] != want {
			return false, fmt.Errorf("master %v: %v", addr, err)
		}
		f, err := st.Replica.info("replication")
		return err == nil && f["role"] == "master", fmt.Errorf("the replica says %v: %v", f["role"], err)
	})
	if st.Master.running() {
		st.Master.Do("REPLICAOF", "127.0.0.1", st.Replica.Port())
		waitFor(st.t, "the old master to turn replica", sentinelTimeout, func() (bool, error) {
			f, err := st.Master.info("replication")
			return err == nil && f["role"] == "slave" && f["master_port"] == want, fmt.Errorf("the old master says %v: %v", f["role"], err)
		})
	}
	st.Master, st.Replica = st.Replica, st.Master
}
