// Package redis is the ratelimit.Store that several gateway instances
// share through one Redis server. It is the only package of the limiter
// that imports a Redis client.
//
// Every operation is one Lua script run with EVALSHA (falling back to EVAL
// when the server does not have it cached, after a restart for example),
// so the checks and the updates of all its keys are one atomic step on the
// server: a request one key refuses is counted at none. The
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

// New returns a Store that runs its scripts on client, normally the
// single-server client of redisstore.NewClient. A script touches all the
// keys of one step at once (a client and its wide network; the client,
// network and route budgets), which Redis Cluster allows only within one
// hash slot, so a cluster client would need keys hash-tagged by route,
// which this Store does not do.
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
func (s *Store) run(ctx context.Context, now time.Time, script *goredis.Script, keys []string, args ...any) *goredis.Cmd {
	if err := s.breaker.Allow(now); err != nil {
		cmd := goredis.NewCmd(ctx)
		cmd.SetErr(err)
		return cmd
	}
	cmd := script.Run(ctx, s.client, keys, args...)
	err := cmd.Err()
	s.breaker.Done(ctx, now, err, redisstore.Answered(err))
	return cmd
}

// gcraScript is ratelimit.Memory.GCRA: every key conforms and all are
// spent, or nothing changes. KEYS: one per cell. ARGV: now in µs, the TTL
// grace in ms, then each cell's emission and limit in µs. The reply is
// {allowed, debt of each cell in µs}. Numbers are written with %.0f
// because Lua's default formatting would round a µs timestamp to 14
// significant digits.
var gcraScript = goredis.NewScript(`
local now = tonumber(ARGV[1])
local grace = tonumber(ARGV[2])
local tats = {}
local ok = 1
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  tats[i] = tat
  if tat + tonumber(ARGV[2*i+1]) - tonumber(ARGV[2*i+2]) > now then ok = 0 end
end
local reply = {ok}
for i = 1, #KEYS do
  local tat = tats[i]
  if ok == 1 then
    tat = tat + tonumber(ARGV[2*i+1])
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + grace)
  end
  reply[i+1] = tat - now
end
return reply
`)

// budgetScript is ratelimit.Memory.Budget: every count stays within its
// limit and all are counted, or nothing changes. The window is part of
// each key, so a new window starts from a missing key, which is created
// with its TTL. KEYS: one per cell. ARGV: n, then each cell's limit and
// TTL in ms. The reply is {allowed, count of each cell}.
var budgetScript = goredis.NewScript(`
local n = tonumber(ARGV[1])
local used = {}
local ok = 1
for i = 1, #KEYS do
  used[i] = tonumber(redis.call('GET', KEYS[i])) or 0
  if used[i] + n > tonumber(ARGV[2*i]) then ok = 0 end
end
local reply = {ok}
for i = 1, #KEYS do
  if ok == 1 then
    if used[i] == 0 then
      redis.call('SET', KEYS[i], n, 'PX', ARGV[2*i+1])
      used[i] = n
    else
      used[i] = redis.call('INCRBY', KEYS[i], n)
    end
  end
  reply[i+1] = used[i]
end
return reply
`)

// GCRA implements ratelimit.Store.
func (s *Store) GCRA(ctx context.Context, now time.Time, cells []ratelimit.RateCell) (bool, error) {
	if len(cells) == 0 {
		return true, nil
	}
	keys := make([]string, len(cells))
	args := make([]any, 2, 2+2*len(cells))
	args[0], args[1] = now.UnixMicro(), gcraGrace.Milliseconds()
	for i, c := range cells {
		keys[i] = s.prefix + c.Key
		args = append(args, c.Emission.Microseconds(), c.Limit.Microseconds())
	}
	r, err := s.run(ctx, now, gcraScript, keys, args...).Int64Slice()
	if err == nil && len(r) != 1+len(cells) {
		err = fmt.Errorf("unexpected reply %v", r)
	}
	if err != nil {
		return false, fmt.Errorf("redis GCRA %q: %w", cells[0].Key, err)
	}
	for i := range cells {
		cells[i].Debt = time.Duration(r[i+1]) * time.Microsecond
	}
	return r[0] == 1, nil
}

// Budget implements ratelimit.Store.
func (s *Store) Budget(ctx context.Context, now time.Time, n int64, cells []ratelimit.BudgetCell) (bool, error) {
	if len(cells) == 0 {
		return true, nil
	}
	keys := make([]string, len(cells))
	args := make([]any, 1, 1+2*len(cells))
	args[0] = n
	for i, c := range cells {
		keys[i] = s.budgetKey(c.Key, now, c.Window)
		ttl := c.Window.End(now).Sub(now) + budgetGrace
		args = append(args, c.Limit, ttl.Milliseconds())
	}
	r, err := s.run(ctx, now, budgetScript, keys, args...).Int64Slice()
	if err == nil && len(r) != 1+len(cells) {
		err = fmt.Errorf("unexpected reply %v", r)
	}
	if err != nil {
		return false, fmt.Errorf("redis budget %q: %w", cells[0].Key, err)
	}
	for i := range cells {
		cells[i].Used = r[i+1]
	}
	return r[0] == 1, nil
}

// budgetKey names the counter of key's window containing now by the
// window's start in unix seconds.
func (s *Store) budgetKey(key string, now time.Time, window ratelimit.Window) string {
	return s.prefix + key + ":" + strconv.FormatInt(window.Start(now).Unix(), 10)
}
