package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// keyIn returns a key that Memory m keeps in shard i, or, with !same, one
// it keeps elsewhere.
func keyIn(t *testing.T, m *Memory, i uint8, same bool) string {
	t.Helper()
	for n := range 100_000 {
		k := fmt.Sprint("k", n)
		if (m.shardOf(k) == i) == same {
			return k
		}
	}
	t.Fatal("no key found")
	return ""
}

// TestMemoryFullChangesNothing: when a later cell of a Budget call does
// not fit, what earlier cells counted is taken back, so the call changes
// nothing, as the Store contract requires.
func TestMemoryFullChangesNothing(t *testing.T) {
	m := NewMemory(memoryShards) // one key per shard
	ctx := context.Background()
	now := time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)
	first := []BudgetCell{{Key: "x", Limit: 10, Window: Day, N: 1}}
	if ok, err := m.Budget(ctx, now, first); !ok || err != nil {
		t.Fatal(ok, err)
	}
	full := m.shardOf("x")
	cells := []BudgetCell{
		{Key: keyIn(t, m, full, false), Limit: 10, Window: Day, N: 1},
		{Key: keyIn(t, m, full, true), Limit: 10, Window: Day, N: 1},
	}
	if ok, err := m.Budget(ctx, now, cells); ok || !errors.Is(err, ErrFull) {
		t.Fatalf("Budget into a full shard = %v, %v; want ErrFull", ok, err)
	}
	if n := m.Len(); n != 1 {
		t.Errorf("store holds %d keys after a failed call, want the 1 it held before", n)
	}
}

// TestMemoryLocksInOrder: calls over the same two shards, listing them in
// opposite orders, must not deadlock.
func TestMemoryLocksInOrder(t *testing.T) {
	m := NewMemory(0)
	a := keyIn(t, m, 0, true)
	b := keyIn(t, m, 1, true)
	now := time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)
	done := make(chan struct{})
	run := func(first, second string) {
		for range 20_000 {
			cells := []RateCell{{Key: first, Emission: time.Microsecond, Limit: time.Second}, {Key: second, Emission: time.Microsecond, Limit: time.Second}}
			if _, err := m.GCRA(context.Background(), now, cells); err != nil {
				t.Error(err)
			}
		}
		done <- struct{}{}
	}
	go run(a, b)
	go run(b, a)
	for range 2 {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("GCRA calls over the same shards in opposite orders deadlocked")
		}
	}
}
