package cli

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keyward/keyward/internal/caller/apikey"
	akredis "github.com/keyward/keyward/internal/caller/apikey/redis"
	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/redisstore"
)

const keysUsage = `Usage:
  keyward keys create KIND --name NAME [--expires 90d] [--rate 600/m] [--burst N] [--budget 100000/month] [-c FILE] [-o FILE]
                       make a key; it is printed once, alone on the first line
  keyward keys list [KIND] [-c FILE] [-o FILE]
                       names, dates and last uses (never keys)
  keyward keys revoke KIND NAME [-c FILE]
                       revoke a key; every instance refuses it within a second
  keyward keys import [KIND] [-c FILE]
                       copy the keys files' keys into the Redis store the config names

The keys are where the config keeps them: in each kind's keys file, or,
when store: names Redis, in Redis (and the keys files are not read).
`

// keysEnv is what `keyward keys` takes from outside, so tests can fix it.
type keysEnv struct {
	now    func() time.Time
	random io.Reader
}

// keys runs `keyward keys`.
func keys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runKeys(ctx, keysEnv{now: time.Now, random: rand.Reader}, args, stdout, stderr)
}

func runKeys(ctx context.Context, env keysEnv, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return usageError{errors.New("want create, list, revoke or import")}
	}
	switch args[0] {
	case "create":
		return keysCreate(ctx, env, args[1:], stdout, stderr)
	case "list":
		return keysList(ctx, env, args[1:], stdout, stderr)
	case "revoke":
		return keysRevoke(ctx, env, args[1:], stderr)
	case "import":
		return keysImport(ctx, args[1:], stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, keysUsage)
		return nil
	}
	fmt.Fprint(stderr, keysUsage)
	return usageError{fmt.Errorf("unknown keys command %q", args[0])}
}

// keyring is where a config keeps its API keys: each api_keys kind's
// keys file or, when `store:` names Redis, Redis.
type keyring struct {
	path  string
	cfg   *config.Config
	redis *akredis.Store // nil when the keys are in files
	where string         // Redis's servers, without credentials
	close func() error
}

// keysTimeout bounds one `keyward keys` command's Redis calls.
const keysTimeout = 10 * time.Second

// openKeyring reads the config at path. Only the config is read: a route
// with a problem must not stop anyone from revoking a key. With a Redis
// store, the client is opened here (no round trip yet); Close closes it.
func openKeyring(path string) (*keyring, error) {
	f, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	k := &keyring{path: path, cfg: &f.Config, close: func() error { return nil }}
	if !redisStore(f.Config.Store) {
		return k, nil
	}
	url, err := gateway.StoreURL(f, nil) // {secret.NAME} filled in
	if err != nil {
		return nil, fmt.Errorf("%s: store: %w", path, err)
	}
	client, err := redisstore.Open(url, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("%s: store: %w", path, err)
	}
	k.redis = akredis.New(client, akredis.Options{})
	// Named by its servers only: the URL may hold a password.
	k.where = redisstore.Describe(f.Config.Store)
	k.close = client.Close
	return k, nil
}

// redisStore reports whether the `store:` setting names Redis rather than
// the default memory store, the rule the server uses.
func redisStore(store string) bool { return store != "" && store != "memory" }

// Close releases the Redis client, if any.
func (k *keyring) Close() error { return k.close() }

// kinds returns the caller kinds with api_keys, sorted.
func (k *keyring) kinds() []string {
	var kinds []string
	for name, c := range k.cfg.Callers {
		if c.APIKeys != nil {
			kinds = append(kinds, name)
		}
	}
	slices.Sort(kinds)
	return kinds
}

// file returns the keys file of kind, whatever the store.
func (k *keyring) file(kind string) (*apikey.File, error) {
	c, ok := k.cfg.Callers[kind]
	if !ok || c.APIKeys == nil {
		kinds := k.kinds()
		if len(kinds) == 0 {
			return nil, fmt.Errorf("%s: no caller kind has api_keys (add one under callers:)", k.path)
		}
		return nil, fmt.Errorf("%s: caller kind %q has no api_keys (kinds with api_keys: %s)", k.path, kind, strings.Join(kinds, ", "))
	}
	return apikey.OpenFile(apikey.KeysPath(*c.APIKeys, filepath.Dir(k.path)), apikey.FileOptions{}), nil
}

// store returns where the keys of kind are kept, and its name for
// messages.
func (k *keyring) store(kind string) (apikey.Admin, string, error) {
	f, err := k.file(kind)
	if err != nil {
		return nil, "", err
	}
	if k.redis != nil {
		return k.redis, k.where, nil
	}
	return f, f.Path(), nil
}

