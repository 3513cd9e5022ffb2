package redisstore_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/keyward/keyward/internal/redisstore"
	"github.com/keyward/keyward/internal/redisstore/redistest"
)

func TestNewClientSettings(t *testing.T) {
	c, err := redisstore.NewClient("redis://127.0.0.1:1/2?pool_timeout=3s")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o := c.Options()
	if !o.ContextTimeoutEnabled || o.DialTimeout.String() != "1s" || o.DialerRetries != 1 || o.DB != 2 {
		t.Errorf("options %+v: want context deadlines honoured, a 1s dial timeout, no dial retries, database 2", o)
	}
	if o.PoolTimeout.String() != "3s" {
		t.Errorf("pool timeout %v, want the URL's 3s to win", o.PoolTimeout)
	}
	if c, err := redisstore.NewClient("redis-cluster://127.0.0.1:1"); err == nil {
		c.Close()
		t.Error("NewClient opened a cluster URL, which needs Open")
	}
}

func TestAnswered(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{name: "no error", want: true},
		{name: "error reply", err: goredis.Nil, want: true},
		{name: "connection refused", err: errors.New("dial tcp 127.0.0.1:1: connect: connection refused")},
	}
	for _, tt := range tests {
		if got := redisstore.Answered(tt.err); got != tt.want {
			t.Errorf("%s: Answered(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

// TestPersistence: the warning a Redis that would lose budget counts gets
// at startup, from CONFIG or, where CONFIG is refused, from INFO.
func TestPersistence(t *testing.T) {
	srv := redistest.Start(t)
	admin := redistest.Client(t, srv.URL())
	ctx := context.Background()
	set := func(kv ...string) {
		t.Helper()
		for i := 0; i < len(kv); i += 2 {
			if err := admin.ConfigSet(ctx, kv[i], kv[i+1]).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A user that may not run CONFIG, as on managed servers.
	if err := admin.Do(ctx, "ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-config").Err(); err != nil {
		t.Fatal(err)
	}
	restricted := redistest.Client(t, "redis://app:pw@"+srv.Addr()+"/0")
	tests := []struct {
		name     string
		settings []string // CONFIG SET before the check
		client   *goredis.Client
		want     []string // substrings of the warning; none: no warning
	}{
		{name: "no persistence", client: admin, want: []string{`save ""`, "appendonly yes"}},
		{name: "no persistence, CONFIG refused", client: restricted, want: []string{"appendonly no", "snapshots is unknown", "NOPERM"}},
		{name: "snapshots", settings: []string{"save", "3600 1"}, client: admin},
		{name: "append-only file", settings: []string{"save", "", "appendonly", "yes"}, client: admin},
		{name: "append-only file, CONFIG refused", client: restricted},
		{name: "eviction", settings: []string{"maxmemory", "100mb", "maxmemory-policy", "volatile-lru"}, client: admin, want: []string{"may evict", "volatile-lru", "noeviction"}},
		{name: "eviction, CONFIG refused", client: restricted, want: []string{"may evict", "volatile-lru"}},
		{name: "memory bound without eviction", settings: []string{"maxmemory-policy", "noeviction"}, client: admin},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set(tt.settings...)
			got := redisstore.Persistence(ctx, tt.client)
			if len(tt.want) == 0 && got != "" {
				t.Errorf("warning %q, want none", got)
			}
			if len(tt.want) > 0 && got == "" {
				t.Errorf("no warning, want one saying %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("warning %q does not say %q", got, w)
				}
			}
		})
	}
	srv.Kill()
	if got := redisstore.Persistence(ctx, admin); !strings.Contains(got, "could not check") {
		t.Errorf("with redis down: %q, want a warning that it could not check", got)
	}
}

func TestWithContext(t *testing.T) {
	ioTimeout := errors.New("i/o timeout")
	expired, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	cancelled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	tests := []struct {
		name   string
		ctx    context.Context
		err    error
		wantIs []error
	}{
		{name: "no error", ctx: expired},
		{name: "live context", ctx: context.Background(), err: ioTimeout, wantIs: []error{ioTimeout}},
		{name: "deadline passed", ctx: expired, err: ioTimeout, wantIs: []error{ioTimeout, context.DeadlineExceeded}},
		{name: "cancelled", ctx: cancelled, err: ioTimeout, wantIs: []error{ioTimeout, context.Canceled}},
		{name: "already says so", ctx: expired, err: context.DeadlineExceeded, wantIs: []error{context.DeadlineExceeded}},
	}
	for _, tt := range tests {
		got := redisstore.WithContext(tt.ctx, tt.err)
		if (got == nil) != (tt.err == nil) {
			t.Errorf("%s: %v", tt.name, got)
		}
		for _, w := range tt.wantIs {
			if !errors.Is(got, w) {
				t.Errorf("%s: %v is not %v", tt.name, got, w)
			}
		}
		if tt.name == "already says so" && got != tt.err {
			t.Errorf("%s: %v wrapped again", tt.name, got)
		}
	}
}
