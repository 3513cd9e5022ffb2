package ratelimit

import (
	"context"
	"hash/maphash"
	"slices"
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
// rarely contend on a lock. A call over several keys (a client and its
// wide network, or a client budget and the route budget) holds the locks
// of all their shards at once, which is what makes it one atomic step.
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
	pauses   memoryPauses
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

// shardOf returns the index of the shard holding key.
func (m *Memory) shardOf(key string) uint8 {
	return uint8(maphash.String(m.seed, key) % memoryShards)
}

// lock locks every distinct shard among idx, in ascending order so that
// two calls over the same shards cannot deadlock. It returns the locked
// shards' indices, in buf, for unlock.
func (m *Memory) lock(idx, buf []uint8) []uint8 {
	order := append(buf[:0], idx...)
	slices.Sort(order)
	order = slices.Compact(order)
	for _, i := range order {
		m.shards[i].mu.Lock()
	}
	return order
}

func (m *Memory) unlock(order []uint8) {
	for _, i := range order {
		m.shards[i].mu.Unlock()
	}
}

// GCRA implements Store.
func (m *Memory) GCRA(_ context.Context, now time.Time, cells []RateCell) (bool, error) {
	t := now.UnixMicro()
	var idxBuf, orderBuf [4]uint8 // room for a client, its network and more
	idx := idxBuf[:0]
	for i := range cells {
		idx = append(idx, m.shardOf(cells[i].Key))
	}
	locked := m.lock(idx, orderBuf[:])
	defer m.unlock(locked)
	allowed := true
	for i := range cells {
		c := &cells[i]
		tat := max(m.shards[idx[i]].gcra[c.Key], t)
		c.Debt = time.Duration(tat-t) * time.Microsecond
		if tat+c.Emission.Microseconds()-c.Limit.Microseconds() > t {
			allowed = false
		}
	}
	if !allowed {
		return false, nil
	}
	for i := range cells {
		c := &cells[i]
		s := &m.shards[idx[i]]
		tat, ok := s.gcra[c.Key]
		if !ok {
			// May evict another key, even one this call just wrote: that
			// client merely regains its burst, as with any eviction.
			s.makeRoom(t, m.shardMax)
		}
		next := max(tat, t) + c.Emission.Microseconds()
		s.gcra[c.Key] = next
		c.Debt = time.Duration(next-t) * time.Microsecond
	}
	return true, nil
}

// Budget implements Store.
func (m *Memory) Budget(_ context.Context, now time.Time, cells []BudgetCell) (bool, error) {
	t := now.UnixMicro()
	var idxBuf, orderBuf [8]uint8 // room for every budget of a route
	idx := idxBuf[:0]
	for i := range cells {
		idx = append(idx, m.shardOf(cells[i].Key))
	}
	locked := m.lock(idx, orderBuf[:])
	defer m.unlock(locked)
	allowed := true
	for i := range cells {
		c := &cells[i]
		s := &m.shards[idx[i]]
		b, ok := s.budgets[c.Key]
		if ok && b.end <= t {
			// A past window's count equals a missing key; deleting it here
			// lets the counting loop below treat it as new.
			delete(s.budgets, c.Key)
			b = budgetCount{}
		}
		c.Used = b.count
		if b.count > c.Limit-c.N {
			allowed = false
		}
	}
	if !allowed {
		return false, nil
	}
	for i := range cells {
		c := &cells[i]
		s := &m.shards[idx[i]]
		b, ok := s.budgets[c.Key]
		if !ok {
			if !s.makeRoom(t, m.shardMax) {
				m.uncount(idx[:i], cells[:i])
				return false, ErrFull
			}
			b.end = c.Window.End(now).UnixMicro()
		}
		b.count += c.N
		s.budgets[c.Key] = b
		c.Used = b.count
	}
	return true, nil
}

// Adjust implements Store.
func (m *Memory) Adjust(_ context.Context, at, now time.Time, cells []BudgetCell) error {
	var idxBuf, orderBuf [8]uint8
	idx := idxBuf[:0]
	for i := range cells {
		idx = append(idx, m.shardOf(cells[i].Key))
	}
	locked := m.lock(idx, orderBuf[:])
	defer m.unlock(locked)
	for i := range cells {
		c := &cells[i]
		s := &m.shards[idx[i]]
		b, ok := s.budgets[c.Key]
		// The count of at's window, if the key still holds that window:
		// a key holds one window, and a later one replaces it.
		if !ok || b.end != c.Window.End(at).UnixMicro() || b.end <= now.UnixMicro() {
			continue
		}
		b.count = max(b.count+c.N, 0)
		s.budgets[c.Key] = b
	}
	return nil
}

// AdmittedOnFault implements Store. A Memory store never fails a Budget
// call it could have counted (ErrFull is its only fault), so there is
// nothing to keep.
func (m *Memory) AdmittedOnFault(time.Time, []BudgetCell) {}

// uncount takes back what Budget counted at cells before a later cell
// found the store full, so that the call changes nothing.
func (m *Memory) uncount(idx []uint8, cells []BudgetCell) {
	for i := range cells {
		s := &m.shards[idx[i]]
		b := s.budgets[cells[i].Key]
		if b.count -= cells[i].N; b.count <= 0 {
			delete(s.budgets, cells[i].Key)
		} else {
			s.budgets[cells[i].Key] = b
		}
	}
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
