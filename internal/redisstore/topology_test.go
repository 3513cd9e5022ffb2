package redisstore_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/keyward/keyward/internal/redisstore"
	"github.com/keyward/keyward/internal/redisstore/redistest"
)

func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }

// TestOpen: a client from each kind of URL runs a script on keys of one
// hash tag; a cluster refuses one on keys of two slots, which is why
// the stores tag their keys.
func TestOpen(t *testing.T) {
	redistest.Each(t, func(t *testing.T, rawURL string) {
		c := redistest.Open(t, rawURL)
		ctx := context.Background()
		script := goredis.NewScript(`redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])`)
		tag := redisstore.HashTag("t:")
		for i := range 3 {
			n, err := script.Run(ctx, c, []string{tag + "a", tag + "b"}, "x").Int()
			if err != nil || n != i+1 {
				t.Fatalf("script on one tag: %d, %v; want %d", n, err, i+1)
			}
		}
		err := script.Run(ctx, c, []string{"t:a", "t:b"}, "x").Err()
		if redisstore.Cluster(c) != (err != nil) {
			t.Errorf("script on two untagged keys: %v; want an error on a cluster only", err)
		}
		if redisstore.Cluster(c) && !strings.Contains(fmt.Sprint(err), "CROSSSLOT") {
			t.Errorf("script on two slots: %v, want CROSSSLOT", err)
		}
	})
}

// TestPersistenceCluster: on a cluster every master is checked, and the
// warning names them.
func TestPersistenceCluster(t *testing.T) {
	c := redistest.Open(t, redistest.SharedCluster(t))
	got := redisstore.Persistence(context.Background(), c)
	u, err := url.Parse(redistest.SharedCluster(t))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "does not persist") {
		t.Errorf("warning %q, want one saying the nodes do not persist", got)
	}
	for _, addr := range strings.Split(u.Host, ",") {
		if !strings.Contains(got, addr) {
			t.Errorf("warning %q does not name the master %s", got, addr)
		}
	}
}

// TestSentinelFailover: a client opened on a Sentinel URL follows the
// master the Sentinel names after a failover, and finds there what it
// wrote before.
func TestSentinelFailover(t *testing.T) {
	st := redistest.StartSentinel(t)
	c := redistest.Open(t, st.URL())
	ctx := context.Background()
	if err := c.Set(ctx, "k", "before", 0).Err(); err != nil {
		t.Fatal(err)
	}
	st.WaitReplicated()
	st.Failover()
	// Until the client learns of the switch, a call may fail, or land on
	// the old master, which takes writes until the Sentinel turns it into
	// a replica, and loses them then (what ratelimit/redis restores).
	onNew := func() bool { return st.Master.Do("EXISTS", "k2") == int64(1) }
	for deadline := time.Now().Add(10 * time.Second); !onNew(); time.Sleep(20 * time.Millisecond) { // pacing, not waiting for a state
		if time.Now().After(deadline) {
			t.Fatalf("no write through the client reached the new master %s in 10s", st.Master.Addr())
		}
		_ = c.Set(ctx, "k2", "after", 0).Err()
	}
	if v, err := c.Get(ctx, "k").Result(); v != "before" || err != nil {
		t.Errorf("after the failover: %q, %v; want what was written before", v, err)
	}
}

// TestClusterFailover: when a master dies and its replica takes over
// its slots, the client finds the replica at once, though the dead node
// never answers MOVED.
func TestClusterFailover(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	master := cl.MasterOf("{k}")
	replica := cl.AddReplica(master)
	c := redistest.Open(t, cl.URL())
	ctx := context.Background()
	if err := c.Set(ctx, "{k}a", "before", 0).Err(); err != nil {
		t.Fatal(err)
	}
	master.Do("WAIT", 1, 5000)
	master.Kill()
	cl.Failover(replica, true)
	began := time.Now()
	var err error
	for time.Since(began) < 5*time.Second {
		if err = c.Set(ctx, "{k}b", "after", 0).Err(); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond) // pacing, not waiting for a state
	}
	if err != nil {
		t.Fatalf("no write 5s after the failover: %v", err)
	}
	t.Logf("writing again %v after the failover", time.Since(began))
	if v, err := c.Get(ctx, "{k}a").Result(); v != "before" || err != nil {
		t.Errorf("after the failover: %q, %v; want what was written before", v, err)
	}
}

