// Package redisstore opens the Redis connection named by the `store:`
// setting: one server, a master found through Sentinel, or a Redis
// Cluster, each plain or over TLS (see Open). The rate limiter's, the
// response cache's and the API keys' Redis backends (ratelimit/redis,
// cache/redis, caller/apikey/redis) share one client, and classify its
// errors the same way, so the client and the classification live here,
// below them, and no backend imports another.
//
// On a Redis Cluster a script, or any command on several keys, may only
// touch keys of one hash slot. Each backend names the keys one operation
// touches with one hash tag (see HashTag), and says in its package doc
// which keys share a slot, and so what a cluster spreads.
package redisstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Open opens a client for the store URL (the `store:` configuration
// value), one of
//
//	redis://[[USER]:PASSWORD@]HOST[:6379][/DB][?OPTIONS]
//	redis-sentinel://[[USER]:PASSWORD@]HOST[:26379][,HOST[:26379]...]/MASTER[/DB][?OPTIONS]
//	redis-cluster://[[USER]:PASSWORD@]HOST[:6379][,HOST[:6379]...][?OPTIONS]
//
// or the same over TLS, with the scheme rediss, rediss-sentinel or
// rediss-cluster. The user info is the Redis servers' credentials; a
// Sentinel that has its own takes them from the options
// sentinel_username and sentinel_password. TLS takes the options ca (a
// PEM file of the CAs to trust instead of the system's), server_name
// (the name the servers' certificates must carry, by default the host
// each connection dials) and cert and key (PEM files of a client
// certificate); a relative path is taken from dir, the config file's
// directory. The other options are go-redis's (dial_timeout,
// read_timeout, pool_size, ...).
//
// Every client gets settings that keep a Redis outage from stalling
// requests: context deadlines are honoured (the limiter and the cache
// bound every call with one), nothing is sent twice (no retries, unless
// the URL sets max_retries; a Cluster client follows MOVED and ASK
// redirects, and tries another node after a refused dial, but never
// sends again a command that may have run: see sentOnce), and dialling
// and waiting for a pooled connection give up after a second even
// without a deadline. Options given in the URL win over these defaults.
// The caller closes the client.
func Open(rawURL, dir string) (goredis.UniversalClient, error) {
	quietOnce.Do(func() { goredis.SetLogger(quiet{}) })
	u, err := parseURL(rawURL, dir)
	if err != nil {
		return nil, fmt.Errorf("parsing redis URL: %w", err)
	}
	switch u.topology {
	case sentinel:
		o, err := u.failoverOptions()
		if err != nil {
			return nil, fmt.Errorf("parsing redis URL: %w", err)
		}
		return goredis.NewFailoverClient(o), nil
	case cluster:
		o, err := u.clusterOptions()
		if err != nil {
			return nil, fmt.Errorf("parsing redis URL: %w", err)
		}
		// Through NewClient, so that no node client, not even the first
		// one made, runs without the hook.
		var cc atomic.Pointer[goredis.ClusterClient]
		hook := sentOnce{reload: func() {
			if c := cc.Load(); c != nil {
				c.ReloadState(context.Background())
			}
		}}
		o.NewClient = func(opt *goredis.Options) *goredis.Client {
			node := goredis.NewClient(opt)
			node.AddHook(hook)
			return node
		}
		c := goredis.NewClusterClient(o)
		cc.Store(c)
		return c, nil
	}
	o, err := u.singleOptions()
	if err != nil {
		return nil, fmt.Errorf("parsing redis URL: %w", err)
	}
	return goredis.NewClient(o), nil
}

// Check reports what Open would refuse in rawURL, reading the TLS files
// it names (relative to dir), without connecting to anything: `keyward
// check` runs it. Its error never quotes the URL's password.
func Check(rawURL, dir string) error {
	u, err := parseURL(rawURL, dir)
	if err == nil {
		switch u.topology {
		case single:
			_, err = u.singleOptions()
		case sentinel:
			_, err = u.failoverOptions()
		case cluster:
			_, err = u.clusterOptions()
		}
	}
	if err != nil {
		return fmt.Errorf("parsing redis URL: %w", err)
	}
	return nil
}

// NewClient is Open for the one-server forms, redis:// and rediss://,
// returning the concrete client; relative TLS file paths are taken from
// the working directory.
func NewClient(rawURL string) (*goredis.Client, error) {
	quietOnce.Do(func() { goredis.SetLogger(quiet{}) })
	u, err := parseURL(rawURL, "")
	if err == nil && u.topology != single {
		err = errors.New("NewClient opens one server; Open opens Sentinel and Cluster URLs")
	}
	if err != nil {
		return nil, fmt.Errorf("parsing redis URL: %w", err)
	}
	o, err := u.singleOptions()
	if err != nil {
		return nil, fmt.Errorf("parsing redis URL: %w", err)
	}
	return goredis.NewClient(o), nil
}

// Describe names the servers of a store URL for messages: "Redis at
// HOST:PORT/DB", "Redis master MASTER (database DB) through the Sentinels
// at HOSTS" or "Redis Cluster at HOSTS", with "over TLS" when it is so;
// never its credentials. A URL Open would refuse is just "Redis".
func Describe(rawURL string) string {
	u, _ := parseURL(rawURL, "") // a TLS file's fault leaves the rest known
	if u == nil {
		return "Redis"
	}
	var s string
	switch u.topology {
	case sentinel:
		s = "Redis master " + u.master + " (database " + strconv.Itoa(u.db) + ") through the Sentinels at " + strings.Join(u.hosts, ",")
	case cluster:
		s = "Redis Cluster at " + strings.Join(u.hosts, ",")
	default:
		s = "Redis at " + u.hosts[0] + "/" + strconv.Itoa(u.db)
	}
	if u.tls {
		s += " over TLS"
	}
	return s
}

// Cluster reports whether c is a Redis Cluster client, on which a
// script or a command on several keys may only touch keys of one hash
// slot: the backends then name such keys with one hash tag (HashTag).
func Cluster(c any) bool {
	_, ok := c.(*goredis.ClusterClient)
	return ok
}

// HashTag returns prefix made the hash tag of every key that begins with
// it: "{PREFIX}", or prefix itself if it already holds a tag. Redis
// Cluster hashes only a key's tag, the text between its first '{' and
// the first '}' after it, so all those keys share one slot. The stores
// default their prefixes, which are never empty.
func HashTag(prefix string) string {
	if i := strings.IndexByte(prefix, '{'); i >= 0 {
		if j := strings.IndexByte(prefix[i+1:], '}'); j > 0 {
			return prefix
		}
	}
	return "{" + prefix + "}"
}

// sentOnce wraps the client of every node of a cluster. It keeps
// go-redis's Cluster client from sending a command again after a failure
// that came once the command was sent (a reset, an EOF, a read timeout):
// the command may have run, and a budget script run twice counts twice.
// The Cluster client's redirect loop resends on those whatever MaxRetries
// says (it retries the node, then another). sentOnce hides the cause
// from that loop by returning it as a sentError; a refused dial, a pool
// timeout, a context's end and Redis's error replies (MOVED, ASK,
// TRYAGAIN, ...: nothing ran) pass through, and are retried or followed
// as go-redis does. Pipelines pass through too: the backends pipeline
// only reads.
//
// A node that did not answer may have died and had its slots taken over
// by a replica: sentOnce then asks for the cluster's map of slots again
// (reload; go-redis runs one reload at a time, at most one per 200 ms).
// go-redis would otherwise learn of the failover only from a MOVED reply,
// which a dead node never sends, or after a minute.
type sentOnce struct{ reload func() }

func (sentOnce) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (sentOnce) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}

