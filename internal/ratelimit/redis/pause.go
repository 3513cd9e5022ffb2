package redis

import (
	"context"
	"fmt"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/keyward/keyward/internal/ratelimit"
)

// DefaultPauseRefresh is how old an instance's view of the paused routes
// may grow before a request refreshes it, when Options does not say: a
// pause reaches every instance within it and a round trip, well inside
// the second the kill switch promises, for one Redis read per instance
// per interval instead of one per request.
const DefaultPauseRefresh = 500 * time.Millisecond

// pauseTimeout bounds the refresh a request makes (Paused).
const pauseTimeout = 100 * time.Millisecond

// pauseWriteBack is how recent a view must be for an instance to write
// it back after Redis lost the pauses: recent enough that it was the
// state at the loss (Run refreshes every instance's view each probe
// interval), not a pause long since lifted.
const pauseWriteBack = 4 * DefaultPauseRefresh

// pauseView is what an instance knows of the pauses, and when it learned
// it.
type pauseView struct {
	set *ratelimit.PauseSet
	at  time.Time
	err error  // the last refresh's fault, if it failed
	seq uint64 // when its read began, in the order of reads (pauseSeq)
}

var _ ratelimit.Pauses = (*Store)(nil)

// The pause hash has a field per paused route ("r:NAME"), "all" when
// every route is paused, and "m", a marker that is always there once a
// pause was ever written: a missing hash then means Redis lost it.

// pauseReadScript reads the paused routes. A Redis that lost its data
// lost the pauses too, and an emergency stop must not lift itself: an
// instance whose view is recent writes it back when it finds the hash
// missing. KEYS: the pause hash. ARGV: the fields of the instance's
// view, when it is recent. The reply is the hash's fields.
var pauseReadScript = goredis.NewScript(`
if #ARGV > 0 and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'm', '1')
  for i = 1, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], '1') end
end
return redis.call('HKEYS', KEYS[1])
`)

// pauseWriteScript pauses (ARGV[2] "1") or resumes the field ARGV[1];
// resuming "all" resumes every route. KEYS: the pause hash.
var pauseWriteScript = goredis.NewScript(`
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], '1')
elseif ARGV[1] == 'all' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('HSET', KEYS[1], 'm', '1')
return 1
`)

// pauseField is the hash field of route.
func pauseField(route string) string {
	if route == ratelimit.AllRoutes {
		return "all"
	}
	return "r:" + route
}

// Paused implements ratelimit.Pauses from this instance's view, which is
// refreshed in the background when it is older than the pause refresh
// interval (Run refreshes it too): one refresh at a time, and no request
// waits for it, so that a frozen Redis costs a route without limits
// nothing. When a refresh fails, the view keeps the last state read, with
// the fault. Only before the first read does a request wait for one
// (bounded by pauseTimeout); an instance that could not read the pauses
// then answers not paused.
func (s *Store) Paused(ctx context.Context, route string) (bool, error) {
	now := s.now()
	v := s.pauseView.Load()
	switch {
	case v != nil && now.Sub(v.at) < s.pauseRefresh && !now.Before(v.at):
	case v == nil:
		v = s.refreshPauses(ctx, now) // nothing known yet: every request asks
	case s.pauseRefreshing.CompareAndSwap(false, true):
		s.pauseRefreshes.Add(1)
		go func() {
			defer s.pauseRefreshes.Done()
			s.refreshPauses(context.Background(), now) // outlives the request
			s.pauseRefreshing.Store(false)
		}()
	}
	return v.set.Paused(route), v.err
}

// refreshPauses is readPauses bounded for the request path.
func (s *Store) refreshPauses(ctx context.Context, now time.Time) *pauseView {
	ctx, cancel := context.WithTimeout(ctx, pauseTimeout)
	defer cancel()
	return s.readPauses(ctx, now)
}

// readPauses reads the pauses from Redis and makes what it read this
// instance's view. On a fault the view keeps the last set, with the fault
// and the time of the attempt, so that an outage costs one round trip per
// interval, not one per request.
func (s *Store) readPauses(ctx context.Context, now time.Time) *pauseView {
	seq := s.pauseSeq.Add(1)
	last := s.pauseView.Load()
	var args []any
	if last != nil && last.err == nil && now.Sub(last.at) <= pauseWriteBack {
		if last.set.All() {
			args = append(args, pauseField(ratelimit.AllRoutes))
		}
		for _, r := range last.set.Routes() {
			args = append(args, pauseField(r))
		}
	}
	fields, err := s.exec(ctx, now, pauseReadScript, []string{s.pauseKey}, args, noKnown, false).StringSlice()
	if err != nil {
		// The set is the view's when it is kept: the last state known.
		return s.keepView(&pauseView{at: now, err: fmt.Errorf("reading paused routes from redis: %w", err), seq: seq})
	}
	all, routes := false, make([]string, 0, len(fields))
	for _, f := range fields {
		if f == "all" {
			all = true
		} else if r, ok := strings.CutPrefix(f, "r:"); ok {
			routes = append(routes, r)
		}
	}
	return s.keepView(&pauseView{set: ratelimit.NewPauseSet(all, routes), at: now, seq: seq})
}

// keepView makes v this instance's view unless a read that began later
// has already landed: a background refresh that was slow must not undo
// the read-back of a pause made meanwhile. It returns the view kept.
func (s *Store) keepView(v *pauseView) *pauseView {
	for {
		cur := s.pauseView.Load()
		if cur != nil && cur.seq > v.seq {
			return cur
		}
		next := v
		if v.err != nil && cur != nil {
			// A failed read keeps the state known.
			failed := *v
			failed.set = cur.set
			next = &failed
		}
		if s.pauseView.CompareAndSwap(cur, next) {
			return next
		}
	}
}

// Pause implements ratelimit.Pauses. Every instance obeys within the
// pause refresh interval; this one at once.
func (s *Store) Pause(ctx context.Context, route string, paused bool) error {
	flag := "0"
	if paused {
		flag = "1"
	}
	now := s.now()
	if err := s.run(ctx, now, pauseWriteScript, []string{s.pauseKey}, []any{pauseField(route), flag}, noKnown).Err(); err != nil {
		return fmt.Errorf("writing the pause of route %q to redis: %w", route, err)
	}
	// Read back, so that this instance obeys at once and its view (which
	// a loss would restore) holds the change.
	return s.readPauses(ctx, now).err
}

// PausedRoutes implements ratelimit.Pauses with a fresh read.
func (s *Store) PausedRoutes(ctx context.Context) (bool, []string, error) {
	v := s.readPauses(ctx, s.now())
	if v.err != nil {
		return false, nil, v.err
	}
	return v.set.All(), v.set.Routes(), nil
}
