// Package redis is the ratelimit.Store that several gateway instances
// share through one Redis server. It is the only package of the limiter
// that imports a Redis client.
//
// Every operation is one Lua script run with EVALSHA (falling back to EVAL
// when the server does not have it cached, after a restart for example),
// so the check and the update are one atomic step on the server. The
// scripts do exactly the arithmetic of ratelimit.Memory, in whole
// microseconds, on the caller's clock: see ratelimit.Store for why the
// caller's clock and not the server's TIME, and what clock skew between
// instances does. Every key carries a TTL, so state for idle clients and
// past windows disappears on its own.
package redis

import (
	"context"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/keyward/keyward/internal/breaker"
	"github.com/keyward/keyward/internal/ratelimit"
	"github.com/keyward/keyward/internal/redisstore"
)

// DefaultPrefix is prepended to every key when none is given, so that the
// limiter can share a Redis database with the response cache and others.
const DefaultPrefix = "keyward:ratelimit:"

// budgetGrace keeps a budget counter alive a little past its window, so
// that an instance whose clock is behind still finds it.
const budgetGrace = time.Minute

// gcraGrace keeps a GCRA key alive a little past the moment its debt is
// paid. The TTL runs on the server's clock while the debt was computed on
// the caller's, so without it an instance whose clock is behind (or a test
// whose simulated clock runs slower than real time) could find a key gone
// while it still owes, and admit a fresh burst.
const gcraGrace = 10 * time.Second

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
	// Cooldown is how long the Store answers ErrUnavailable without
	// asking Redis after three consecutive faults, so that during an
	// outage requests pay the store timeout only once per cooldown instead
	// of every time; the first call after it probes Redis again, which is
	// how recovery is automatic. 0 means DefaultCooldown; a negative value
	// disables failing fast.
	Cooldown time.Duration
}

// Store is a ratelimit.Store on Redis. It is safe for concurrent use.
type Store struct {
	client  goredis.Scripter
	prefix  string
	breaker *breaker.Breaker
}

var _ ratelimit.Store = (*Store)(nil)

// New returns a Store that runs its scripts on client (a *goredis.Client,
// a cluster or ring client, or anything else that can run scripts). Each
// script touches one key, so it works on Redis Cluster too.
//
// The client's own timeouts are a backstop only: the Limiter bounds each
// call with a context deadline, which go-redis honours only with
// ContextTimeoutEnabled, as redisstore.NewClient sets.
func New(client goredis.Scripter, o Options) *Store {
	s := &Store{client: client, prefix: o.Prefix}
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	if o.Cooldown == 0 {
		o.Cooldown = DefaultCooldown
	}
	s.breaker = breaker.New(o.Cooldown)
	return s
}

// run runs one script unless the breaker is open, and keeps the breaker's
// books. Time is the caller's now, like everything else in the Store.
func (s *Store) run(ctx context.Context, now time.Time, script *goredis.Script, key string, args ...any) *goredis.Cmd {
	if err := s.breaker.Allow(now); err != nil {
		cmd := goredis.NewCmd(ctx)
		cmd.SetErr(err)
		return cmd
	}
	cmd := script.Run(ctx, s.client, []string{key}, args...)
	err := cmd.Err()
	s.breaker.Done(ctx, now, err, redisstore.Answered(err))
	return cmd
}

// gcraScript is ratelimit.Memory.GCRA. ARGV: now, emission, limit, all in
// µs, and the TTL grace in ms. Numbers are formatted with %.0f because Lua's default formatting
// would round a µs timestamp to 14 significant digits.
var gcraScript = goredis.NewScript(`
local now = tonumber(ARGV[1])
local emission = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new = tat + emission
if new - limit > now then
  return {0, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + tonumber(ARGV[4]))
return {1, new - now}
`)

// undoGCRAScript is ratelimit.Memory.UndoGCRA. ARGV: now, emission in µs,
// and the TTL grace in ms.
var undoGCRAScript = goredis.NewScript(`
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local now = tonumber(ARGV[1])
local new = tat - tonumber(ARGV[2])
if new <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + tonumber(ARGV[3]))
end
return 0
`)

// budgetScript is ratelimit.Memory.Budget. The window is part of the key,
// so a new window starts from a missing key. ARGV: limit, TTL in ms.
var budgetScript = goredis.NewScript(`
local n = tonumber(redis.call('GET', KEYS[1])) or 0
if n >= tonumber(ARGV[1]) then
  return {0, n}
end
n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {1, n}
`)

// undoBudgetScript is ratelimit.Memory.UndoBudget.
var undoBudgetScript = goredis.NewScript(`
local n = tonumber(redis.call('GET', KEYS[1])) or 0
if n > 0 then redis.call('DECR', KEYS[1]) end
return 0
`)

// GCRA implements ratelimit.Store.
func (s *Store) GCRA(ctx context.Context, key string, now time.Time, emission, limit time.Duration) (bool, time.Duration, error) {
	r, err := s.run(ctx, now, gcraScript, s.prefix+key,
		now.UnixMicro(), emission.Microseconds(), limit.Microseconds(), gcraGrace.Milliseconds()).Int64Slice()
	if err != nil {
		return false, 0, fmt.Errorf("redis GCRA %q: %w", key, err)
	}
	if len(r) != 2 {
		return false, 0, fmt.Errorf("redis GCRA %q: unexpected reply %v", key, r)
	}
	return r[0] == 1, time.Duration(r[1]) * time.Microsecond, nil
}

// UndoGCRA implements ratelimit.Store.
func (s *Store) UndoGCRA(ctx context.Context, key string, now time.Time, emission time.Duration) error {
	err := s.run(ctx, now, undoGCRAScript, s.prefix+key, now.UnixMicro(), emission.Microseconds(), gcraGrace.Milliseconds()).Err()
	if err != nil {
		return fmt.Errorf("redis undo GCRA %q: %w", key, err)
	}
	return nil
}

// Budget implements ratelimit.Store.
func (s *Store) Budget(ctx context.Context, key string, now time.Time, limit int64, window ratelimit.Window) (bool, int64, error) {
	ttl := window.End(now).Sub(now) + budgetGrace
	r, err := s.run(ctx, now, budgetScript, s.budgetKey(key, now, window), limit, ttl.Milliseconds()).Int64Slice()
	if err != nil {
		return false, 0, fmt.Errorf("redis budget %q: %w", key, err)
	}
	if len(r) != 2 {
		return false, 0, fmt.Errorf("redis budget %q: unexpected reply %v", key, r)
	}
	return r[0] == 1, r[1], nil
}

// UndoBudget implements ratelimit.Store.
func (s *Store) UndoBudget(ctx context.Context, key string, now time.Time, window ratelimit.Window) error {
	if err := s.run(ctx, now, undoBudgetScript, s.budgetKey(key, now, window)).Err(); err != nil {
		return fmt.Errorf("redis undo budget %q: %w", key, err)
	}
	return nil
}

// budgetKey names the counter of key's window containing now by the
// window's start in unix seconds.
func (s *Store) budgetKey(key string, now time.Time, window ratelimit.Window) string {
	return s.prefix + key + ":" + strconv.FormatInt(window.Start(now).Unix(), 10)
}
