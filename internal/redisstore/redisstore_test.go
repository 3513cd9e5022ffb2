package redisstore_test

import (
	"errors"
	"strings"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/keyward/keyward/internal/redisstore"
)

// TestNewClientErrorsHideThePassword: the store URL carries the Redis
// password, and the error of a malformed URL is logged at startup.
func TestNewClientErrorsHideThePassword(t *testing.T) {
	tests := []struct {
		name, url, want string
	}{
		{name: "bad port", url: "redis://:s3cret@host:notaport/0", want: `invalid port ":notaport"`},
		{name: "bad host", url: "redis://user:s3cret@[::1/0", want: "missing ']'"},
		{name: "bad escape in the password", url: "redis://user:s3cret%zz@host/0", want: "invalid percent-encoding"},
		{name: "bad database", url: "redis://user:s3cret@host/x", want: `invalid database number: "x"`},
		{name: "bad scheme", url: "http://user:s3cret@host/0", want: "invalid URL scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := redisstore.NewClient(tt.url)
			if err == nil {
				c.Close()
				t.Fatal("NewClient succeeded on a malformed URL")
			}
			if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "zz") {
				t.Errorf("error %q quotes the password", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say what is wrong (%q)", err, tt.want)
			}
		})
	}
}

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
