package cache

import (
	"context"
	"sync"
	"time"
)

// Store keeps entries where every gateway instance that should share them
// can reach them. A Store is a plain map with expiry: freshness, staleness
// and coalescing are the Cache's, so that every Store behaves the same.
type Store interface {
	// Get returns the entry stored under key, or nil and no error if there
	// is none or it expired. The entry may be shared with other callers
	// and must not be modified.
	Get(ctx context.Context, key Key) (*Entry, error)
	// Set stores e under key for ttl, replacing any entry there. e must not
	// be modified afterwards. A store may decline to keep an entry (too
	// large for it, evicted at once) without an error: a cache may always
	// forget.
	Set(ctx context.Context, key Key, e *Entry, ttl time.Duration) error
}

// Locker is an optional capability of a Store shared by several gateway
// instances: a short lock per key, so that the instances missing a key
// make one upstream call between them instead of one each. The Cache
// uses it when its Store has it; see the package doc for the protocol.
//
// The lock's value is opaque to the store: the Cache writes into it
// either the holder's token or a note for the instances waiting (the
// call failed, or its response is not storable). Operations on one key
// touch only that key's entry and lock, so a store can keep the two
// together (one Redis hash slot).
type Locker interface {
	// Claim returns the entry stored under key if it is still fresh, that
	// is if more than stale of its time in the store is left; or else
	// sets key's lock to token for ttl if nobody holds it; or else
	// reports the lock's value and remaining time. It does all of that
	// in one step, so that an entry stored and its lock released just
	// before are never missed.
	Claim(ctx context.Context, key Key, token string, ttl, stale time.Duration) (Claim, error)
	// SetUnlock stores e under key for ttl, as Set does, and then, in the
	// same step, deletes key's lock if its value is still token.
	SetUnlock(ctx context.Context, key Key, e *Entry, ttl time.Duration, token string) error
	// Unlock, if key's lock's value is still token, deletes the lock when
	// note is empty, or replaces its value with note for ttl otherwise.
	Unlock(ctx context.Context, key Key, token string, note []byte, ttl time.Duration) error
}

// Claim is what Locker.Claim found.
type Claim struct {
	// Entry is the fresh entry stored under the key; nothing was locked.
	Entry *Entry
	// Won reports that the lock was free and now holds the caller's token.
	Won bool
	// Held is, when Entry is nil and Won false, the lock's value: another
	// instance's token or note.
	Held []byte
	// TTL is the time Held has left.
	TTL time.Duration
}

// DefaultMemorySize is the bound of a Memory store when none is given.
const DefaultMemorySize = 64 << 20

// Memory is a Store inside this process, for one gateway instance,
// bounded in bytes: when a new entry would exceed the bound, the least
// recently used entries are evicted, expired or not. Expired entries are
// dropped when they are next looked up or evicted; no background goroutine
// sweeps, so an idle store costs nothing.
//
// One mutex guards the store: a hit holds it for a map lookup and two
// pointer swaps, far below the cost of writing the response.
type Memory struct {
	now func() time.Time
	max int64

	mu    sync.Mutex
	size  int64
	items map[Key]*item
	lru   item // sentinel: lru.next is the most recently used
}

type item struct {
	key        Key
	e          *Entry
	size       int64
	deadline   int64 // unix ns
	prev, next *item
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty Memory store holding at most maxBytes (0 or
// less means DefaultMemorySize). now is its clock for expiry; nil means
// time.Now. Tests pass a fake clock so they never sleep.
func NewMemory(maxBytes int64, now func() time.Time) *Memory {
	if maxBytes <= 0 {
		maxBytes = DefaultMemorySize
	}
	if now == nil {
		now = time.Now
	}
	m := &Memory{now: now, max: maxBytes, items: make(map[Key]*item)}
	m.lru.next, m.lru.prev = &m.lru, &m.lru
	return m
}

// Get implements Store.
func (m *Memory) Get(_ context.Context, key Key) (*Entry, error) {
	now := m.now().UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	it := m.items[key]
	if it == nil {
		return nil, nil
	}
	if now >= it.deadline {
		m.remove(it)
		return nil, nil
	}
	m.unlink(it)
	m.pushFront(it)
	return it.e, nil
}

// Set implements Store. An entry larger than the whole store is not kept,
// and any older entry under its key is dropped, since it is outdated.
func (m *Memory) Set(_ context.Context, key Key, e *Entry, ttl time.Duration) error {
	size := e.size()
	deadline := m.now().Add(ttl).UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	if old := m.items[key]; old != nil {
		m.remove(old)
	}
	if size > m.max || ttl <= 0 {
		return nil
	}
	for m.size+size > m.max {
		m.remove(m.lru.prev)
	}
	it := &item{key: key, e: e, size: size, deadline: deadline}
	m.items[key] = it
	m.size += size
	m.pushFront(it)
	return nil
}

// Len returns the number of entries held, expired ones included until
// they are looked up or evicted; for tests and metrics.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.items)
}

// Size returns the bytes accounted to the entries held; it never exceeds
// the bound given to NewMemory.
func (m *Memory) Size() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.size
}

func (m *Memory) remove(it *item) {
	m.unlink(it)
	delete(m.items, it.key)
	m.size -= it.size
}

func (m *Memory) unlink(it *item) {
	it.prev.next, it.next.prev = it.next, it.prev
}

func (m *Memory) pushFront(it *item) {
	it.prev, it.next = &m.lru, m.lru.next
	m.lru.next.prev = it
	m.lru.next = it
}
