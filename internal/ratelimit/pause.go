package ratelimit

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
)

// Pauses is the kill switch's state: which routes may not call their
// upstream until resumed (`keyward pause [ROUTE]`, `keyward resume
// [ROUTE]`, the admin API). It lives in the store, so that one command
// stops every instance without a reload: ratelimit/redis keeps it in
// Redis, Memory in this process.
type Pauses interface {
	// Paused reports whether route is paused, by itself or because every
	// route is. It is cheap enough to ask on every request. With an error
	// (the store cannot be read), the answer is the last state known.
	Paused(ctx context.Context, route string) (bool, error)
	// Pause pauses route, or every route for AllRoutes, or resumes it.
	// Resuming AllRoutes resumes every route, those paused one by one
	// too; resuming one route while every route is paused leaves it
	// paused.
	Pause(ctx context.Context, route string, paused bool) error
	// PausedRoutes lists the routes paused one by one, sorted, and
	// whether every route is.
	PausedRoutes(ctx context.Context) (all bool, routes []string, err error)
}

// AllRoutes is the route name Pause takes to mean every route.
const AllRoutes = ""

// PauseSet is a set of paused routes, as one Pauses snapshot holds them.
// The zero PauseSet pauses nothing. It is immutable once built.
type PauseSet struct {
	all    bool
	routes map[string]struct{}
}

// Paused reports whether route is paused in s.
func (s *PauseSet) Paused(route string) bool {
	if s == nil {
		return false
	}
	if s.all {
		return true
	}
	_, ok := s.routes[route]
	return ok
}

// With returns a copy of s with route (or AllRoutes) paused or resumed.
func (s *PauseSet) With(route string, paused bool) *PauseSet {
	out := NewPauseSet(s.All(), s.Routes())
	switch {
	case route == AllRoutes && paused:
		out.all = true
	case route == AllRoutes:
		out.all, out.routes = false, map[string]struct{}{}
	case paused:
		out.routes[route] = struct{}{}
	default:
		delete(out.routes, route)
	}
	return out
}

// NewPauseSet returns the set that pauses routes, or every route if all.
func NewPauseSet(all bool, routes []string) *PauseSet {
	s := &PauseSet{all: all, routes: make(map[string]struct{}, len(routes))}
	for _, r := range routes {
		s.routes[r] = struct{}{}
	}
	return s
}

// All reports whether every route is paused.
func (s *PauseSet) All() bool { return s != nil && s.all }

// Routes lists the routes paused one by one, sorted.
func (s *PauseSet) Routes() []string {
	if s == nil {
		return nil
	}
	out := make([]string, 0, len(s.routes))
	for r := range s.routes {
		out = append(out, r)
	}
	slices.Sort(out)
	return out
}

// memoryPauses is Memory's Pauses: a copy-on-write set, so that the check
// on every request is one atomic load and a map lookup.
type memoryPauses struct {
	mu  sync.Mutex // serialises writers
	set atomic.Pointer[PauseSet]
}

var _ Pauses = (*Memory)(nil)

// Paused implements Pauses.
func (m *Memory) Paused(_ context.Context, route string) (bool, error) {
	return m.pauses.set.Load().Paused(route), nil
}

// Pause implements Pauses. The state is this process's only: a Memory
// store serves one instance.
func (m *Memory) Pause(_ context.Context, route string, paused bool) error {
	m.pauses.mu.Lock()
	defer m.pauses.mu.Unlock()
	m.pauses.set.Store(m.pauses.set.Load().With(route, paused))
	return nil
}

// PausedRoutes implements Pauses.
func (m *Memory) PausedRoutes(context.Context) (bool, []string, error) {
	s := m.pauses.set.Load()
	return s.All(), s.Routes(), nil
}
