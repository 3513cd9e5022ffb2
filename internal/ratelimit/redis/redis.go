// Package redis is the ratelimit.Store that several gateway instances
// share through Redis: one server, a master behind Sentinel, or a Redis
// Cluster (see below). It is the only package of the limiter that
// imports a Redis client.
//
// Every operation is one Lua script run with EVALSHA (falling back to EVAL
// when the server does not have it cached, after a restart for example),
// so the checks and the updates of all its keys are one atomic step on the
// server: a request one key refuses is counted at none. Amounts are
// integers below 2^53 (money in micro-dollars, tokens, requests), which
// Lua's doubles hold exactly, so sums are exact on every instance. The
// scripts do exactly the arithmetic of ratelimit.Memory, in whole
// microseconds, on the caller's clock: see ratelimit.Store for why the
// caller's clock and not the server's TIME, and what clock skew between
// instances does. Every key carries a TTL, so state for idle clients and
// past windows disappears on its own.
//
// # Budgets when Redis loses its data
//
// A Redis without persistence that restarts comes back empty, and so does
// a failover to an empty replica or a FLUSHALL; a key can also be evicted
// alone, and a restart from a snapshot or a failover to a lagging replica
// loses the last writes. A budget that simply started again from the
// count Redis has would then admit what was already spent a second time
// (a 5,000/day budget let through 7,000). So the Store keeps the shared
// count restorable, reservations and settlements included:
//
//   - Each instance keeps a ledger, in its own memory, of what it spent
//     at every budget key of a live window (DefaultLedgerKeys keys at
//     most), and has a random id for the life of the process. A ledger
//     entry is two gross amounts that only grow: what the instance
//     counted there (reservations, excess charges) and what it gave back
//     (settlements below the reservation), each recorded once Redis has
//     applied it.
//   - A budget key is a hash holding the total and, per instance, the
//     same two gross amounts, updated together, so the total is the sum
//     over instances of counted minus given back.
//   - Every budget call (and settlement) passes the ledger's amounts for
//     each of its keys, and the script first brings this instance's two
//     amounts at each key up to the ledger's, adjusting the total by what
//     they lacked, then compares the limits. A key that lost part of its
//     count (eviction, a lagging replica) thus gets this instance's share
//     back before this instance's next admission there. Because both
//     amounts only grow and the ledger records them only once applied, a
//     stale reading of the ledger is low and restores nothing that Redis
//     has: repeating a restore changes nothing, and concurrent
//     settlements cannot put back each other's refunds (a net amount
//     could, which TestReserveConcurrent caught).
//   - A loss of everything is detected exactly: an epoch hash that every
//     budget call reads holds a random id, created when missing. An
//     instance with spend in a live window that finds an epoch other than
//     the one it knows counts nothing, starts a hold (Options.Hold) during
//     which no instance admits anything against any budget, and restores
//     its whole ledger in the background; then it adopts the epoch. An
//     instance that sits idle finds the loss through Probe, which Run calls
//     every ProbeInterval and which also notices a restart that kept the
//     epoch (a snapshot) by Redis's run id, and extends the hold in turn.
//     The hold (2 s by default) outlasts several probe intervals (500 ms),
//     so when admissions resume the total is the sum of what every live
//     instance spent, and the budget is never exceeded.
//
// During the hold a budget call fails with ErrRestoring, and the route's
// on_store_error policy answers it, as for an outage: fail_closed refuses
// (the budget stays exact), fail_open admits, and what it admits is
// counted in the ledger (Store.AdmittedOnFault), so it is added to the
// shared count once Redis answers again. That is also what fail_open now
// means during an outage: the spend is not lost, only counted late, so the
// budget is exceeded by at most what the instances admit while Redis
// cannot count.
//
// What remains outside the guarantee: an instance that cannot reach Redis
// during the whole hold (its share comes back when it reconnects, which
// may then hold again); spend of a process that exited (its ledger is
// gone, though its share survives in Redis unless Redis loses it too);
// beyond DefaultLedgerKeys live keys on one instance, the shares of
// forgotten client keys; after a partial loss that keeps the epoch and
// the run id (a single evicted key), the shares of instances that do not
// call that key again. Redis should run with appendonly yes and
// maxmemory-policy noeviction, which redisstore.Persistence checks.
//
// # Redis Cluster
//
// A budget call is one script on the epoch hash and every budget key of
// the request (the route's, the client's and its wide network's, the
// spend cap, in money and tokens), and a restore is one on the epoch and
// any of the instance's keys. Redis Cluster runs a script only on keys of
// one hash slot, and the epoch guards every budget key, so on a cluster
// every key of the Store shares one slot: the prefix is made their hash
// tag ("{keyward:ratelimit:}route:..."). Rate limits and pauses go there
// too, so that NOSCRIPT still means a restarted server (see run). A
// cluster thus gives the limiter failover (its slot moves to a replica)
// and room for the cache beside it, not more throughput: the limiter's
// load is one master's. On one server and behind Sentinel the keys keep
// their names without a tag, so that a rolling upgrade counts on at the
// same keys.
//
// # The kill switch
//
// The Store is also ratelimit.Pauses: the paused routes are one hash,
// which each instance reads at most every PauseRefresh (500 ms) on the
// request path and on every Run tick, so a pause reaches every instance
// within a second without a reload; the instance that writes it obeys at
// once. A Redis that loses the hash gets it back from the first instance
// with a recent view, so an emergency stop does not lift itself.
package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
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

