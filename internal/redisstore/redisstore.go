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