// warnIgnoredFile says, with a Redis store, that kind's `keys:` file is
// not read, so nobody edits it expecting an effect.
func (k *keyring) warnIgnoredFile(kind string, stderr io.Writer) {
	if c := k.cfg.Callers[kind]; k.redis != nil && c.APIKeys != nil && c.APIKeys.Keys != "" {
		fmt.Fprintf(stderr, "warning: callers.%s.api_keys.keys is not read: with a Redis store the keys are in Redis (keyward keys import copies a file's keys there)\n", kind)
	}
}

func keysCreate(ctx context.Context, env keysEnv, args []string, stdout, stderr io.Writer) error {
	fs, path := newFlags("keys create", stderr)
	name := fs.String("name", "", "the key's name (a partner, an app): its id in limits and logs")
	expires := fs.String("expires", "", "lifetime, e.g. 90d or 12h (default: never)")
	rate := fs.String("rate", "", "the key's own rate, replacing the route's per-caller rate, e.g. 600/m")
	burst := fs.Int64("burst", 0, "the key's own burst")
	budget := fs.String("budget", "", "the key's own budget per calendar window, e.g. 100000/month")
	out := fs.String("o", "", "write the key to this new file (mode 0600) instead of stdout")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{errors.New("want: keys create KIND --name NAME")}
	}
	kind := pos[0]
	if *name == "" {
		return usageError{errors.New("--name is required")}
	}
	now := env.now().UTC().Truncate(time.Second)
	r := apikey.Record{Kind: kind, Name: *name, Created: now}
	if *expires != "" {
		d, err := parseLifetime(*expires)
		if err != nil {
			return usageError{err}
		}
		r.Expires = now.Add(d)
	}
	if *rate != "" || *burst != 0 || *budget != "" {
		r.Limits = &apikey.Limits{Rate: *rate, Burst: *burst, Budget: *budget}
		if _, err := r.Limits.Plan(); err != nil {
			return usageError{fmt.Errorf("limits: %w", err)}
		}
	}
	ring, err := openKeyring(*path)
	if err != nil {
		return err
	}
	defer ring.Close()
	store, where, err := ring.store(kind)
	if err != nil {
		return err
	}
	ring.warnIgnoredFile(kind, stderr)
	ctx, cancel := context.WithTimeout(ctx, keysTimeout)
	defer cancel()
	key, h, err := apikey.Generate(env.random)
	if err != nil {
		return err
	}
	r.Hash = h
	// The output file is made before the key is stored, so that a key is
	// never stored that nobody could be shown.
	w := stdout
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("opening the key's output file: %w", err)
		}
		defer f.Close()
		w = f
	}
	if err := store.Add(ctx, r); err != nil {
		if errors.Is(err, apikey.ErrNameTaken) {
			return fmt.Errorf("key %s/%s: %w", kind, *name, err)
		}
		return err
	}
	if _, err := fmt.Fprintln(w, key); err != nil {
		return fmt.Errorf("writing the key: %w", err)
	}
	exp := "never expires"
	if !r.Expires.IsZero() {
		exp = "expires " + r.Expires.Format(time.RFC3339)
	}
	shown := "above"
	if *out != "" {
		shown = "in " + *out
	}
	fmt.Fprintf(stderr, "created key %s/%s (%s); its hash is in %s.\nThe key %s is shown once: give it to its holder now.\n",
		kind, *name, exp, where, shown)
	return nil
}

// parseLifetime reads "90d" (days, which time.ParseDuration lacks) or a
// Go duration ("12h").
func parseLifetime(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days <= 0 || days > 36500 {
			return 0, fmt.Errorf("--expires %q: want a number of days like 90d, or a duration like 12h", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--expires %q: want a number of days like 90d, or a duration like 12h", s)
	}
	return d, nil
}

func keysList(ctx context.Context, env keysEnv, args []string, stdout, stderr io.Writer) error {
	fs, path := newFlags("keys list", stderr)
	out := fs.String("o", "", "write the list to this file instead of stdout")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageError{fmt.Errorf("unexpected argument %q", pos[1])}
	}
	ring, err := openKeyring(*path)
	if err != nil {
		return err
	}
	defer ring.Close()
	kinds := ring.kinds()
	if len(pos) == 1 {
		if _, err := ring.file(pos[0]); err != nil {
			return err
		}
		kinds = pos
	}
	ctx, cancel := context.WithTimeout(ctx, keysTimeout)
	defer cancel()
	rows := [][]string{{"KIND", "NAME", "CREATED", "EXPIRES", "LAST USED", "STATUS", "LIMITS"}}
	now := env.now()
	for _, kind := range kinds {
		store, _, err := ring.store(kind)
		if err != nil {
			return err
		}
		list, err := store.List(ctx, kind)
		if err != nil {
			return err
		}
		for _, r := range list {
			rows = append(rows, []string{r.Kind, r.Name, day(r.Created), dash(day(r.Expires)), dash(day(r.LastUsed)), status(r, now), limitsText(r.Limits)})
		}
	}
	w := stdout
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			return fmt.Errorf("opening the output file: %w", err)
		}
		defer f.Close()
		w = f
	}
	table(w, rows)
	return nil
}

