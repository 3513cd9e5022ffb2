package redis

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestLedger: gross amounts counted and given back per key; a snapshot
// holds only live windows with spend; past windows are swept and a full
// ledger stays within its bound.
func TestLedger(t *testing.T) {
	const now, end = 1_000, 2_000 // µs
	l := newLedger(ledgerShards)  // one key per shard
	l.count("a", 5, end, now)
	l.count("a", 3, end, now)
	l.refund("a", 2, end, now)
	l.count("b", 4, now+1, now)
	l.count("c", 0, end, now) // nothing: no entry
	if diff := cmp.Diff(ledgerEntry{end: end, counted: 8, refunded: 2}, l.get("a"), cmp.AllowUnexported(ledgerEntry{})); diff != "" {
		t.Errorf("a (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]ledgerEntry{"a": {end: end, counted: 8, refunded: 2}}, l.snapshot(now+1), cmp.AllowUnexported(ledgerEntry{})); diff != "" {
		t.Errorf("snapshot (-want +got):\n%s", diff)
	}
	if !l.holds(end-1) || l.holds(end) {
		t.Errorf("holds before and at the latest end: %v, %v; want true, false", l.holds(end-1), l.holds(end))
	}
	for i := range 10 * ledgerShards {
		l.count(fmt.Sprint("k", i), 1, end, now+int64(i)*1_000_000)
	}
	if n := l.len(); n > ledgerShards {
		t.Errorf("%d entries, want at most the bound, %d", n, ledgerShards)
	}
}
