package redis

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestLedger: spend and refunds per key, never below zero; a snapshot
// holds only live windows; past windows are swept and a full ledger stays
// within its bound.
func TestLedger(t *testing.T) {
	const now, end = 1_000, 2_000 // µs
	l := newLedger(ledgerShards)  // one key per shard
	l.add("a", 5, end, now)
	l.add("a", 3, end, now)
	l.add("b", 4, now+1, now)
	l.add("a", -2, end, now)
	l.add("c", -1, end, now) // a refund where nothing was spent
	l.add("b", -9, end, now)
	if got := l.spent("a"); got != 6 {
		t.Errorf("a: spent %d, want 6", got)
	}
	if got := l.spent("b"); got != 0 {
		t.Errorf("b: spent %d after refunding more than it spent, want 0", got)
	}
	if _, ok := l.entry("c"); ok {
		t.Error("a refund created an entry")
	}
	l.add("d", 7, now+1, now)
	if diff := cmp.Diff(map[string]ledgerEntry{"a": {end: end, spent: 6}}, l.snapshot(now+1), cmp.AllowUnexported(ledgerEntry{})); diff != "" {
		t.Errorf("snapshot (-want +got):\n%s", diff)
	}
	if !l.holds(end-1) || l.holds(end) {
		t.Errorf("holds before and at the latest end: %v, %v; want true, false", l.holds(end-1), l.holds(end))
	}
	for i := range 10 * ledgerShards {
		l.add(fmt.Sprint("k", i), 1, end, now+int64(i)*1_000_000)
	}
	if n := l.len(); n > ledgerShards {
		t.Errorf("%d entries, want at most the bound, %d", n, ledgerShards)
	}
}
