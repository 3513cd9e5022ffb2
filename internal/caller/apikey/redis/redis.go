// Package redis is the apikey.Store and apikey.Admin that several gateway
// instances share through Redis (one server, a master behind Sentinel, or
// a Redis Cluster), so that `keyward keys revoke` reaches every instance
// within a second. It is the only package of the
// API-key callers that imports a Redis client.
//
// Keys, under the prefix (DefaultPrefix unless configured):
//
//	key:HEX          a hash per API key, HEX its SHA-256: kind, name,
//	                 created, expires, revoked, used (unix milliseconds),
//	                 rate, burst, budget (the plan, when it has one)
//	name:KIND/NAME   HEX of the key of that name; never deleted, so that
//	                 a name is never reused, even after a revocation
//	index            a list of every HEX, oldest first, for List
//
// Adding a key is one script on its record, its name and the index, so on
// a Redis Cluster every key of the Store shares one slot: the prefix is
// made their hash tag ("{keyward:apikey:}key:HEX"). Lookups are cached
// on each instance, so that one slot's master carries little; one server
// and Sentinel keep the names without a tag.
//
// Only SHA-256 hashes are stored, never a key. A lookup is one HGETALL,
// or an answer from a small per-instance cache that is at most CacheTTL
// old (250 ms by default): that bounds how long a revoked key keeps
// working on an instance, and how long a key checked just before a Redis
// outage keeps working during it. A key not in the cache cannot be
// checked while Redis is down, and is refused, never let in.
//
// Open the client with redisstore.Open; the limiter, the cache and the
// keys share one client.
package redis

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/keyward/keyward/internal/breaker"
	"github.com/keyward/keyward/internal/caller/apikey"
	"github.com/keyward/keyward/internal/redisstore"
)

// DefaultPrefix is prepended to every key when none is given, so that the
// keys can share a Redis database with the rate limiter and the cache.
const DefaultPrefix = "keyward:apikey:"

// DefaultCacheTTL is how long a lookup's answer is reused on one instance
// when Options does not say: well under the second within which a
// revocation must reach every instance, and long enough that a busy key
// costs each instance four round trips a second.
const DefaultCacheTTL = 250 * time.Millisecond

// DefaultCacheSize bounds the cache when Options does not say.
const DefaultCacheSize = 10000

// DefaultTimeout bounds one lookup's round trip when Options does not
// say. A key that cannot be checked in time is refused (503), so it is
// more patient than the limiter, which may fail open.
const DefaultTimeout = 100 * time.Millisecond

// DefaultUsedEvery is how often a key's last use is written, at most.
const DefaultUsedEvery = time.Minute

// DefaultCooldown is how long a Store fails fast after consecutive faults
// when Options does not say.
const DefaultCooldown = 500 * time.Millisecond

// ErrUnavailable is returned, wrapped with the last fault, while lookups
// fail fast after Redis stopped answering (breaker.Threshold faults in a
// row).
var ErrUnavailable = breaker.ErrOpen

// usedTimeout bounds one last-use write, which no request waits for.
const usedTimeout = time.Second

// Options configures a Store. Zero values are the defaults.
type Options struct {
	// Prefix is prepended to every key; "" means DefaultPrefix.
	Prefix string
	// CacheTTL is how long a lookup's answer is reused on this instance;
	// 0 means DefaultCacheTTL, a negative value disables the cache. A
	// revocation reaches this instance within CacheTTL (and a round
	// trip), so it must stay well under a second.
	CacheTTL time.Duration
	// CacheSize bounds how many answers are cached; 0 means
	// DefaultCacheSize. Only keys that exist are cached, so made-up keys
	// cannot push real ones out.
	CacheSize int
	// Timeout bounds one lookup's round trip; 0 means DefaultTimeout.
	Timeout time.Duration
	// UsedEvery is how often a key's last use is written, at most, by this
	// instance and, checked in Redis, by all of them; 0 means
	// DefaultUsedEvery.
	UsedEvery time.Duration
	// Cooldown is how long lookups fail fast without asking Redis after
	// three consecutive faults, so that during an outage requests pay the
	// timeout once per cooldown; the first lookup after it probes Redis
	// again. 0 means DefaultCooldown; a negative value disables failing
	// fast.
	Cooldown time.Duration
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// OnError is told of a last-use write that failed. Nil means such
	// errors are dropped: a last use is a hint.
	OnError func(error)
}

