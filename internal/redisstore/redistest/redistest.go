// Package redistest runs throwaway Redis servers for tests: on free
// loopback ports, without persistence, in temporary directories, stopped
// when the test ends. A server can be killed and restarted on the same
// port so that tests can watch a client fail and recover; it can
// speak TLS only (StartTLS); and servers can be joined into a Redis
// Cluster (StartCluster) or watched by a Sentinel (StartSentinel), with
// failovers driven by the test.
//
// It starts and watches each server through the process and a raw PING;
// Client and Open open the gateway's own clients (redisstore) on them.
//
// A binary that is missing (redis-server, or redis-sentinel for
// StartSentinel) skips the test with a message saying how to install it,
// or fails it when the CI environment variable is set, so that CI can
// never silently skip the Redis tests.
package redistest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/keyward/keyward/internal/redisstore"
)

// Binary is the redis-server executable looked up in PATH.
const Binary = "redis-server"

// SentinelBinary is the redis-sentinel executable looked up in PATH, from
// Debian's redis-sentinel package.
const SentinelBinary = "redis-sentinel"

// startTimeout bounds how long a server may take to answer PING.
const startTimeout = 10 * time.Second

// Server is a running redis-server (or redis-sentinel) owned by one test.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	// args returns the command line after the binary; nil for a plain
	// server.
	args func(s *Server) []string
	// TLS holds the files of a server started by StartTLS; nil for a
	// server that speaks plaintext.
	TLS *TLSFiles

	mu     sync.Mutex
	cmd    *exec.Cmd     // nil while stopped
	exited chan struct{} // closed when cmd has exited
}

// lookPath finds bin, or skips t (fails it under CI) saying how to
// install it.
func lookPath(t testing.TB, bin, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(bin)
	if err != nil {
		msg := fmt.Sprintf("%s not found in PATH; install it (apt-get install %s, or `make test`) to run the Redis tests", bin, pkg)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return path
}

// Start starts a redis-server for t and stops it in t.Cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, &Server{bin: lookPath(t, Binary, "redis-server")})
}

// start starts s on a free port, with a few attempts: a port picked by
// listening on :0 may be taken again before the server binds it.
func start(t testing.TB, s *Server) *Server {
	t.Helper()
	s.t = t
	if s.dir == "" {
		s.dir = t.TempDir()
	}
	t.Cleanup(s.Kill)
	for attempt := 0; ; attempt++ {
		s.port = freePort(t)
		err := s.start()
		if err == nil {
			return s
		}
		if attempt == 4 {
			t.Fatalf("starting %s: %v", s.bin, err)
		}
	}
}

// Addr returns the server's "host:port".
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port returns the server's port.
func (s *Server) Port() int { return s.port }

// URL returns a redis:// URL for database 0 of the server, or for a TLS
// server a rediss:// URL that trusts the test's CA and, if the server
// requires one, presents the client certificate.
func (s *Server) URL() string {
	if s.TLS == nil {
		return "redis://" + s.Addr() + "/0"
	}
	q := url.Values{"ca": {s.TLS.CA}}
	if s.TLS.ClientRequired {
		q.Set("cert", s.TLS.ClientCert)
		q.Set("key", s.TLS.ClientKey)
	}
	return "rediss://" + s.Addr() + "/0?" + q.Encode()
}

