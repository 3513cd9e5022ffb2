package breaker

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBreaker(t *testing.T) {
	now := time.Unix(1000, 0)
	b := New(time.Second)
	down := errors.New("connection refused")
	ctx := context.Background()
	for i := range Threshold {
		if err := b.Allow(now); err != nil {
			t.Fatalf("open after %d faults: %v", i, err)
		}
		b.Done(ctx, now, down, false)
	}
	err := b.Allow(now.Add(time.Second / 2))
	if !errors.Is(err, ErrOpen) || !errors.Is(err, down) {
		t.Errorf("Allow while open = %v, want ErrOpen wrapping the last fault", err)
	}
	if err := b.Allow(now.Add(time.Second)); err != nil {
		t.Errorf("still open after the cooldown: %v", err)
	}
	// A success resets the count: two faults after it do not open.
	b.Done(ctx, now, nil, true)
	b.Done(ctx, now, down, false)
	b.Done(ctx, now, down, false)
	if err := b.Allow(now.Add(2 * time.Second)); err != nil {
		t.Errorf("opened after %d faults: %v", Threshold-1, err)
	}
	// Calls the caller cancelled are not faults.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	for range 5 {
		b.Done(cctx, now, context.Canceled, false)
	}
	if err := b.Allow(now.Add(2 * time.Second)); err != nil {
		t.Errorf("opened by cancelled calls: %v", err)
	}
	// A zero cooldown never opens.
	never := New(0)
	for range 10 {
		never.Done(ctx, now, down, false)
	}
	if err := never.Allow(now); err != nil {
		t.Errorf("zero cooldown opened: %v", err)
	}
}