// Client is what the Store needs of a go-redis client: every
// goredis.UniversalClient (*goredis.Client, *goredis.ClusterClient)
// satisfies it.
type Client interface {
	goredis.Scripter
	Get(ctx context.Context, key string) *goredis.StringCmd
	HGetAll(ctx context.Context, key string) *goredis.MapStringStringCmd
	LRange(ctx context.Context, key string, start, stop int64) *goredis.StringSliceCmd
	Pipelined(ctx context.Context, fn func(goredis.Pipeliner) error) ([]goredis.Cmder, error)
}

// Store keeps API keys in Redis. It is safe for concurrent use.
type Store struct {
	client    Client
	prefix    string
	ttl       time.Duration
	size      int
	timeout   time.Duration
	usedEvery time.Duration
	now       func() time.Time
	onError   func(error)
	breaker   *breaker.Breaker

	mu     sync.Mutex
	cache  map[apikey.Hash]entry
	flight map[apikey.Hash]*call // lookups under way

	usedMu sync.Mutex
	usedAt map[apikey.Hash]time.Time // last write of each key's use
	writes sync.WaitGroup            // last-use writes under way
}

var (
	_ apikey.Store = (*Store)(nil)
	_ apikey.Admin = (*Store)(nil)
)

// entry is a cached answer: only keys that exist are cached.
type entry struct {
	stored apikey.Stored
	until  time.Time
}

// call is one lookup under way, which concurrent lookups of the same key
// wait for instead of asking Redis again.
type call struct {
	done    chan struct{}
	stored  apikey.Stored
	found   bool
	err     error
	waiters int // for tests: lookups waiting on this one
}

