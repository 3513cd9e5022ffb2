// Package redis is the cache.Store that several gateway instances share
// through Redis: one server, a master behind Sentinel, or a Redis
// Cluster. It is the only package of the cache that imports a Redis
// client.
//
// An entry is one string key holding cache.Entry's binary encoding, written
// with SET ... PX so that Redis expires it. Keys are the prefix and the hex
// SHA-256 cache key in braces, so Redis never holds client text in a key
// name: PREFIX{HEX}.
//
// The Store is also a cache.Locker: a key's lock is the string key
// PREFIX{HEX}:lock, taken with SET NX PX and ended by compare-and-delete
// (or compare-and-set, to leave a note), each in one Lua script. The
// braces make the hex key the hash tag of both names, so that every
// script, which touches an entry and its lock, stays within one slot of
// a Redis Cluster, while the entries spread over every slot, and so over
// every master: on a cluster, the cache has the room and the throughput
// of all the masters together.
//
// Open the client with redisstore.Open, which sets the timeouts that
// keep an outage from stalling requests; limiter and cache share one
// client.
package redis

import (
	"context"
	"encoding/hex"
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

// lockSuffix follows an entry's name to make its lock's.
const lockSuffix = ":lock"

// DefaultCooldown is how long a Store fails fast after consecutive faults
// when Options does not say.
const DefaultCooldown = 500 * time.Millisecond

// ErrUnavailable is returned, wrapped with the last fault, while a Store
// fails fast after Redis stopped answering (breaker.Threshold faults in a
// row).
var ErrUnavailable = breaker.ErrOpen

// Options configures a Store.
type Options struct {
	// Prefix is prepended to every key; "" means DefaultPrefix. It must
	// not contain "{", which would make it the keys' hash tag.
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

// Client is what the Store needs of a go-redis client: every
// goredis.UniversalClient (*goredis.Client, *goredis.ClusterClient)
// satisfies it.
type Client interface {
	Get(ctx context.Context, key string) *goredis.StringCmd
	Set(ctx context.Context, key string, value any, expiration time.Duration) *goredis.StatusCmd
	goredis.Scripter
}

// Store is a cache.Store on Redis. It is safe for concurrent use.
type Store struct {
	client  Client
	prefix  string
	now     func() time.Time
	breaker *breaker.Breaker
}

var (
	_ cache.Store  = (*Store)(nil)
	_ cache.Locker = (*Store)(nil)
)

// New returns a Store on client. The client's own timeouts are a backstop
// only: the Cache bounds each call with a context deadline, which go-redis
// honours only with ContextTimeoutEnabled, as redisstore.Open sets.
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
	b, err := s.client.Get(ctx, s.name(key)).Bytes()
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
	if err := s.account(ctx, s.client.Set(ctx, s.name(key), b, ttl).Err()); err != nil {
		return fmt.Errorf("redis SET: %w", err)
	}
	return nil
}

// claimScript is Claim: the entry if it has more than ARGV[3] ms left,
// or else the lock taken with the token ARGV[1] for ARGV[2] ms, or else
// the lock's value and remaining time. KEYS: the entry, its lock.
var claimScript = goredis.NewScript(`
if redis.call('PTTL', KEYS[1]) > tonumber(ARGV[3]) then
  local e = redis.call('GET', KEYS[1])
  if e then return {1, e} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2}
end
return {3, redis.call('GET', KEYS[2]), redis.call('PTTL', KEYS[2])}
`)

// setUnlockScript is SetUnlock: the entry ARGV[1] stored for ARGV[2] ms,
// then the lock deleted if it holds the token ARGV[3]. KEYS: the entry,
// its lock.
var setUnlockScript = goredis.NewScript(`
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
`)

// unlockScript is Unlock: if the lock KEYS[1] holds the token ARGV[1],
// it is deleted when the note ARGV[2] is empty, or else set to it for
// ARGV[3] ms.
var unlockScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
`)

// Claim implements cache.Locker, with one script call.
func (s *Store) Claim(ctx context.Context, key cache.Key, token string, ttl, stale time.Duration) (cache.Claim, error) {
	if err := s.open(); err != nil {
		return cache.Claim{}, err
	}
	name := s.name(key)
	res, err := claimScript.Run(ctx, s.client, []string{name, name + lockSuffix}, token, ms(ttl), ms(stale)).Slice()
	if err := s.account(ctx, err); err != nil {
		return cache.Claim{}, fmt.Errorf("redis claim: %w", err)
	}
	c, err := decodeClaim(res)
	if err != nil {
		return cache.Claim{}, fmt.Errorf("redis claim: %w", err)
	}
	return c, nil
}

// errReply is a script's reply of an unexpected shape.
var errReply = errors.New("unexpected reply")

// decodeClaim reads claimScript's reply. A record that does not decode
// is an error, as for Get.
func decodeClaim(res []any) (cache.Claim, error) {
	if len(res) == 0 {
		return cache.Claim{}, errReply
	}
	switch kind, _ := res[0].(int64); {
	case kind == 1 && len(res) == 2:
		b, ok := res[1].(string)
		if !ok {
			return cache.Claim{}, errReply
		}
		e := new(cache.Entry)
		if err := e.UnmarshalBinary([]byte(b)); err != nil {
			return cache.Claim{}, err
		}
		return cache.Claim{Entry: e}, nil
	case kind == 2:
		return cache.Claim{Won: true}, nil
	case kind == 3 && len(res) == 3:
		held, ok1 := res[1].(string)
		pttl, ok2 := res[2].(int64)
		if !ok1 || !ok2 {
			return cache.Claim{}, errReply
		}
		return cache.Claim{Held: []byte(held), TTL: time.Duration(max(pttl, 0)) * time.Millisecond}, nil
	}
	return cache.Claim{}, errReply
}

// SetUnlock implements cache.Locker, with one script call.
func (s *Store) SetUnlock(ctx context.Context, key cache.Key, e *cache.Entry, ttl time.Duration, token string) error {
	if ttl <= 0 {
		return s.Unlock(ctx, key, token, nil, 0)
	}
	if err := s.open(); err != nil {
		return err
	}
	b, err := e.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encoding entry: %w", err)
	}
	name := s.name(key)
	if err := s.account(ctx, setUnlockScript.Run(ctx, s.client, []string{name, name + lockSuffix}, b, ms(ttl), token).Err()); err != nil {
		return fmt.Errorf("redis set and unlock: %w", err)
	}
	return nil
}

// Unlock implements cache.Locker, with one script call.
func (s *Store) Unlock(ctx context.Context, key cache.Key, token string, note []byte, ttl time.Duration) error {
	if err := s.open(); err != nil {
		return err
	}
	if note == nil {
		note = []byte{}
	}
	if err := s.account(ctx, unlockScript.Run(ctx, s.client, []string{s.name(key) + lockSuffix}, token, note, ms(ttl)).Err()); err != nil {
		return fmt.Errorf("redis unlock: %w", err)
	}
	return nil
}

// name is the Redis key of an entry: the hex key in braces is the hash
// tag it shares with its lock.
func (s *Store) name(key cache.Key) string {
	var b [2*len(cache.Key{}) + 2]byte
	b[0] = '{'
	hex.Encode(b[1:], key[:])
	b[len(b)-1] = '}'
	return s.prefix + string(b[:])
}

// ms is d in whole milliseconds, rounded up, as PX takes it.
func ms(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// open returns ErrUnavailable while the breaker is open.
func (s *Store) open() error { return s.breaker.Allow(s.now()) }

func (s *Store) ok() { s.breaker.Done(context.Background(), s.now(), nil, true) }

// account keeps the breaker's books for a call's outcome and returns err,
// saying why ctx ended if it did: without retries a call past its
// deadline fails with the socket's "i/o timeout", and the breaker must
// tell a caller that went away from a Redis that did not answer.
func (s *Store) account(ctx context.Context, err error) error {
	err = redisstore.WithContext(ctx, err)
	s.breaker.Done(ctx, s.now(), err, redisstore.Answered(err))
	return err
}