// TestTLS: rediss:// with the CA of the server's certificate (a
// relative path is taken from the directory Open is given), and the
// refusals an operator must be able to read: another CA, a server name
// the certificate does not carry, no client certificate where the server
// requires one.
func TestTLS(t *testing.T) {
	srv := redistest.StartTLS(t, true)
	files := srv.TLS
	other := redistest.NewTLSFiles(t, t.TempDir())
	with := func(q url.Values) string { return "rediss://" + srv.Addr() + "/0?" + q.Encode() }
	client := url.Values{"cert": {files.ClientCert}, "key": {files.ClientKey}}
	merge := func(a, b url.Values) url.Values {
		out := url.Values{}
		for _, v := range []url.Values{a, b} {
			for k, vs := range v {
				out[k] = vs
			}
		}
		return out
	}
	tests := []struct {
		name, url, dir string
		wantErr        string // "" for a PING answered
	}{
		{name: "the server's CA", url: srv.URL()},
		{name: "relative paths", dir: filepath.Dir(files.CA), url: with(url.Values{
			"ca": {filepath.Base(files.CA)}, "cert": {filepath.Base(files.ClientCert)}, "key": {filepath.Base(files.ClientKey)}})},
		{name: "the name in the certificate", url: with(merge(client, url.Values{"ca": {files.CA}, "server_name": {"localhost"}}))},
		{name: "another CA", url: with(merge(client, url.Values{"ca": {other.CA}})), wantErr: "x509: certificate signed by unknown authority"},
		{name: "the system's CAs", url: with(client), wantErr: "x509: certificate signed by unknown authority"},
		{name: "a name not in the certificate", url: with(merge(client, url.Values{"ca": {files.CA}, "server_name": {"redis.example"}})),
			wantErr: "not redis.example"},
		{name: "no client certificate", url: with(url.Values{"ca": {files.CA}}), wantErr: "certificate required"},
		{name: "plaintext to a TLS port", url: "redis://" + srv.Addr() + "/0", wantErr: "EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := redisstore.Check(tt.url, tt.dir); err != nil {
				t.Fatalf("Check: %v", err)
			}
			c, err := redisstore.Open(tt.url, tt.dir)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			err = c.Ping(context.Background()).Err()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("PING: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("PING: %v, want an error saying %q", err, tt.wantErr)
			}
		})
	}
}

// TestClusterSendsOnce: a cluster node that fails after a command was
// sent (here: it runs it and drops the connection, as a crash would)
// gets it once. go-redis's Cluster client, left alone, sends it again
// on the same node and then on another, whatever max_retries says, and
// a budget script run twice counts twice.
func TestClusterSendsOnce(t *testing.T) {
	node := startDyingNode(t)
	c := redistest.Open(t, "redis-cluster://"+node.addr)
	err := c.Incr(context.Background(), "budget").Err()
	if err == nil {
		t.Fatal("no error from a node that dropped the connection")
	}
	if got := node.ran.Load(); got != 1 {
		t.Errorf("the command ran %d times, want once", got)
	}
	if redisstore.Answered(err) {
		t.Errorf("error %v counts as an answer; want a fault for the breaker", err)
	}
}

// dyingNode is a one-node Redis Cluster, speaking just enough RESP: it
// answers a client's handshake and CLUSTER SLOTS (itself, every slot),
// and runs (counts) every other command, then drops the connection
// without a reply.
type dyingNode struct {
	addr string
	ran  atomic.Int64
}

func startDyingNode(t *testing.T) *dyingNode {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &dyingNode{addr: ln.Addr().String()}
	_, port, _ := net.SplitHostPort(n.addr)
	slots := "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:" + port + "\r\n$40\r\n" + strings.Repeat("a", 40) + "\r\n"
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				r := bufio.NewReader(conn)
				for {
					args, err := readCommand(r)
					if err != nil {
						return
					}
					var reply string
					switch strings.ToUpper(args[0]) {
					case "HELLO", "COMMAND":
						reply = "-ERR unknown command\r\n"
					case "CLIENT", "SELECT", "AUTH", "READONLY":
						reply = "+OK\r\n"
					case "PING":
						reply = "+PONG\r\n"
					case "CLUSTER":
						reply = slots
					default:
						n.ran.Add(1)
						return
					}
					if _, err := io.WriteString(conn, reply); err != nil {
						return
					}
				}
			})
		}
	})
	return n
}

// readCommand reads one RESP array of bulk strings.
func readCommand(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(line, "*") {
		return nil, errors.New("not an array")
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n < 1 {
		return nil, errors.New("bad array length")
	}
	args := make([]string, n)
	for i := range args {
		if line, err = r.ReadString('\n'); err != nil {
			return nil, err
		}
		size, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "$")))
		if err != nil {
			return nil, err
		}
		b := make([]byte, size+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		args[i] = string(b[:size])
	}
	return args, nil
}
