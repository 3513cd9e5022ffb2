// Package redistest is the former home of the throwaway redis-server for
// tests, now internal/redisstore/redistest. It remains only until the
// gateway's tests import that package; nothing new should import this one.
package redistest

import (
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/keyward/keyward/internal/redisstore/redistest"
)

// Server is redisstore/redistest.Server.
type Server = redistest.Server

// Start is redisstore/redistest.Start.
func Start(t testing.TB) *Server {
	t.Helper()
	return redistest.Start(t)
}

// Client is redisstore/redistest.Client.
func Client(t testing.TB, url string) *goredis.Client {
	t.Helper()
	return redistest.Client(t, url)
}