// New returns a Store on client, opened with redisstore.Open; on a Redis
// Cluster every key gets the prefix as its hash tag (see the package
// doc).
func New(client Client, o Options) *Store {
	s := &Store{
		client:    client,
		prefix:    o.Prefix,
		ttl:       o.CacheTTL,
		size:      o.CacheSize,
		timeout:   o.Timeout,
		usedEvery: o.UsedEvery,
		now:       o.Now,
		onError:   o.OnError,
		cache:     map[apikey.Hash]entry{},
		flight:    map[apikey.Hash]*call{},
		usedAt:    map[apikey.Hash]time.Time{},
	}
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	if redisstore.Cluster(client) {
		s.prefix = redisstore.HashTag(s.prefix)
	}
	if s.ttl == 0 {
		s.ttl = DefaultCacheTTL
	}
	if s.size <= 0 {
		s.size = DefaultCacheSize
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	if s.usedEvery <= 0 {
		s.usedEvery = DefaultUsedEvery
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.onError == nil {
		s.onError = func(error) {}
	}
	if o.Cooldown == 0 {
		o.Cooldown = DefaultCooldown
	}
	s.breaker = breaker.New(o.Cooldown)
	return s
}

func (s *Store) recordKey(h apikey.Hash) string { return s.prefix + "key:" + hex.EncodeToString(h[:]) }
func (s *Store) nameKey(kind, name string) string {
	return s.prefix + "name:" + kind + "/" + name
}
func (s *Store) indexKey() string { return s.prefix + "index" }

// Lookup returns the record of the key with hash h: from the cache when
// this instance read it less than CacheTTL ago, otherwise with one
// HGETALL, shared by the lookups of the same key that arrive meanwhile.
// An error means Redis could not be read, or holds a record it cannot
// decode.
func (s *Store) Lookup(ctx context.Context, h apikey.Hash) (apikey.Stored, bool, error) {
	now := s.now()
	s.mu.Lock()
	if e, ok := s.cache[h]; ok && now.Before(e.until) {
		s.mu.Unlock()
		return e.stored, true, nil
	}
	c, ok := s.flight[h]
	if ok {
		c.waiters++
		s.mu.Unlock()
		select {
		case <-c.done:
			return c.stored, c.found, c.err
		case <-ctx.Done():
			return apikey.Stored{}, false, fmt.Errorf("waiting for an API key lookup: %w", ctx.Err())
		}
	}
	c = &call{done: make(chan struct{})}
	s.flight[h] = c
	s.mu.Unlock()

	// The read is not cancelled with the request that started it: the
	// lookups waiting on it are other requests. Its timeout bounds it.
	c.stored, c.found, c.err = s.read(context.WithoutCancel(ctx), h, now)

	s.mu.Lock()
	delete(s.flight, h)
	if c.err == nil && c.found && s.ttl > 0 {
		// The answer is as old as the moment the read started, so it is
		// kept CacheTTL from then: no answer is ever older than CacheTTL.
		s.put(h, entry{stored: c.stored, until: now.Add(s.ttl)}, now)
	}
	s.mu.Unlock()
	close(c.done)
	return c.stored, c.found, c.err
}

// put caches e, making room first: expired entries go, and if none had,
// the whole cache does (its entries are all younger than CacheTTL, so
// that costs each key one more round trip). s.mu is held.
func (s *Store) put(h apikey.Hash, e entry, now time.Time) {
	if len(s.cache) >= s.size {
		for k, old := range s.cache {
			if !now.Before(old.until) {
				delete(s.cache, k)
			}
		}
		if len(s.cache) >= s.size {
			clear(s.cache)
		}
	}
	s.cache[h] = e
}

// read asks Redis for the record of h.
func (s *Store) read(ctx context.Context, h apikey.Hash, now time.Time) (apikey.Stored, bool, error) {
	if err := s.breaker.Allow(now); err != nil {
		return apikey.Stored{}, false, fmt.Errorf("reading an API key from Redis: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	fields, err := s.client.HGetAll(ctx, s.recordKey(h)).Result()
	s.breaker.Done(ctx, now, err, redisstore.Answered(err))
	if err != nil {
		return apikey.Stored{}, false, fmt.Errorf("reading an API key from Redis: %w", err)
	}
	if len(fields) == 0 {
		return apikey.Stored{}, false, nil
	}
	r, err := decode(h, fields)
	if err != nil {
		return apikey.Stored{}, false, err
	}
	plan, err := r.Limits.Plan()
	if err != nil {
		return apikey.Stored{}, false, fmt.Errorf("API key %s/%s in Redis: limits: %w", r.Kind, r.Name, err)
	}
	return apikey.Stored{Record: r, Plan: plan}, true, nil
}

// Used notes that the key with hash h was used at t. This instance writes
// a key's use at most once per UsedEvery, in the background, and Redis
// keeps it only when the stored one is at least UsedEvery older, so a key
// used on every instance is still written about once per UsedEvery.
func (s *Store) Used(h apikey.Hash, t time.Time) {
	s.usedMu.Lock()
	if last, ok := s.usedAt[h]; ok && t.Sub(last) < s.usedEvery {
		s.usedMu.Unlock()
		return
	}
	s.usedAt[h] = t
	s.usedMu.Unlock()
	s.writes.Add(1)
	go func() {
		defer s.writes.Done()
		ctx, cancel := context.WithTimeout(context.Background(), usedTimeout)
		defer cancel()
		err := usedScript.Run(ctx, s.client, []string{s.recordKey(h)}, t.UnixMilli(), s.usedEvery.Milliseconds()).Err()
		if err != nil {
			s.onError(fmt.Errorf("writing an API key's last use to Redis: %w", err))
		}
	}()
}

// usedScript writes a last use unless the record is gone or its last use
// is less than ARGV[2] ms older. KEYS: the record. ARGV: the use and
// UsedEvery, in unix ms.
var usedScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = tonumber(redis.call('HGET', KEYS[1], 'used'))
if old and tonumber(ARGV[1]) - old < tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'used', ARGV[1])
return 1
`)

// Flush waits for the last-use writes under way. The server calls it when
// it stops, so that the last uses are not lost with the process.
func (s *Store) Flush() error {
	s.writes.Wait()
	return nil
}

// addScript stores a record unless its name or its hash is taken, in one
// atomic step. KEYS: the record, the name, the index. ARGV: the hex hash,
// then the record's fields and values. The reply is 0 when stored, 1 for
// a name taken, 2 for a hash taken.
var addScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('RPUSH', KEYS[3], ARGV[1])
return 0
`)

// Add stores r. A name already used in its kind, even by a revoked key,
// is ErrNameTaken: the check and the write are one script, so two `keyward
// keys create` at once cannot both take a name, nor lose a record.
func (s *Store) Add(ctx context.Context, r apikey.Record) error {
	if err := r.Validate(); err != nil {
		return err
	}
	args := []any{hex.EncodeToString(r.Hash[:])}
	args = append(args, encode(r)...)
	n, err := addScript.Run(ctx, s.client, []string{s.recordKey(r.Hash), s.nameKey(r.Kind, r.Name), s.indexKey()}, args...).Int()
	switch {
	case err != nil:
		return fmt.Errorf("storing API key %s/%s in Redis: %w", r.Kind, r.Name, err)
	case n == 1:
		return apikey.ErrNameTaken
	case n == 2:
		return fmt.Errorf("storing API key %s/%s in Redis: a key with the same hash is already stored", r.Kind, r.Name)
	}
	return nil
}

// revokeScript marks a record revoked unless it is gone or already
// revoked. KEYS: the record. ARGV: the time in unix ms. The reply is 1
// when revoked.
var revokeScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'revoked') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'revoked', ARGV[1])
return 1
`)

// Revoke marks the key kind/name revoked at t. Every instance refuses it
// once its cached answer, at most CacheTTL old, expires. A name maps to
// its hash for good (names are never reused), so finding the hash and
// revoking it need not be one step.
func (s *Store) Revoke(ctx context.Context, kind, name string, t time.Time) error {
	hexHash, err := s.client.Get(ctx, s.nameKey(kind, name)).Result()
	if errors.Is(err, goredis.Nil) {
		return apikey.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("revoking API key %s/%s in Redis: %w", kind, name, err)
	}
	h, err := apikey.ParseHash("sha256:" + hexHash)
	if err != nil {
		return fmt.Errorf("revoking API key %s/%s in Redis: %w", kind, name, err)
	}
	n, err := revokeScript.Run(ctx, s.client, []string{s.recordKey(h)}, t.UnixMilli()).Int()
	if err != nil {
		return fmt.Errorf("revoking API key %s/%s in Redis: %w", kind, name, err)
	}
	if n == 0 {
		return apikey.ErrNotFound
	}
	s.mu.Lock()
	delete(s.cache, h)
	s.mu.Unlock()
	return nil
}

// List returns the records of kind ("" for every kind), oldest first,
// with their last uses: one LRANGE and one pipelined HGETALL per key.
func (s *Store) List(ctx context.Context, kind string) ([]apikey.Record, error) {
	hexes, err := s.client.LRange(ctx, s.indexKey(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("listing API keys in Redis: %w", err)
	}
	hashes := make([]apikey.Hash, len(hexes))
	cmds := make([]*goredis.MapStringStringCmd, len(hexes))
	for i, x := range hexes {
		if hashes[i], err = apikey.ParseHash("sha256:" + x); err != nil {
			return nil, fmt.Errorf("listing API keys in Redis: index: %w", err)
		}
	}
	_, err = s.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, h := range hashes {
			cmds[i] = p.HGetAll(ctx, s.recordKey(h))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing API keys in Redis: %w", err)
	}
	var out []apikey.Record
	var errs []error
	for i, cmd := range cmds {
		fields := cmd.Val()
		if len(fields) == 0 {
			continue // removed by hand
		}
		r, err := decode(hashes[i], fields)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if kind == "" || r.Kind == kind {
			out = append(out, r)
		}
	}
	return out, errors.Join(errs...)
}

// encode returns r's fields and values for HSET; times are unix ms.
func encode(r apikey.Record) []any {
	f := []any{"kind", r.Kind, "name", r.Name, "created", r.Created.UnixMilli()}
	for _, t := range []struct {
		name string
		t    time.Time
	}{{"expires", r.Expires}, {"revoked", r.Revoked}, {"used", r.LastUsed}} {
		if !t.t.IsZero() {
			f = append(f, t.name, t.t.UnixMilli())
		}
	}
	if l := r.Limits; l != nil {
		if l.Rate != "" {
			f = append(f, "rate", l.Rate)
		}
		if l.Burst != 0 {
			f = append(f, "burst", l.Burst)
		}
		if l.Budget != "" {
			f = append(f, "budget", l.Budget)
		}
	}
	return f
}

// decode reads the record of h from its fields.
func decode(h apikey.Hash, f map[string]string) (apikey.Record, error) {
	r := apikey.Record{Kind: f["kind"], Name: f["name"], Hash: h}
	fail := func(what string) (apikey.Record, error) {
		return apikey.Record{}, fmt.Errorf("API key %s/%s in Redis: bad %s %q", r.Kind, r.Name, what, f[what])
	}
	for _, t := range []struct {
		name string
		to   *time.Time
	}{{"created", &r.Created}, {"expires", &r.Expires}, {"revoked", &r.Revoked}, {"used", &r.LastUsed}} {
		v, ok := f[t.name]
		if !ok {
			continue
		}
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fail(t.name)
		}
		*t.to = time.UnixMilli(ms).UTC()
	}
	if f["rate"] != "" || f["burst"] != "" || f["budget"] != "" {
		r.Limits = &apikey.Limits{Rate: f["rate"], Budget: f["budget"]}
		if v := f["burst"]; v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return fail("burst")
			}
			r.Limits.Burst = n
		}
	}
	if err := r.Validate(); err != nil {
		return apikey.Record{}, fmt.Errorf("API key %s/%s in Redis: %w", r.Kind, r.Name, err)
	}
	return r, nil
}
