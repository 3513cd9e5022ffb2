package redis

import (
	"errors"
	"testing"

	"github.com/keyward/keyward/internal/ratelimit"
)

// TestKeepViewOrder: a pause read that began earlier never replaces the
// view of one that began later (a slow background refresh landing after
// the read-back of a pause), and a failed read keeps the state known.
func TestKeepViewOrder(t *testing.T) {
	var s Store
	paused := &pauseView{seq: 2, set: ratelimit.NewPauseSet(false, []string{"chat"})}
	if got := s.keepView(paused); got != paused {
		t.Fatal("the first view was not kept")
	}
	older := &pauseView{seq: 1, set: ratelimit.NewPauseSet(false, nil)}
	if got := s.keepView(older); got != paused || s.pauseView.Load() != paused {
		t.Error("an older read replaced a newer view: the pause was undone")
	}
	failed := s.keepView(&pauseView{seq: 3, err: errors.New("timeout")})
	if failed.err == nil || !failed.set.Paused("chat") || s.pauseView.Load() != failed {
		t.Errorf("a failed read: err %v, chat paused %v; want the fault and the state known", failed.err, failed.set.Paused("chat"))
	}
}