// ErrRestoring is returned, wrapped, by a budget call while a budget
// cannot be counted exactly: Redis lost budget counts and the instances
// are putting back what they spent (see the package doc). The route's
// fault policy decides, as for an outage.
var ErrRestoring = errors.New("restoring budgets that redis lost")

// epochTTL is the epoch hash's TTL in ms, written into the scripts: 40
// days, longer than a month's window and its grace.
const epochTTL = "3456000000"

// DefaultHold is how long budget admissions wait after an instance
// finds that Redis lost its spend, when Options does not say: four probe
// intervals, so that every live instance has probed and restored its own
// spend before anyone admits again.
const DefaultHold = 2 * time.Second

// DefaultProbeInterval is how often Run probes when Options does not
// say.
const DefaultProbeInterval = 500 * time.Millisecond

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
	// Hold is how long no instance admits anything against a budget after
	// one found that Redis lost its spend; it must outlast ProbeInterval
	// several times over. 0 means DefaultHold.
	Hold time.Duration
	// ProbeInterval is how often Run probes for a loss. 0 means
	// DefaultProbeInterval.
	ProbeInterval time.Duration
	// PauseRefresh is how old this instance's view of the paused routes
	// may grow before a request refreshes it. 0 means
	// DefaultPauseRefresh.
	PauseRefresh time.Duration
	// LedgerKeys bounds the ledger of this instance's own spend; 0 means
	// DefaultLedgerKeys.
	LedgerKeys int
	// Now returns the current time for Run and the background restore;
	// nil means time.Now. Every other call takes the caller's now.
	Now func() time.Time
}

// Store is a ratelimit.Store on Redis. It is safe for concurrent use.
type Store struct {
	client        goredis.Scripter
	prefix        string
	breaker       *breaker.Breaker
	epochKey      string
	idArg         any // this instance's field in each budget hash, a string
	holdArg       any // the hold in µs, an int64
	probeInterval time.Duration
	now           func() time.Time
	ledger        *ledger

	// known is the epoch whose counts hold this instance's spend; 0 for
	// none yet.
	known atomic.Int64
	// flight is held for reading by a budget call from reading the ledger
	// to updating it, and for writing by a restore's snapshot.
	flight sync.RWMutex
	// restoring is held by the one restore or probe running.
	restoring sync.Mutex

	// ran is set for each script once it has run: a server that then
	// lacks it has restarted (see run). The map itself is never written.
	ran map[*goredis.Script]*atomic.Bool

	pauseKey        string
	pauseRefresh    time.Duration
	pauseView       atomic.Pointer[pauseView]
	pauseRefreshing atomic.Bool
	pauseRefreshes  sync.WaitGroup // background refreshes, for tests
	pauseSeq        atomic.Uint64  // numbers pause reads as they begin (keepView)

	mu    sync.Mutex
	runID string              // the server's run id at the last probe
	dirty map[string]struct{} // keys AdmittedOnFault added to since the last probe
}

