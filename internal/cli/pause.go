package cli

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/ratelimit"
	rlredis "github.com/keyward/keyward/internal/ratelimit/redis"
	"github.com/keyward/keyward/internal/redisstore"
)

// pause runs `keyward pause [ROUTE]` and `keyward resume [ROUTE]`: the
// kill switch. The state lives in the store (Redis), so every instance
// stops (or resumes) calling the upstream within a second, without a
// reload. Without ROUTE, every route.
func pause(ctx context.Context, verb string, args []string, stdout, stderr io.Writer) error {
	fs, path := newFlags(verb, stderr)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageError{fmt.Errorf("want at most one route, got %d arguments", len(pos))}
	}
	route := ratelimit.AllRoutes
	if len(pos) == 1 {
		route = pos[0]
	}
	f, err := config.Load(*path)
	if err != nil {
		return err
	}
	if route != ratelimit.AllRoutes && !hasRoute(&f.Config, route) {
		return fmt.Errorf("%s: no route named %q (routes: %s)", *path, route, strings.Join(routeNames(&f.Config), ", "))
	}
	if !redisStore(f.Config.Store) {
		// The memory store lives inside the serving process.
		return fmt.Errorf("%s: the store is in the serving process's memory: use its admin API on the host (curl -X POST localhost:9090/admin/%s, with admin.listen set) or a Redis store", *path, verb)
	}
	url, err := gateway.StoreURL(f, nil) // {secret.NAME} filled in
	if err != nil {
		return fmt.Errorf("%s: store: %w", *path, err)
	}
	client, err := redisstore.Open(url, filepath.Dir(*path))
	if err != nil {
		return fmt.Errorf("%s: store: %w", *path, err)
	}
	defer client.Close()
	var store ratelimit.Pauses = rlredis.New(client, rlredis.Options{})
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := store.Pause(ctx, route, verb == "pause"); err != nil {
		// Named by its servers only: the URL may hold a password.
		return fmt.Errorf("%s in %s: %w", verb, redisstore.Describe(f.Config.Store), err)
	}
	all, paused, err := store.PausedRoutes(ctx)
	if err != nil {
		return err
	}
	what := "route " + route
	if route == ratelimit.AllRoutes {
		what = "every route"
	}
	fmt.Fprintf(stdout, "%sd: %s; every instance obeys within a second\n", verb, what)
	switch {
	case all:
		fmt.Fprintln(stdout, "paused now: every route")
	case len(paused) > 0:
		fmt.Fprintf(stdout, "paused now: %s\n", strings.Join(paused, ", "))
	default:
		fmt.Fprintln(stdout, "paused now: none")
	}
	return nil
}

func hasRoute(c *config.Config, name string) bool {
	for _, r := range c.Routes {
		if r.Name == name {
			return true
		}
	}
	return false
}

func routeNames(c *config.Config) []string {
	names := make([]string, 0, len(c.Routes))
	for _, r := range c.Routes {
		names = append(names, r.Name)
	}
	return names
}
