package ratelimit_test

import (
	"testing"

	"github.com/keyward/keyward/internal/ratelimit"
	"github.com/keyward/keyward/internal/ratelimit/storetest"
)

func TestMemoryStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (a, b ratelimit.Store) {
		m := ratelimit.NewMemory(0)
		return m, m
	})
}
