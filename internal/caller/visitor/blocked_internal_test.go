package visitor

import (
	"strconv"
	"testing"
	"time"
)

// TestBlockedSetFull: a full set of blocked addresses still takes a new
// one: it forgets those whose time has passed, else the one that ends
// soonest; the new address is refused until its time.
func TestBlockedSetFull(t *testing.T) {
	var b blockedSet
	now := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	for i := range maxBlocked {
		b.add("old-"+strconv.Itoa(i), now, now.Add(time.Minute))
	}
	later := now.Add(time.Hour) // every one of them has passed
	b.add("new", later, later.Add(time.Minute))
	if got := b.left("new", later); got != time.Minute {
		t.Errorf("a new address on a set full of expired ones: refused for %v, want 1m", got)
	}
	if len(b.m) != 1 {
		t.Errorf("%d addresses kept, want 1: the expired ones are forgotten", len(b.m))
	}
	for i := range maxBlocked - 1 {
		b.add("live-"+strconv.Itoa(i), later, later.Add(time.Duration(i+2)*time.Minute))
	}
	b.add("newest", later, later.Add(time.Hour))
	if b.left("newest", later) != time.Hour || b.left("new", later) != 0 || len(b.m) != maxBlocked {
		t.Errorf("full of live addresses: the one ending soonest (new) should make room for newest; kept %d", len(b.m))
	}
}
