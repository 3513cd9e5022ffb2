// Package redistest runs a throwaway redis-server for tests: on a free
// loopback port, without persistence, in a temporary directory, stopped
// when the test ends. It can kill and restart the server on the same port
// so that tests can watch a client fail and recover.
//
// It starts and watches the server through the process and a raw PING;
// Client opens the gateway's own client (redisstore.NewClient) on it.
package redistest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/keyward/keyward/internal/redisstore"
)

// Binary is the redis-server executable looked up in PATH.
const Binary = "redis-server"

// startTimeout bounds how long a server may take to answer PING.
const startTimeout = 10 * time.Second

// Server is a running redis-server owned by one test.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int

	mu     sync.Mutex
	cmd    *exec.Cmd     // nil while stopped
	exited chan struct{} // closed when cmd has exited
}

// Start starts a redis-server for t and stops it in t.Cleanup. If
// redis-server is not installed the test is skipped with a message saying
// how to install it, or fails when the CI environment variable is set, so
// that CI can never silently skip the Redis tests.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath(Binary)
	if err != nil {
		msg := "redis-server not found in PATH; install it (apt-get install redis-server, or `make test`) to run the Redis tests"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir()}
	t.Cleanup(s.Kill)
	// A port picked by listening on :0 may be taken again before the server
	// binds it; a few attempts make that race irrelevant.
	for attempt := 0; ; attempt++ {
		s.port = freePort(t)
		err := s.start()
		if err == nil {
			return s
		}
		if attempt == 4 {
			t.Fatalf("starting redis-server: %v", err)
		}
	}
}

// Addr returns the server's "host:port".
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL returns a redis:// URL for database 0 of the server.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

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
		s.t.Fatalf("restarting redis-server: %v", err)
	}
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	logs := &syncBuffer{}
	cmd := exec.Command(s.bin,
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--daemonize", "no",
	)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait() // a killed server exits with an error; that is expected
		close(exited)
	}()
	deadline := time.After(startTimeout)
	for {
		err := ping(s.port, 200*time.Millisecond)
		if err == nil {
			s.cmd, s.exited = cmd, exited
			return nil
		}
		// A refused dial returns at once, so pace the polling with a short
		// timer while also watching for the server exiting (port taken) and
		// for the overall deadline.
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited on port %d: %s", s.port, logs.String())
		case <-deadline:
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("no PONG on port %d within %v: %v; server output:\n%s", s.port, startTimeout, err, logs.String())
		case <-time.After(5 * time.Millisecond):
		}
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

// ping sends an inline PING and expects +PONG.
func ping(port int, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), timeout)
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