var _ ratelimit.Store = (*Store)(nil)

// New returns a Store that runs its scripts on client, opened with
// redisstore.Open: one server, a master found through Sentinel, or a
// Redis Cluster, on which every key of the Store gets the prefix as its
// hash tag (see the package doc).
//
// The client's own timeouts are a backstop only: the Limiter bounds each
// call with a context deadline, which go-redis honours only with
// ContextTimeoutEnabled, as redisstore.Open sets.
func New(client goredis.Scripter, o Options) *Store {
	s := &Store{client: client, prefix: o.Prefix, probeInterval: o.ProbeInterval, now: o.Now, ledger: newLedger(o.LedgerKeys), dirty: make(map[string]struct{})}
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	if redisstore.Cluster(client) {
		s.prefix = redisstore.HashTag(s.prefix)
	}
	s.epochKey = s.prefix + "epoch"
	s.pauseKey = s.prefix + "paused"
	s.pauseRefresh = o.PauseRefresh
	if s.pauseRefresh <= 0 {
		s.pauseRefresh = DefaultPauseRefresh
	}
	s.ran = make(map[*goredis.Script]*atomic.Bool)
	for _, script := range []*goredis.Script{gcraScript, budgetScript, restoreScript, adjustScript, probeScript, pauseReadScript, pauseWriteScript} {
		s.ran[script] = new(atomic.Bool)
	}
	if o.Cooldown == 0 {
		o.Cooldown = DefaultCooldown
	}
	s.breaker = breaker.New(o.Cooldown)
	if o.Hold <= 0 {
		o.Hold = DefaultHold
	}
	s.holdArg = o.Hold.Microseconds() // boxed once, not per call
	if s.probeInterval <= 0 {
		s.probeInterval = DefaultProbeInterval
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.idArg = "i" + strconv.FormatUint(rand.Uint64(), 36) // never "t", the total's field
	return s
}

// newServer forgets which scripts have run, once this instance knows the
// server is a new one: the other scripts' NOSCRIPT then tells nothing
// new.
func (s *Store) newServer() {
	for _, ran := range s.ran {
		ran.Store(false)
	}
}

// noKnown is run's knownAt for a script that takes no known epoch.
const noKnown = -1

// run runs one script unless the breaker is open, and keeps the breaker's
// books. Time is the caller's now, like everything else in the Store.
//
// A server that does not have a script this process has run on it has
// restarted or failed over, and may have lost budget counts even if it
// kept the epoch (a restart from a snapshot, a lagging replica): run then
// forgets the epoch this instance knows, so that the script, which gets
// the known epoch at args[knownAt], starts a hold and this instance
// restores its ledger (see the package doc). Only the first instance to
// call after the restart sees the script missing; the others find the
// loss by the run id when they probe, within the hold.
func (s *Store) run(ctx context.Context, now time.Time, script *goredis.Script, keys []string, args []any, knownAt int) *goredis.Cmd {
	return s.exec(ctx, now, script, keys, args, knownAt, true)
}

// exec is run; a call with blame false does not count its failure
// against Redis in the breaker (its success still counts for it). The
// pause refresh uses that: it is bounded by its own short timeout, and a
// refresh that a busy machine made late must not open the breaker for the
// budget calls, whose policy (fail_open) would then admit past a budget
// that Redis was answering in time.
func (s *Store) exec(ctx context.Context, now time.Time, script *goredis.Script, keys []string, args []any, knownAt int, blame bool) *goredis.Cmd {
	if err := s.breaker.Allow(now); err != nil {
		cmd := goredis.NewCmd(ctx)
		cmd.SetErr(err)
		return cmd
	}
	// Whether the script ran is read before sending it: a concurrent
	// first call may load it meanwhile, which says nothing about a
	// restart.
	ran := s.ran[script]
	ranBefore := ran.Load()
	cmd := script.EvalSha(ctx, s.client, keys, args...)
	if err := cmd.Err(); err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT") { // HasErrorPrefix allocates
		if ranBefore {
			s.newServer()
			if s.ledger.holds(now.UnixMicro()) {
				s.known.Store(0)
				if knownAt >= 0 {
					args[knownAt] = int64(0)
				}
			}
		}
		cmd = script.Eval(ctx, s.client, keys, args...)
	}
	err := redisstore.WithContext(ctx, cmd.Err())
	cmd.SetErr(err)
	if err == nil && !ran.Load() {
		ran.Store(true)
	}
	if healthy := redisstore.Answered(err); blame || healthy {
		s.breaker.Done(ctx, now, err, healthy)
	}
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

// The budget scripts share these steps. A budget key is a hash: field
// "t" is the total; each instance has a field, its id, with the gross
// amount it counted there, and a field, its id and "-", with the gross
// amount it gave back, so that t is the sum over instances of the first
// minus the second. restore brings this instance's two fields up to its
// ledger's (see ledger: both only grow, so a stale ledger is low and
// changes nothing), adjusting t by what they lacked, and returns the
// key's total and whether the key exists.
//
// int writes a number for a command: Lua's default formatting would write
// 14 significant digits, rounding µs timestamps and large amounts. Adding
// 0.0 turns a negative zero, which Redis refuses as "-0", into 0.
//
// newEpoch creates the epoch hash. Its id is the server's clock in µs:
// a later creation, after a loss, always has another id, and it stays
// below 2^53, which Lua's doubles hold exactly. The TTL is longer than
// any window, so that it outlives every count it guards yet does not live
// forever; Probe refreshes it while any instance has spend to guard.
const scriptLib = `
local function int(x) return string.format('%.0f', x + 0.0) end
local function newEpoch(key)
  local t = redis.call('TIME')
  local id = int(tonumber(t[1]) * 1000000 + tonumber(t[2]))
  redis.call('HSET', key, 'id', id)
  redis.call('PEXPIRE', key, ` + epochTTL + `)
  return id
end
local function restore(key, me, counted, refunded, ttl)
  local v = redis.call('HMGET', key, 't', me, me .. '-')
  local total, c, r = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
  local d = 0
  if counted > c then
    d = counted - c
    redis.call('HSET', key, me, int(counted))
  end
  if refunded > r then
    d = d - (refunded - r)
    redis.call('HSET', key, me .. '-', int(refunded))
  end
  if d == 0 then return total, v[1] ~= false end
  total = math.max(total + d, 0)
  redis.call('HSET', key, 't', int(total))
  if not v[1] then redis.call('PEXPIRE', key, ttl) end
  return total, true
end
`

// budgetScript is ratelimit.Memory.Budget with the restore protocol of
// the package doc: every count stays within its limit and all are
// counted, or nothing is. The window is part of each key, so a new window
// starts from a missing key, which is created with its TTL.
//
// KEYS: the epoch hash, then one per cell. ARGV: now in µs, this
// instance's id, the epoch it knows ("0" for none), the hold in µs, "1"
// if this instance has spend to restore, then for each cell n, its
// limit, its TTL in ms and this instance's ledger at it (gross counted,
// gross given back). The reply is {status,
// epoch, hold end in µs, total of each cell}, status 1 when counted, 0
// when a limit refused, -1 when this instance must restore its ledger
// first (nothing done at the cells), -2 during a hold (own spend restored
// at the cells, nothing counted).
var budgetScript = goredis.NewScript(scriptLib + `
local now, me, known, hold = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local e = redis.call('HMGET', KEYS[1], 'id', 'hold')
local id, untl = e[1], tonumber(e[2]) or 0
if not id then id = newEpoch(KEYS[1]) end
if id ~= known and ARGV[5] == '1' then
  if untl < now + hold then
    untl = now + hold
    redis.call('HSET', KEYS[1], 'hold', int(untl))
  end
  return {-1, tonumber(id), untl}
end
local reply = {1, tonumber(id), untl}
local existed = {}
for i = 2, #KEYS do
  local j = 5*i - 4
  local total, ex = restore(KEYS[i], me, tonumber(ARGV[j+3]), tonumber(ARGV[j+4]), ARGV[j+2])
  reply[i+2], existed[i] = total, ex
  if total + tonumber(ARGV[j]) > tonumber(ARGV[j+1]) then reply[1] = 0 end
end
if now < untl then reply[1] = -2 end
if reply[1] ~= 1 then return reply end
for i = 2, #KEYS do
  local j = 5*i - 4
  reply[i+2] = redis.call('HINCRBY', KEYS[i], 't', ARGV[j])
  redis.call('HINCRBY', KEYS[i], me, ARGV[j])
  if not existed[i] then redis.call('PEXPIRE', KEYS[i], ARGV[j+2]) end
end
return reply
`)

// restoreScript puts back this instance's ledger after Redis lost (or may
// have lost) it, and holds every instance's budget admissions while it
// runs (with no keys, it only reports the epoch).
// KEYS: the epoch hash, then the ledger's keys. ARGV: now in µs, this
// instance's id, the hold in µs (0: none), then for each key this
// instance's ledger (gross counted, gross given back) and the key's TTL in
// ms. The reply is {epoch, hold end in µs}.
var restoreScript = goredis.NewScript(scriptLib + `
local now, me, hold = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local e = redis.call('HMGET', KEYS[1], 'id', 'hold')
local id, untl = e[1], tonumber(e[2]) or 0
if not id then id = newEpoch(KEYS[1]) end
if #KEYS > 1 and hold > 0 and untl < now + hold then
  untl = now + hold
  redis.call('HSET', KEYS[1], 'hold', int(untl))
end
for i = 2, #KEYS do
  local j = 3*i - 2
  restore(KEYS[i], me, tonumber(ARGV[j]), tonumber(ARGV[j+1]), ARGV[j+2])
end
return {tonumber(id), untl}
`)

// adjustScript is ratelimit.Memory.Adjust, after restoring this
// instance's fields at each key (see restore): a key the restore finds
// missing with nothing to put back has expired, and is not recreated. An
// amount given back is added to this instance's gross refunds, one
// counted to its gross count; the total never goes below zero. KEYS: one
// per cell. ARGV: this instance's id, then for each cell the amount, this
// instance's ledger at it (gross counted, gross given back) and its TTL
// in ms.
var adjustScript = goredis.NewScript(scriptLib + `
local me = ARGV[1]
for i = 1, #KEYS do
  local j = 4*i - 2
  local n = tonumber(ARGV[j])
  local total, existed = restore(KEYS[i], me, tonumber(ARGV[j+1]), tonumber(ARGV[j+2]), ARGV[j+3])
  if existed then
    if n < 0 then
      redis.call('HINCRBY', KEYS[i], me .. '-', int(-n))
    else
      redis.call('HINCRBY', KEYS[i], me, int(n))
    end
    redis.call('HSET', KEYS[i], 't', int(math.max(total + n, 0)))
  end
end
return 1
`)

// probeScript is the epoch check of budgetScript for an instance with
// spend to restore, without cells, plus a check of the server's run id,
// which changes when Redis restarts (even from a snapshot that kept the
// epoch) or fails over to another server. When either says this instance
// must restore its ledger, it starts the hold at once, so that no
// instance admits anything before the restore is done. KEYS: the epoch
// hash. ARGV: now in µs, the epoch this instance knows, the hold in µs,
// the run id this instance knows ("" for none). The reply is {epoch, run id, 1 if this
// instance must restore}.
var probeScript = goredis.NewScript(scriptLib + `
local now, known, hold, knownRun = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local e = redis.call('HMGET', KEYS[1], 'id', 'hold')
local id, untl = e[1], tonumber(e[2]) or 0
if id then
  redis.call('PEXPIRE', KEYS[1], ` + epochTTL + `)
else
  id = newEpoch(KEYS[1])
end
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
local lost = 0
if id ~= known or (knownRun ~= '' and run ~= knownRun) then
  lost = 1
  if untl < now + hold then
    redis.call('HSET', KEYS[1], 'hold', int(now + hold))
  end
end
return {tonumber(id), run, lost}
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
	r, err := s.run(ctx, now, gcraScript, keys, args, noKnown).Int64Slice()
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

// Budget implements ratelimit.Store: the counts and this instance's
// restores at all cells are one script, so a key that lost this
// instance's spend gets it back before the limit is compared with it.
func (s *Store) Budget(ctx context.Context, now time.Time, cells []ratelimit.BudgetCell) (bool, error) {
	if len(cells) == 0 {
		return true, nil
	}
	t := now.UnixMicro()
	keys := make([]string, 1+len(cells))
	keys[0] = s.epochKey
	args := make([]any, 5, 5+5*len(cells))
	// The ledger is read and written under the flight lock, so that a
	// restore's snapshot never misses a count Redis has made and the ledger
	// not yet (see restore).
	s.flight.RLock()
	defer s.flight.RUnlock()
	// The ledger first: a call that has put spend into it has stored the
	// epoch it learned before, so this call cannot pair a ledger with
	// spend with an epoch older than the spend's, and mistake a
	// concurrent call's first count for a loss.
	restoring := "0"
	if s.ledger.holds(t) {
		restoring = "1"
	}
	known := s.known.Load()
	args[0], args[1], args[2], args[3], args[4] = t, s.idArg, known, s.holdArg, restoring
	for i, c := range cells {
		keys[i+1] = s.budgetKey(c.Key, now, c.Window)
		e := s.ledger.get(keys[i+1])
		args = append(args, c.N, c.Limit, s.ttl(now, c.Window).Milliseconds(), e.counted, e.refunded)
	}
	r, err := s.run(ctx, now, budgetScript, keys, args, 2).Int64Slice()
	if err == nil && (len(r) < 3 || (r[0] != -1 && len(r) != 3+len(cells))) {
		err = fmt.Errorf("unexpected reply %v", r)
	}
	if err != nil {
		return false, fmt.Errorf("redis budget %q: %w", cells[0].Key, err)
	}
	if r[0] == -1 {
		s.restoreAsync(r[1])
		return false, fmt.Errorf("redis budget %q: %w", cells[0].Key, ErrRestoring)
	}
	if r[1] != known {
		s.known.CompareAndSwap(known, r[1])
	}
	for i := range cells {
		cells[i].Used = r[i+3]
	}
	switch r[0] {
	case -2:
		return false, fmt.Errorf("redis budget %q: %w until %v", cells[0].Key, ErrRestoring, time.UnixMicro(r[2]).UTC().Format(time.RFC3339Nano))
	case 1:
		for i, c := range cells {
			s.ledger.count(keys[i+1], c.N, c.Window.End(now).Add(budgetGrace).UnixMicro(), t)
		}
		return true, nil
	}
	return false, nil
}

// AdmittedOnFault implements ratelimit.Store: what the caller let through
// while Redis could not count it goes into this instance's ledger, and so
// into the shared counts at this instance's next call to each key once
// Redis answers again.
func (s *Store) AdmittedOnFault(now time.Time, cells []ratelimit.BudgetCell) {
	t := now.UnixMicro()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range cells {
		key := s.budgetKey(c.Key, now, c.Window)
		s.ledger.count(key, c.N, c.Window.End(now).Add(budgetGrace).UnixMicro(), t)
		s.dirty[key] = struct{}{}
	}
}

// Adjust implements ratelimit.Store. What it gives back or counts joins
// the ledger once Redis has applied it, so the ledger never holds more
// than Redis counted for this instance. A failed refund leaves the count
// higher than the spend, the safe side for the bill; a failed excess is
// spend Redis has not counted, so it is kept for the next probe, as
// AdmittedOnFault keeps its spend.
func (s *Store) Adjust(ctx context.Context, at, now time.Time, cells []ratelimit.BudgetCell) error {
	t := now.UnixMicro()
	keys := make([]string, 0, len(cells))
	ns := make([]int64, 0, len(cells))
	args := make([]any, 1, 1+4*len(cells))
	args[0] = s.idArg
	s.flight.RLock()
	defer s.flight.RUnlock()
	end := make([]int64, 0, len(cells))
	for _, c := range cells {
		e := c.Window.End(at)
		if !e.After(now) || c.N == 0 {
			continue // the window has ended: nothing depends on its count any more
		}
		key := s.budgetKey(c.Key, at, c.Window)
		l := s.ledger.get(key)
		keys, ns, end = append(keys, key), append(ns, c.N), append(end, e.Add(budgetGrace).UnixMicro())
		args = append(args, c.N, l.counted, l.refunded, e.Add(budgetGrace).Sub(now).Milliseconds())
	}
	if len(keys) == 0 {
		return nil
	}
	err := s.run(ctx, now, adjustScript, keys, args, noKnown).Err()
	if err != nil {
		err = fmt.Errorf("redis settle %q: %w", cells[0].Key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, key := range keys {
		switch n := ns[i]; {
		case n > 0:
			s.ledger.count(key, n, end[i], t)
			if err != nil {
				s.dirty[key] = struct{}{}
			}
		case err == nil:
			s.ledger.refund(key, -n, end[i], t)
		}
	}
	return err
}

// ttl is how long the key of the window containing now lives: to the
// window's end, and a grace for instances whose clock is behind.
func (s *Store) ttl(now time.Time, w ratelimit.Window) time.Duration {
	return w.End(now).Sub(now) + budgetGrace
}

// budgetKey names the hash of key's window containing now by the window's
// start in unix seconds. The ":spent" suffix keeps it apart from the
// plain counters (strings) of earlier versions, which a script reading a
// hash would fail on during a rolling upgrade.
func (s *Store) budgetKey(key string, now time.Time, window ratelimit.Window) string {
	return s.prefix + key + ":" + strconv.FormatInt(window.Start(now).Unix(), 10) + ":spent"
}

// restoreTimeout bounds one restore of the ledger.
const restoreTimeout = 10 * time.Second

// restoreAsync starts restoring the ledger for epoch unless this
// instance already did or is doing it. The request that found the loss
// does not wait: it is answered by its fault policy, and the hold keeps
// every instance from admitting until the restores are done.
func (s *Store) restoreAsync(epoch int64) {
	if s.known.Load() == epoch || !s.restoring.TryLock() {
		return
	}
	go func() {
		defer s.restoring.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), restoreTimeout)
		defer cancel()
		_ = s.restore(ctx, s.now()) // on failure the next call or probe tries again
	}()
}

// restoreBatch is how many keys one restore script carries: enough to
// restore a million-key ledger in seconds, few enough that one script
// does not stall Redis for other clients.
const restoreBatch = 256

// restore puts this instance's ledger back into Redis and then adopts
// the current epoch. The caller holds s.restoring.
//
// The snapshot is taken under the flight lock, when no budget call of
// this instance is between its script and its ledger update, so that it
// holds every count Redis has made for this instance. Counts made after
// it are restored by each key's next call, and cannot be admitted before
// then: the epoch is not adopted yet, so every call of this instance is
// refused with -1 until the restore is done.
func (s *Store) restore(ctx context.Context, now time.Time) error {
	s.flight.Lock()
	snap := s.ledger.snapshot(now.UnixMicro())
	s.flight.Unlock()
	s.mu.Lock()
	clear(s.dirty) // all of the ledger goes
	s.mu.Unlock()
	epoch, err := s.push(ctx, now, snap, true)
	if err != nil {
		return err
	}
	s.known.Store(epoch)
	return nil
}

// push runs restoreScript over entries in batches, holding admissions
// if hold is set, and returns the epoch it restored into.
func (s *Store) push(ctx context.Context, now time.Time, entries map[string]ledgerEntry, hold bool) (int64, error) {
	t := now.UnixMicro()
	keys := make([]string, 1, 1+min(len(entries), restoreBatch))
	keys[0] = s.epochKey
	args := make([]any, 3, 3+3*cap(keys))
	args[1], args[2] = s.idArg, int64(0)
	if hold {
		args[2] = s.holdArg
	}
	epoch := int64(0)
	flush := func() error {
		// The hold runs from each batch, so that a restore longer than the
		// hold still ends before anyone admits again.
		args[0] = s.now().UnixMicro()
		r, err := s.run(ctx, now, restoreScript, keys, args, noKnown).Int64Slice()
		if err == nil && len(r) != 2 {
			err = fmt.Errorf("unexpected reply %v", r)
		}
		if err != nil {
			return fmt.Errorf("restoring %d budget keys to redis: %w", len(keys)-1, err)
		}
		if epoch != 0 && r[0] != epoch {
			// Redis lost its data again while this restore ran: what the
			// earlier batches put back may be gone too.
			return fmt.Errorf("restoring budget keys to redis: %w", errEpochMoved)
		}
		epoch = r[0]
		keys, args = keys[:1], args[:3]
		return nil
	}
	for k, e := range entries {
		keys = append(keys, k)
		args = append(args, e.counted, e.refunded, max(time.Duration(e.end-t)*time.Microsecond, time.Millisecond).Milliseconds())
		if len(keys) == 1+restoreBatch {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	if len(keys) > 1 || epoch == 0 {
		if err := flush(); err != nil {
			return 0, err
		}
	}
	return epoch, nil
}

var errEpochMoved = errors.New("the epoch changed during the restore")

// Probe checks whether Redis lost what this instance spent in a live
// window, and if so restores it before returning. An instance that keeps
// calling Budget finds a loss on its own, but one that sits idle would
// not, and the budget would admit its share again; Run probes every
// ProbeInterval for that. It costs one round trip, and nothing at all on
// an instance with no spend in a live window.
func (s *Store) Probe(ctx context.Context, now time.Time) error {
	t := now.UnixMicro()
	if !s.ledger.holds(t) {
		return nil
	}
	s.restoring.Lock() // wait for a restore a request started
	defer s.restoring.Unlock()
	s.mu.Lock()
	run := s.runID
	s.mu.Unlock()
	r, err := s.run(ctx, now, probeScript, []string{s.epochKey}, []any{t, s.known.Load(), s.holdArg, run}, 1).Slice()
	if err == nil && len(r) != 3 {
		err = fmt.Errorf("unexpected reply %v", r)
	}
	if err != nil {
		return fmt.Errorf("probing redis for lost budgets: %w", err)
	}
	newRun, _ := r[1].(string)
	if run != "" && newRun != run {
		s.newServer()
	}
	if lost, _ := r[2].(int64); lost == 1 {
		if err := s.restore(ctx, now); err != nil {
			return err
		}
	} else if err := s.pushDirty(ctx, now); err != nil {
		return err
	}
	s.mu.Lock()
	s.runID = newRun
	s.mu.Unlock()
	return nil
}

// pushDirty puts into Redis what this instance admitted while Redis could
// not count it (AdmittedOnFault), without waiting for this instance's next
// call to each key: other instances would otherwise admit that share a
// second time. Nothing was lost, so nothing holds.
func (s *Store) pushDirty(ctx context.Context, now time.Time) error {
	s.mu.Lock()
	if len(s.dirty) == 0 {
		s.mu.Unlock()
		return nil
	}
	dirty := s.dirty
	s.dirty = make(map[string]struct{})
	s.mu.Unlock()
	entries := make(map[string]ledgerEntry, len(dirty))
	for k := range dirty {
		if e := s.ledger.get(k); e.counted > 0 {
			entries[k] = e
		}
	}
	if _, err := s.push(ctx, now, entries, false); err != nil {
		s.mu.Lock()
		for k := range dirty {
			s.dirty[k] = struct{}{}
		}
		s.mu.Unlock()
		return err
	}
	return nil
}

// Run probes (see Probe) and refreshes this instance's view of the
// paused routes every ProbeInterval until ctx is done, so that an idle
// instance too restores its spend after a loss and holds a recent view
// of the pauses to write back. The server runs it for the life of the
// store.
func (s *Store) Run(ctx context.Context) {
	tick := time.NewTicker(s.probeInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			// Faults are retried at the next tick; requests report them.
			pctx, cancel := context.WithTimeout(ctx, restoreTimeout)
			_ = s.Probe(pctx, s.now())
			cancel()
			pctx, cancel = context.WithTimeout(ctx, pauseTimeout)
			s.readPauses(pctx, s.now())
			cancel()
		}
	}
}
