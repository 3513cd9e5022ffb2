// Package abort tells a handler whether the server running it turns a
// panic with http.ErrAbortHandler into a cut connection.
//
// A forwarder whose upstream breaks off mid-body must make the client see
// the response cut, not ended: it panics with http.ErrAbortHandler, which
// net/http and keyward's own server (internal/http1) answer by closing the
// connection without finishing the response. Under another caller (a test
// recorder, a middleware that recovers) that panic would crash or be
// misreported, so the forwarder asks first. net/http says so by putting
// its *http.Server under http.ServerContextKey; keyward's server marks its
// request contexts with this package's key instead of pretending to be
// one.
package abort

import (
	"context"
	"errors"
	"net/http"
)

// ErrShutdown is the cause of a request context a server cancelled
// because its shutdown drain ran out of time: the request is cut by a
// routine stop, not by its client (and is logged as such, not as 499).
var ErrShutdown = errors.New("server shutting down: the drain time is up")

// key is the context key of WithSupport; unexported, so only this package
// can set it.
type key struct{}

// WithSupport returns a copy of ctx that says the server running its
// requests supports aborting a response with panic(http.ErrAbortHandler).
// A server calls it once for the parent of its request contexts.
func WithSupport(ctx context.Context) context.Context {
	return context.WithValue(ctx, key{}, true)
}

// Supported reports whether a handler running under ctx may abort its
// response with panic(http.ErrAbortHandler): ctx descends from
// WithSupport, or from a net/http server's request context (which carries
// http.ServerContextKey).
func Supported(ctx context.Context) bool {
	return ctx.Value(key{}) != nil || ctx.Value(http.ServerContextKey) != nil
}