func (h sentOnce) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		err := next(ctx, cmd)
		if err == nil || Answered(err) || errors.Is(err, context.Canceled) {
			return err
		}
		h.reload()
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, goredis.ErrPoolTimeout) {
			return err
		}
		if op := (*net.OpError)(nil); errors.As(err, &op) && op.Op == "dial" {
			return err
		}
		err = sentError{err.Error()}
		cmd.SetErr(err)
		return err
	}
}

// sentError is a failure after a command was sent (see sentOnce). It
// keeps the message but not the cause, on purpose: go-redis decides to
// resend by the cause's type.
type sentError struct{ msg string }

func (e sentError) Error() string { return e.msg }

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
// says why ctx ended, if it did: without retries (see Open), a call
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
// says so when it cannot tell. On a Redis Cluster it checks every master
// and names the nodes each warning is about.
func Persistence(ctx context.Context, c goredis.Cmdable) string {
	cc, ok := c.(*goredis.ClusterClient)
	if !ok {
		return persistence(ctx, c)
	}
	var mu sync.Mutex
	nodes := map[string][]string{} // warning -> the masters it is about
	err := cc.ForEachMaster(ctx, func(ctx context.Context, node *goredis.Client) error {
		if w := persistence(ctx, node); w != "" {
			mu.Lock()
			nodes[w] = append(nodes[w], node.Options().Addr)
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return fmt.Sprintf("could not check whether redis keeps budget counts across a restart: %v", err)
	}
	var warns []string
	for w, addrs := range nodes {
		slices.Sort(addrs)
		warns = append(warns, fmt.Sprintf("%s (cluster nodes %s)", w, strings.Join(addrs, ", ")))
	}
	slices.Sort(warns)
	return strings.Join(warns, "; ")
}

// persistence is Persistence on one server.
func persistence(ctx context.Context, c goredis.Cmdable) string {
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
