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
//
// Each entry holds two gross amounts that only grow, what this instance
// counted and what it gave back, each recorded once Redis has applied it
// (or, for AdmittedOnFault, once it was spent). Redis keeps the same two
// per instance. A reading of the ledger can be stale, but only low, and
// restoring a low reading changes nothing: a net amount read while
// refunds are in flight could instead be low by one refund and high by
// another, and put back a refund Redis has already applied.
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
	end      int64 // window end plus the key's grace, unix µs
	counted  int64 // gross: every amount counted
	refunded int64 // gross: every amount given back
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

// get returns key's entry.
func (l *ledger) get(key string) ledgerEntry {
	s := l.shard(key)
	s.mu.Lock()
	e := s.m[key]
	s.mu.Unlock()
	return e
}

// count records n (positive) more counted at key, whose window (plus
// grace) ends at end, unix µs. now, unix µs, drives the sweep of past
// windows.
func (l *ledger) count(key string, n, end, now int64) { l.add(key, n, 0, end, now) }

// refund records n (positive) more given back at key.
func (l *ledger) refund(key string, n, end, now int64) { l.add(key, 0, n, end, now) }

func (l *ledger) add(key string, counted, refunded, end, now int64) {
	if counted <= 0 && refunded <= 0 {
		return
	}
	s := l.shard(key)
	s.mu.Lock()
	e, ok := s.m[key]
	if !ok {
		s.makeRoom(now, l.shardMax)
		e.end = end
	}
	e.counted += max(counted, 0)
	e.refunded += max(refunded, 0)
	s.m[key] = e
	s.mu.Unlock()
	for {
		live := l.live.Load()
		if end <= live || l.live.CompareAndSwap(live, end) {
			return
		}
	}
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
			if e.end > now && e.counted > 0 {
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
