package ratelimit

import (
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// DefaultMaxKeys is the number of keys a Memory store holds when none is
// configured: about 100 MB at worst, enough for a million concurrently
// limited clients.
const DefaultMaxKeys = 1 << 20

const memoryShards = 64

// Memory is a Store inside this process, for a single gateway instance. It
// is sharded by key hash so that concurrent requests for different clients
// rarely contend on a lock.
//
// Memory stays bounded without a background goroutine: a GCRA key whose
// debt is paid is indistinguishable from a missing key, and a budget key
// whose window has passed is zero, so both are deleted by a sweep that runs
// when a shard has grown to twice its size after the previous sweep
// (amortised O(1) per new key). If a shard still holds its share of
// MaxKeys, a new GCRA key evicts an arbitrary one — that client merely
// regains its burst — while a new budget key fails with ErrFull, because
// forgetting a budget count would let more requests upstream than allowed.
type Memory struct {
	seed     maphash.Seed
	shardMax int
	shards   [memoryShards]memoryShard
}

type memoryShard struct {
	mu        sync.Mutex
	gcra      map[string]int64 // key -> theoretical arrival time, unix µs
	budgets   map[string]budgetCount
	nextSweep int
	// lastFullSweep is when a sweep last ran because the shard was full,
	// unix µs.
	lastFullSweep int64
	_             [64]byte // keep shards on separate cache lines
}

type budgetCount struct {
	end   int64 // window end, unix µs
	count int64
}

var _ Store = (*Memory)(nil)

// minSweep is the shard size below which sweeping is not worth its cost.
const minSweep = 256

// NewMemory returns an empty Memory store holding at most maxKeys keys; 0
// or less means DefaultMaxKeys.
func NewMemory(maxKeys int) *Memory {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	m := &Memory{seed: maphash.MakeSeed(), shardMax: max(1, maxKeys/memoryShards)}
	for i := range m.shards {
		m.shards[i].gcra = make(map[string]int64)
		m.shards[i].budgets = make(map[string]budgetCount)
		m.shards[i].nextSweep = minSweep
	}
	return m
}

func (m *Memory) shard(key string) *memoryShard {
	return &m.shards[maphash.String(m.seed, key)%memoryShards]
}

// Len returns the number of keys held, for tests and metrics.
func (m *Memory) Len() int {
	n := 0
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		n += len(s.gcra) + len(s.budgets)
		s.mu.Unlock()
	}
	return n
}

// GCRA implements Store.
func (m *Memory) GCRA(_ context.Context, key string, now time.Time, emission, limit time.Duration) (bool, time.Duration, error) {
	t, e, l := now.UnixMicro(), emission.Microseconds(), limit.Microseconds()
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	tat, ok := s.gcra[key]
	if tat < t {
		tat = t
	}
	next := tat + e
	if next-l > t {
		return false, time.Duration(tat-t) * time.Microsecond, nil
	}
	if !ok {
		s.makeRoom(t, m.shardMax)
	}
	s.gcra[key] = next
	return true, time.Duration(next-t) * time.Microsecond, nil
}

// UndoGCRA implements Store.
func (m *Memory) UndoGCRA(_ context.Context, key string, now time.Time, emission time.Duration) error {
	t := now.UnixMicro()
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	tat, ok := s.gcra[key]
	if !ok {
		return nil
	}
	if tat -= emission.Microseconds(); tat <= t {
		delete(s.gcra, key)
	} else {
		s.gcra[key] = tat
	}
	return nil
}

// Budget implements Store.
func (m *Memory) Budget(_ context.Context, key string, now time.Time, limit int64, window Window) (bool, int64, error) {
	t := now.UnixMicro()
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.budgets[key]
	if !ok || b.end <= t {
		b = budgetCount{end: window.End(now).UnixMicro()}
	}
	if b.count >= limit {
		return false, b.count, nil
	}
	if !ok && !s.makeRoom(t, m.shardMax) {
		return false, 0, ErrFull
	}
	b.count++
	s.budgets[key] = b
	return true, b.count, nil
}

// UndoBudget implements Store.
func (m *Memory) UndoBudget(_ context.Context, key string, now time.Time, _ Window) error {
	t := now.UnixMicro()
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.budgets[key]; ok && b.end > t && b.count > 0 {
		b.count--
		s.budgets[key] = b
	}
	return nil
}

// makeRoom prepares the shard for one new key at time t (unix µs), holding
// at most capacity keys. It reports whether the new key fits.
//
// A full shard is swept at most once per second of store time, so a flood
// of new keys costs an eviction each, not a scan each.
func (s *memoryShard) makeRoom(t int64, capacity int) bool {
	n := len(s.gcra) + len(s.budgets)
	if n >= s.nextSweep || (n >= capacity && t-s.lastFullSweep >= int64(time.Second/time.Microsecond)) {
		if n >= capacity {
			s.lastFullSweep = t
		}
		s.sweep(t)
		n = len(s.gcra) + len(s.budgets)
		s.nextSweep = max(2*n, minSweep)
	}
	return n < capacity || s.evictGCRA()
}

// sweep deletes every key whose state equals that of a missing key.
func (s *memoryShard) sweep(t int64) {
	for k, tat := range s.gcra {
		if tat <= t {
			delete(s.gcra, k)
		}
	}
	for k, b := range s.budgets {
		if b.end <= t {
			delete(s.budgets, k)
		}
	}
}

// evictGCRA forgets one GCRA key so a new key fits; budget keys are never
// evicted. It reports whether room was made.
func (s *memoryShard) evictGCRA() bool {
	for k := range s.gcra {
		// Map iteration order is randomised, so under a flood of new keys
		// the victims are mostly the flood's own keys.
		delete(s.gcra, k)
		return true
	}
	return false
}