func day(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04")
}

func status(r apikey.Record, now time.Time) string {
	switch {
	case !r.Revoked.IsZero():
		return "revoked " + r.Revoked.UTC().Format("2006-01-02")
	case !r.Expires.IsZero() && !now.Before(r.Expires):
		return "expired"
	}
	return "active"
}

func limitsText(l *apikey.Limits) string {
	if l == nil {
		return "-"
	}
	var parts []string
	if l.Rate != "" {
		parts = append(parts, "rate "+l.Rate)
	}
	if l.Burst != 0 {
		parts = append(parts, "burst "+strconv.FormatInt(l.Burst, 10))
	}
	if l.Budget != "" {
		parts = append(parts, "budget "+l.Budget)
	}
	return strings.Join(parts, ", ")
}

func keysRevoke(ctx context.Context, env keysEnv, args []string, stderr io.Writer) error {
	fs, path := newFlags("keys revoke", stderr)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usageError{errors.New("want: keys revoke KIND NAME")}
	}
	ring, err := openKeyring(*path)
	if err != nil {
		return err
	}
	defer ring.Close()
	store, where, err := ring.store(pos[0])
	if err != nil {
		return err
	}
	ring.warnIgnoredFile(pos[0], stderr)
	ctx, cancel := context.WithTimeout(ctx, keysTimeout)
	defer cancel()
	if err := store.Revoke(ctx, pos[0], pos[1], env.now().UTC().Truncate(time.Second)); err != nil {
		return fmt.Errorf("revoking %s/%s: %w", pos[0], pos[1], err)
	}
	fmt.Fprintf(stderr, "revoked key %s/%s in %s; serving instances refuse it within a second.\n", pos[0], pos[1], where)
	return nil
}

// keysImport copies the records of each api_keys kind's keys file
// (revoked ones and last uses included) into the Redis store, so that a
// config can move to Redis without issuing new keys. It can be run again:
// a key already there is kept, and revoked if the file revokes it.
func keysImport(ctx context.Context, args []string, stderr io.Writer) error {
	fs, path := newFlags("keys import", stderr)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageError{fmt.Errorf("unexpected argument %q", pos[1])}
	}
	ring, err := openKeyring(*path)
	if err != nil {
		return err
	}
	defer ring.Close()
	if ring.redis == nil {
		return fmt.Errorf("%s: store: is not Redis; keys import copies keys files into a Redis store", *path)
	}
	kinds := ring.kinds()
	if len(pos) == 1 {
		if _, err := ring.file(pos[0]); err != nil {
			return err
		}
		kinds = pos
	}
	ctx, cancel := context.WithTimeout(ctx, keysTimeout)
	defer cancel()
	for _, kind := range kinds {
		f, err := ring.file(kind)
		if err != nil {
			return err
		}
		records, err := f.List(ctx, kind)
		if err != nil {
			return err
		}
		added, kept, revoked := 0, 0, 0
		for _, r := range records {
			err := ring.redis.Add(ctx, r)
			if err == nil {
				added++
				continue
			}
			if !errors.Is(err, apikey.ErrNameTaken) {
				return fmt.Errorf("importing %s/%s: %w", r.Kind, r.Name, err)
			}
			there, found, err := ring.redis.Lookup(ctx, r.Hash)
			if err != nil {
				return fmt.Errorf("importing %s/%s: %w", r.Kind, r.Name, err)
			}
			if !found || there.Kind != r.Kind || there.Name != r.Name {
				return fmt.Errorf("importing %s/%s: %w; Redis has another key of that name", r.Kind, r.Name, apikey.ErrNameTaken)
			}
			if !r.Revoked.IsZero() && there.Revoked.IsZero() {
				if err := ring.redis.Revoke(ctx, r.Kind, r.Name, r.Revoked); err != nil {
					return fmt.Errorf("importing %s/%s: %w", r.Kind, r.Name, err)
				}
				revoked++
			}
			kept++
		}
		fmt.Fprintf(stderr, "%s: %d keys imported from %s into %s; %d already there, %d of them revoked now as in the file.\n",
			kind, added, f.Path(), ring.where, kept, revoked)
	}
	return nil
}
