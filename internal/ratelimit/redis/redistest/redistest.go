// Package redistest is the former home of the throwaway redis-server for
// tests, now internal/redisstore/redistest, kept only until the gateway's
// tests import that package instead.
//
// Deprecated: use github.com/keyward/keyward/internal/redisstore/redistest.
package redistest

import (
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/keyward/keyward/internal/redisstore/redistest"
)

// Server is a running redis-server owned by one test.
//
// Deprecated: use redisstore/redistest.Server.
type Server = redistest.Server

// Start starts a redis-server for t.
//
// Deprecated: use redisstore/redistest.Start.
func Start(t testing.TB) *Server {
	t.Helper()
	return redistest.Start(t)
}

// Client opens a client for url the way the gateway does.
//
// Deprecated: use redisstore/redistest.Client.
func Client(t testing.TB, url string) *goredis.Client {
	t.Helper()
	return redistest.Client(t, url)
}
