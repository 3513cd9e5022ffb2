// Package redis is the cache.Store that several gateway instances share
// through one Redis server. It is the only package of the cache that
// imports a Redis client.
//
// An entry is one string key holding cache.Entry's binary encoding, written
// with SET ... PX so that Redis expires it; nothing else is stored and no
// script is needed. Keys are the prefix and the hex SHA-256 cache key, so
// Redis never holds client text in a key name.
//
// Open the client with redisstore.NewClient, which sets the timeouts that
// keep an outage from stalling requests; limiter and cache share one
// client.
package redis

import (
	"context"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/keyward/keyward/internal/breaker"
	"github.com/keyward/keyward/internal/cache"
	"github.com/keyward/keyward/internal/redisstore"
)

// DefaultPrefix is prepended to every key when none is given, so that the
// cache can share a Redis database with the rate limiter.
const DefaultPrefix = "keyward:cache:"

// DefaultCooldown is how long a Store fails fast after consecutive faults
// when Options does not say.
const DefaultCooldown = 500 * time.Millisecond

// ErrUnavailable is returned, wrapped with the last fault, while a Store
// fails fast after Redis stopped answering (breaker.Threshold faults in a
// row).
var ErrUnavailable = breaker.ErrOpen

// Options configures a Store.
type Options struct {
	// Prefix is prepended to every key; "" means DefaultPrefix.
	Prefix string
	// Cooldown is how long the Store answers ErrUnavailable without asking
	// Redis after three consecutive faults, so that during an outage
	// requests pay the store timeout once per cooldown instead of twice per
	// request; the first call after it probes Redis again, which is how
	// recovery is automatic. 0 means DefaultCooldown; a negative value
	// disables failing fast.
	Cooldown time.Duration
	// Now returns the current time, for the cooldown; nil means time.Now.
	Now func() time.Time
}

// Client is what the Store needs of a go-redis client: *goredis.Client,
// *goredis.ClusterClient and *goredis.Ring all satisfy it.
type Client interface {
	Get(ctx context.Context, key string) *goredis.StringCmd
	Set(ctx context.Context, key string, value any, expiration time.Duration) *goredis.StatusCmd
}

// Store is a cache.Store on Redis. It is safe for concurrent use.
type Store struct {
	client  Client
	prefix  string
	now     func() time.Time
	breaker *breaker.Breaker
}

var _ cache.Store = (*Store)(nil)

// New returns a Store on client. The client's own timeouts are a backstop
// only: the Cache bounds each call with a context deadline, which go-redis
// honours only with ContextTimeoutEnabled, as redisstore.NewClient sets.
func New(client Client, o Options) *Store {
	s := &Store{client: client, prefix: o.Prefix, now: o.Now}
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	if o.Cooldown == 0 {
		o.Cooldown = DefaultCooldown
	}
	s.breaker = breaker.New(o.Cooldown)
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// Get implements cache.Store. A record that does not decode is reported as
// an error, so it is counted as a fault and served as a miss.
func (s *Store) Get(ctx context.Context, key cache.Key) (*cache.Entry, error) {
	if err := s.open(); err != nil {
		return nil, err
	}
	b, err := s.client.Get(ctx, s.prefix+key.String()).Bytes()
	if errors.Is(err, goredis.Nil) {
		s.ok()
		return nil, nil
	}
	if err := s.account(ctx, err); err != nil {
		return nil, fmt.Errorf("redis GET: %w", err)
	}
	e := new(cache.Entry)
	if err := e.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("redis GET: %w", err)
	}
	return e, nil
}

// Set implements cache.Store. Redis expires the key after ttl, rounded up
// to a millisecond.
func (s *Store) Set(ctx context.Context, key cache.Key, e *cache.Entry, ttl time.Duration) error {
	if ttl <= 0 {
		return nil
	}
	if err := s.open(); err != nil {
		return err
	}
	b, err := e.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encoding entry: %w", err)
	}
	ttl = (ttl + time.Millisecond - 1).Truncate(time.Millisecond)
	if err := s.account(ctx, s.client.Set(ctx, s.prefix+key.String(), b, ttl).Err()); err != nil {
		return fmt.Errorf("redis SET: %w", err)
	}
	return nil
}

// open returns ErrUnavailable while the breaker is open.
func (s *Store) open() error { return s.breaker.Allow(s.now()) }

func (s *Store) ok() { s.breaker.Done(context.Background(), s.now(), nil, true) }

// account keeps the breaker's books for a call's outcome and returns err.
func (s *Store) account(ctx context.Context, err error) error {
	s.breaker.Done(ctx, s.now(), err, redisstore.Answered(err))
	return err
}