// Kill stops the server abruptly (SIGKILL), as a crash would. Calling it
// on a stopped server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Restart starts the server again on the same port after Kill, empty, as
// a Redis without persistence comes back after a crash. It fails the test
// if the server does not answer PING in time.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		s.t.Fatalf("restarting %s: %v", s.bin, err)
	}
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	logs := &syncBuffer{}
	var args []string
	if s.args != nil {
		args = s.args(s)
	} else {
		args = s.serverArgs()
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait() // a killed server exits with an error; that is expected
		close(exited)
	}()
	var tc *tls.Config
	if s.TLS != nil {
		tc = s.TLS.Config()
	}
	deadline := time.After(startTimeout)
	for {
		err := ping(s.Addr(), tc, 200*time.Millisecond)
		if err == nil {
			s.cmd, s.exited = cmd, exited
			return nil
		}
		// A refused dial returns at once, so pace the polling with a short
		// timer while also watching for the server exiting (port taken) and
		// for the overall deadline.
		select {
		case <-exited:
			return fmt.Errorf("%s exited on port %d: %s", s.bin, s.port, logs.String())
		case <-deadline:
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("no PONG on port %d within %v: %v; output:\n%s", s.port, startTimeout, err, logs.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// serverArgs is a plain server's command line.
func (s *Server) serverArgs() []string {
	return []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--daemonize", "no",
		// A replica's first sync starts at once, not after 5 s.
		"--repl-diskless-sync-delay", "0",
	}
}

// syncBuffer collects the server's output; the process writes it from
// another goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ping sends an inline PING, over TLS with tc when it is set, and
// expects +PONG.
func ping(addr string, tc *tls.Config, timeout time.Duration) error {
	var c net.Conn
	var err error
	d := &net.Dialer{Timeout: timeout}
	if tc != nil {
		c, err = tls.DialWithDialer(d, "tcp", addr, tc)
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return errors.New("unexpected reply " + strconv.Quote(line))
	}
	return nil
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Client opens a client for url the way the gateway does
// (redisstore.NewClient) and closes it when the test ends.
func Client(t testing.TB, url string) *goredis.Client {
	t.Helper()
	c, err := redisstore.NewClient(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Open opens a client for any store URL the way the gateway does
// (redisstore.Open) and closes it when the test ends. A cluster client
// has learnt the map of slots and dialled every master when it returns,
// so that a test's first call, bounded by a store timeout of a few
// milliseconds, does not pay for that.
func Open(t testing.TB, url string) goredis.UniversalClient {
	t.Helper()
	c, err := redisstore.Open(url, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if cc, ok := c.(*goredis.ClusterClient); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := cc.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error { return m.Ping(ctx).Err() }); err != nil {
			t.Fatalf("reaching the cluster's masters: %v", err)
		}
	}
	return c
}

// admin is a plain client on the server for the test's own commands:
// patient, retrying, not the gateway's.
func (s *Server) admin() *goredis.Client {
	o := &goredis.Options{Addr: s.Addr(), DialTimeout: 2 * time.Second, ReadTimeout: 5 * time.Second}
	if s.TLS != nil {
		o.TLSConfig = s.TLS.Config()
	}
	return goredis.NewClient(o)
}

// Do runs one command on the server with a plain client and returns its
// reply, failing the test on an error.
func (s *Server) Do(args ...any) any {
	s.t.Helper()
	c := s.admin()
	defer c.Close()
	v, err := c.Do(context.Background(), args...).Result()
	if err != nil {
		s.t.Fatalf("%s %v: %v", s.Addr(), args, err)
	}
	return v
}

// info returns the fields of INFO section on the server.
func (s *Server) info(section string) (map[string]string, error) {
	c := s.admin()
	defer c.Close()
	txt, err := c.Info(context.Background(), section).Result()
	if err != nil {
		return nil, err
	}
	return fields(txt, ":"), nil
}

// fields reads "name<sep>value" lines.
func fields(txt, sep string) map[string]string {
	out := map[string]string{}
	for line := range strings.Lines(txt) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), sep); ok {
			out[k] = v
		}
	}
	return out
}

// Role returns what the server says it is: "master" or "slave".
func (s *Server) Role() string {
	s.t.Helper()
	f, err := s.info("replication")
	if err != nil {
		s.t.Fatalf("reading the role of %s: %v", s.Addr(), err)
	}
	return f["role"]
}

// waitFor polls cond until it holds, or fails t after timeout with what
// it was waiting for and cond's last error.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		ok, err := cond()
		if ok {
			return
		}
		select {
		case <-deadline:
			t.Fatalf("waiting %v for %s: %v", timeout, what, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// writeFile writes a file for a server's configuration.
func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// running reports whether the server's process is up.
func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}
