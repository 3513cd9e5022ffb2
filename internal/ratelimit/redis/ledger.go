package redis

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// ledgerShards spreads the ledger over locks, as ratelimit.Memory does.
const ledgerShards = 64

// DefaultLedgerKeys is how many budget keys of live windows the ledger of
// one instance remembers when Options does not say: one per client that
// spent on this instance in the current window, each about 100 bytes.
const DefaultLedgerKeys = 1 << 20

// ledger is this instance's own count of what it spent at each budget key
// of a live window: what it must put back if Redis loses the key. It is
// the per-instance memory that survives a Redis restart, so that the
// shared count can be rebuilt as the sum of every instance's ledger.
type ledger struct {
	seed     maphash.Seed
	shardMax int
	// live is the latest window end, unix µs, of any entry ever recorded:
	// before it, the ledger may hold spend to restore.
	live   atomic.Int64
	shards [ledgerShards]ledgerShard
}

type ledgerShard struct {
	mu        sync.Mutex
	m         map[string]ledgerEntry // full Redis key -> entry
	nextSweep int
	// lastFullSweep is when a sweep last ran because the shard was full,
	// unix µs.
	lastFullSweep int64
	_             [64]byte // keep shards on separate cache lines
}

type ledgerEntry struct {
	end   int64 // window end plus the key's grace, unix µs
	spent int64
}

func newLedger(maxKeys int) *ledger {
	if maxKeys <= 0 {
		maxKeys = DefaultLedgerKeys
	}
	l := &ledger{seed: maphash.MakeSeed(), shardMax: max(1, maxKeys/ledgerShards)}
	for i := range l.shards {
		l.shards[i].m = make(map[string]ledgerEntry)
		l.shards[i].nextSweep = minSweep
	}
	return l
}

// minSweep is the shard size below which sweeping is not worth its cost.
const minSweep = 256

func (l *ledger) shard(key string) *ledgerShard {
	return &l.shards[maphash.String(l.seed, key)%ledgerShards]
}

// spent returns what this instance has spent at key.
func (l *ledger) spent(key string) int64 {
	s := l.shard(key)
	s.mu.Lock()
	n := s.m[key].spent
	s.mu.Unlock()
	return n
}

// add records n more spent at key, whose window (plus grace) ends at end,
// unix µs; a negative n is a refund, and the entry never goes below zero.
// now, unix µs, drives the sweep of past windows.
func (l *ledger) add(key string, n, end, now int64) {
	s := l.shard(key)
	s.mu.Lock()
	e, ok := s.m[key]
	if !ok {
		if n <= 0 {
			s.mu.Unlock()
			return
		}
		s.makeRoom(now, l.shardMax)
		e.end = end
	}
	e.spent = max(e.spent+n, 0)
	s.m[key] = e
	s.mu.Unlock()
	for {
		live := l.live.Load()
		if end <= live || l.live.CompareAndSwap(live, end) {
			return
		}
	}
}

// entry returns key's entry.
func (l *ledger) entry(key string) (ledgerEntry, bool) {
	s := l.shard(key)
	s.mu.Lock()
	e, ok := s.m[key]
	s.mu.Unlock()
	return e, ok
}

// holds reports whether the ledger may hold spend of a window that has
// not ended at now, unix µs.
func (l *ledger) holds(now int64) bool { return now < l.live.Load() }

// snapshot returns every entry of a live window at now, unix µs.
func (l *ledger) snapshot(now int64) map[string]ledgerEntry {
	out := make(map[string]ledgerEntry)
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			if e.end > now && e.spent > 0 {
				out[k] = e
			}
		}
		s.mu.Unlock()
	}
	return out
}

// len returns the number of entries, for tests.
func (l *ledger) len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// makeRoom prepares the shard for one new entry at now, unix µs. Entries
// of past windows are swept when the shard has doubled since the last
// sweep (amortised O(1) per new key), and a full shard at most once a
// second; a shard still full forgets an arbitrary entry, whose spend then
// cannot be restored after a loss: the bound on memory wins over
// exactness beyond DefaultLedgerKeys live keys.
func (s *ledgerShard) makeRoom(now int64, capacity int) {
	full := len(s.m) >= capacity && now-s.lastFullSweep >= 1_000_000
	if len(s.m) >= s.nextSweep || full {
		if full {
			s.lastFullSweep = now
		}
		for k, e := range s.m {
			if e.end <= now {
				delete(s.m, k)
			}
		}
		s.nextSweep = max(2*len(s.m), minSweep)
	}
	if len(s.m) >= capacity {
		for k := range s.m {
			delete(s.m, k)
			return
		}
	}
}
