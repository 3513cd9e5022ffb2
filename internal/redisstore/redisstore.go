// Package redisstore opens the Redis connection named by the `store:`
// setting. The rate limiter's and the response cache's Redis backends
// (ratelimit/redis and cache/redis) share one client, and both classify its
// errors the same way, so the client and the classification live here,
// below both, and neither backend imports the other.
package redisstore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// NewClient opens a client for a redis:// or rediss:// URL (the `store:`
// configuration value) with settings that keep a Redis outage from
// stalling requests: context deadlines are honoured (the limiter and the
// cache bound every call with one), a refused dial is not retried (those
// deadlines are shorter than go-redis's dial backoff anyway), and dialling
// and waiting for a pooled connection give up after a second even without
// a deadline. Settings given in the URL's query win over these defaults.
// The caller closes the client.
func NewClient(rawURL string) (*goredis.Client, error) {
	quietOnce.Do(func() { goredis.SetLogger(quiet{}) })
	opts, err := goredis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parsing redis URL: %w", redact(err))
	}
	opts.ContextTimeoutEnabled = true
	if opts.DialTimeout == 0 {
		opts.DialTimeout = time.Second
	}
	if opts.PoolTimeout == 0 {
		opts.PoolTimeout = time.Second
	}
	if opts.DialerRetries == 0 {
		opts.DialerRetries = 1
	}
	if !strings.Contains(rawURL, "max_retries=") {
		// No retries: a command that failed on the network may still have
		// run, and a budget script run twice counts twice; and a refused
		// connection fails at once instead of after three tries, so a dead
		// Redis costs a request well under its store_timeout.
		opts.MaxRetries = -1
	}
	return goredis.NewClient(opts), nil
}

// redact drops the parts of a URL parsing error that can quote the URL's
// password: net/url's errors repeat the whole URL ("parse
// \"redis://:PASSWORD@host:x\": invalid port"), and a bad percent-escape
// is quoted from wherever it is, the password included.
func redact(err error) error {
	var uerr *url.Error
	if !errors.As(err, &uerr) {
		return err // go-redis's own errors name the database or an option, never the password
	}
	var esc url.EscapeError
	if errors.As(uerr.Err, &esc) {
		return errors.New("invalid percent-encoding")
	}
	return uerr.Err
}

// WithContext returns err, from a call made with ctx, so that it also
// says why ctx ended, if it did: without retries (see NewClient), a call
// whose deadline passed fails with the connection's "i/o timeout", not
// context.DeadlineExceeded, and callers tell a timeout or a caller's
// cancellation by errors.Is on the context's errors.
func WithContext(ctx context.Context, err error) error {
	if err == nil {
		return err
	}
	why := ctx.Err()
	if deadline, ok := ctx.Deadline(); ok && why == nil && !time.Now().Before(deadline) {
		// The socket's deadline is the context's, and fires before the
		// context's own timer has marked it done.
		why = context.DeadlineExceeded
	}
	if why == nil || errors.Is(err, why) {
		return err
	}
	return fmt.Errorf("%w: %w", err, why)
}

// Answered reports whether err means Redis answered: no error, or an
// error reply from a live server. A store's circuit breaker counts only
// the other errors (refused, reset, timed out) as an outage.
func Answered(err error) bool {
	var reply goredis.Error
	return err == nil || errors.As(err, &reply)
}

// quiet discards go-redis's own log lines (one per failed dial, printed
// to stderr): the gateway counts store faults in a metric and logs them
// once per interval itself. go-redis only has a process-wide logger.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

var quietOnce sync.Once

// Persistence returns a warning, for the startup log, when the Redis
// server behind c could lose keyward's budget counts: it keeps no data
// across a restart (no AOF, no RDB snapshots), or it may evict keys
// (every key keyward writes has a TTL, so volatile-* policies evict them
// as readily as allkeys-*). It returns "" when neither applies.
//
// Budgets survive a loss anyway (ratelimit/redis restores them from what
// each instance spent), but only from instances that are running, and
// with a moment during which budgets refuse or admit by the routes'
// on_store_error policy; a Redis that keeps its data avoids all of that.
// Managed servers often disable CONFIG: Persistence then reads INFO, and
// says so when it cannot tell.
func Persistence(ctx context.Context, c goredis.Cmdable) string {
	settings, cfgErr := configGet(ctx, c, "appendonly", "save", "maxmemory", "maxmemory-policy")
	if cfgErr != nil {
		// INFO reports AOF and the eviction policy, but not whether
		// snapshots are configured.
		var err error
		if settings, err = infoGet(ctx, c, "aof_enabled", "maxmemory", "maxmemory_policy"); err != nil {
			return fmt.Sprintf("could not check whether redis keeps budget counts across a restart: %v", err)
		}
		settings["appendonly"] = map[string]string{"1": "yes", "0": "no"}[settings["aof_enabled"]]
		settings["save"] = "?"
		settings["maxmemory-policy"] = settings["maxmemory_policy"]
	}
	var warns []string
	switch {
	case settings["appendonly"] == "yes":
	case settings["save"] == "?":
		warns = append(warns, fmt.Sprintf("redis has appendonly no, and whether it saves snapshots is unknown (CONFIG GET refused: %v): without either, a restart loses budget counts; set appendonly yes", cfgErr))
	case strings.TrimSpace(settings["save"]) == "":
		warns = append(warns, `redis does not persist its data (save "", appendonly no): a restart loses budget counts, which keyward then restores only from the instances still running; set appendonly yes`)
	}
	if settings["maxmemory"] != "0" && settings["maxmemory-policy"] != "noeviction" && settings["maxmemory-policy"] != "" {
		warns = append(warns, fmt.Sprintf("redis may evict keys (maxmemory %s, maxmemory-policy %s): an evicted budget count is restored only from the instances that use it again; set maxmemory-policy noeviction, or give the cache its own redis", settings["maxmemory"], settings["maxmemory-policy"]))
	}
	return strings.Join(warns, "; ")
}

// configGet reads settings with one CONFIG GET each, which servers older
// than Redis 7 require.
func configGet(ctx context.Context, c goredis.Cmdable, names ...string) (map[string]string, error) {
	out := make(map[string]string, len(names))
	for _, n := range names {
		m, err := c.ConfigGet(ctx, n).Result()
		if err != nil {
			return nil, fmt.Errorf("reading redis setting %s: %w", n, err)
		}
		v, ok := m[n]
		if !ok {
			return nil, fmt.Errorf("reading redis setting %s: not reported", n)
		}
		out[n] = v
	}
	return out, nil
}

// infoGet reads fields of INFO.
func infoGet(ctx context.Context, c goredis.Cmdable, names ...string) (map[string]string, error) {
	info, err := c.Info(ctx, "persistence", "memory").Result()
	if err != nil {
		return nil, fmt.Errorf("reading redis INFO: %w", err)
	}
	out := make(map[string]string, len(names))
	for line := range strings.Lines(info) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && slices.Contains(names, k) {
			out[k] = v
		}
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("reading redis INFO: no %s", n)
		}
	}
	return out, nil
}
