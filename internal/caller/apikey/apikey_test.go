package apikey

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/caller"
	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/ratelimit"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }
func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func TestKeyFormat(t *testing.T) {
	key, h, err := Generate(bytes.NewReader(bytes.Repeat([]byte{0xff}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	if len(key) != KeyLen || !strings.HasPrefix(key, "kw_") || HashOf(key) != h {
		t.Fatalf("key %q (len %d)", key, len(key))
	}
	zero, _, _ := Generate(bytes.NewReader(make([]byte, 32)))
	if want := "kw_" + strings.Repeat("0", 43); !strings.HasPrefix(zero, want) || Check(zero) != nil {
		t.Errorf("all-zero key %q: want %s and a checksum", zero, want)
	}
	seen := map[string]bool{}
	for range 200 {
		k, _, err := Generate(rand.Reader)
		if err != nil || Check(k) != nil || seen[k] {
			t.Fatalf("Generate: %q, %v", k, err)
		}
		seen[k] = true
		// Any one character changed breaks the checksum (or the alphabet).
		for _, i := range []int{3, 20, KeyLen - 7, KeyLen - 1} {
			b := []byte(k)
			if b[i] == 'a' {
				b[i] = 'b'
			} else {
				b[i] = 'a'
			}
			if Check(string(b)) == nil {
				t.Errorf("changed key %q passes the checksum", b)
			}
		}
	}
	for _, bad := range []string{"", "kw_", "gh_" + key[3:], key + "0", key[:KeyLen-1] + "-", strings.ToUpper(key)} {
		if Check(bad) == nil {
			t.Errorf("Check(%q) passed", bad)
		}
	}
	if _, _, err := Generate(bytes.NewReader(nil)); err == nil {
		t.Error("Generate with no randomness succeeded")
	}
	if back, err := ParseHash(h.String()); err != nil || back != h {
		t.Errorf("ParseHash(String()) = %v, %v", back, err)
	}
}

type fixture struct {
	clk  *clock
	file *File
	v    *Verifier
	errs []error
	mu   sync.Mutex
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{clk: newClock()}
	dir := t.TempDir()
	var probs []caller.Problem
	f.v, f.file, probs = Compile("partners", config.APIKeys{}, caller.Env{Dir: dir, Now: f.clk.Now}, func(err error) {
		f.mu.Lock()
		f.errs = append(f.errs, err)
		f.mu.Unlock()
	})
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	// A last-use write may still be under way when the test ends.
	t.Cleanup(func() {
		if err := f.file.Flush(); err != nil {
			t.Error(err)
		}
	})
	if f.file.Path() != filepath.Join(dir, "keys.yaml") {
		t.Fatalf("path %s", f.file.Path())
	}
	return f
}

func (f *fixture) add(t *testing.T, kind, name string, mod func(*Record)) string {
	t.Helper()
	key, h, err := Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r := Record{Kind: kind, Name: name, Hash: h, Created: f.clk.Now()}
	if mod != nil {
		mod(&r)
	}
	if err := f.file.Add(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return key
}

func (f *fixture) verify(key string) (caller.Identity, error) {
	r := httptest.NewRequest("GET", "/", nil)
	if key != "" {
		r.Header.Set("X-Api-Key", key)
	}
	return f.v.Verify(context.Background(), r)
}

func TestVerify(t *testing.T) {
	f := newFixture(t)
	acme := f.add(t, "partners", "acme", func(r *Record) {
		r.Limits = &Limits{Rate: "600/m", Burst: 50, Budget: "100000/month"}
	})
	soon := f.add(t, "partners", "soon", func(r *Record) { r.Expires = f.clk.Now().Add(time.Hour) })
	other := f.add(t, "internal", "ops", nil)
	gone := f.add(t, "partners", "gone", nil)
	if err := f.file.Revoke(context.Background(), "partners", "gone", f.clk.Now()); err != nil {
		t.Fatal(err)
	}
	// Revoked on a host whose clock is a minute ahead: revoked all the same.
	skewed := f.add(t, "partners", "skewed", nil)
	if err := f.file.Revoke(context.Background(), "partners", "skewed", f.clk.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	f.clk.Advance(time.Second) // the next lookup looks at the file again

	id, err := f.verify(acme)
	if err != nil {
		t.Fatal(err)
	}
	want := caller.Identity{Kind: "partners", ID: "acme", Limits: &caller.Plan{
		Rate: ratelimit.Rate{Count: 600, Per: time.Minute}, Burst: 50,
		Budget: ratelimit.Budget{Limit: 100000, Window: ratelimit.Month}}}
	if diff := cmp.Diff(want, id); diff != "" {
		t.Errorf("identity (-want +got):\n%s", diff)
	}
	if id, err := f.verify(soon); err != nil || id.ID != "soon" || id.Limits != nil {
		t.Errorf("soon: %+v, %v", id, err)
	}
	unknown, _, _ := Generate(rand.Reader)
	for _, tc := range []struct {
		name, key string
		want      caller.Reason
	}{
		{"missing", "", caller.Missing},
		{"malformed", "kw_not-a-key", caller.Malformed},
		{"bad checksum", acme[:KeyLen-1] + "x", caller.Malformed},
		{"too large", strings.Repeat("k", 1000), caller.TooLarge},
		{"unknown", unknown, caller.UnknownKey},
		{"another kind's key", other, caller.UnknownKey},
		{"revoked", gone, caller.Revoked},
		{"revoked by a clock ahead of ours", skewed, caller.Revoked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.verify(tc.key)
			if caller.ReasonOf(err) != tc.want {
				t.Errorf("reason = %v, want %s", err, tc.want)
			}
			for _, k := range []string{acme, soon, other, gone, skewed, unknown} {
				if err != nil && strings.Contains(err.Error(), k) {
					t.Errorf("error quotes a key: %v", err)
				}
			}
		})
	}
	f.clk.Advance(time.Hour)
	if _, err := f.verify(soon); caller.ReasonOf(err) != caller.Expired {
		t.Errorf("expired key: %v", err)
	}
}

// TestRevocationReload: a key revoked by another process (the CLI) stops
// working within CheckEvery, with no restart.
func TestRevocationReload(t *testing.T) {
	f := newFixture(t)
	key := f.add(t, "partners", "acme", nil)
	f.clk.Advance(time.Second)
	if _, err := f.verify(key); err != nil {
		t.Fatal(err)
	}
	cli := OpenFile(f.file.Path(), FileOptions{})
	if err := cli.Revoke(context.Background(), "partners", "acme", f.clk.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.verify(key); err != nil {
		t.Fatalf("within the check interval the loaded keys answer: %v", err)
	}
	f.clk.Advance(time.Second)
	if _, err := f.verify(key); caller.ReasonOf(err) != caller.Revoked {
		t.Fatalf("after the check interval: %v, want revoked", err)
	}

	// A broken file keeps the last good keys and reports the error.
	fresh := f.add(t, "partners", "fresh", nil)
	f.clk.Advance(time.Second)
	if _, err := f.verify(fresh); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.file.Path(), []byte("keys: [{kind: partners, hash: nope}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.clk.Advance(time.Second)
	if _, err := f.verify(fresh); err != nil {
		t.Errorf("with a broken file: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.errs) != 1 || !strings.Contains(f.errs[0].Error(), "keys[0]") {
		t.Errorf("errors reported: %v", f.errs)
	}
}

func TestAdmin(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.add(t, "partners", "acme", nil)
	_, h, _ := Generate(rand.Reader)
	if err := f.file.Add(ctx, Record{Kind: "partners", Name: "acme", Hash: h, Created: f.clk.Now()}); !errors.Is(err, ErrNameTaken) {
		t.Errorf("duplicate name: %v", err)
	}
	acme := HashOf(f.add(t, "partners", "acme2", nil))
	if err := f.file.Add(ctx, Record{Kind: "partners", Name: "again", Hash: acme, Created: f.clk.Now()}); err == nil || !strings.Contains(err.Error(), "same hash") {
		t.Errorf("a hash stored twice: %v", err)
	}
	if err := f.file.Load(); err != nil {
		t.Errorf("the file no longer loads: %v", err)
	}
	if err := f.file.Revoke(ctx, "partners", "acme", f.clk.Now()); err != nil {
		t.Fatal(err)
	}
	if err := f.file.Revoke(ctx, "partners", "acme", f.clk.Now()); !errors.Is(err, ErrNotFound) {
		t.Errorf("second revoke: %v", err)
	}
	if err := f.file.Add(ctx, Record{Kind: "partners", Name: "acme", Hash: h, Created: f.clk.Now()}); !errors.Is(err, ErrNameTaken) {
		t.Errorf("a revoked name reused: %v", err)
	}
	for _, bad := range []Record{
		{Kind: "partners", Name: "has space", Hash: h, Created: f.clk.Now()},
		{Kind: "partners", Name: "x", Hash: h},
		{Kind: "partners", Name: "y", Hash: h, Created: f.clk.Now(), Limits: &Limits{Rate: "lots"}},
	} {
		if err := f.file.Add(ctx, bad); err == nil {
			t.Errorf("Add(%+v) accepted", bad)
		}
	}
	info, err := os.Stat(f.file.Path())
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("keys file mode %v, %v", info.Mode(), err)
	}
}

func TestLastUsed(t *testing.T) {
	f := newFixture(t)
	key := f.add(t, "partners", "acme", nil)
	f.clk.Advance(time.Minute)
	done := f.file.flushedChan()
	if _, err := f.verify(key); err != nil {
		t.Fatal(err)
	}
	<-done
	list, err := f.file.List(context.Background(), "partners")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || !list[0].LastUsed.Equal(f.clk.Now()) {
		t.Errorf("list = %+v, want last used %v", list, f.clk.Now())
	}
	data, _ := os.ReadFile(f.file.Path() + ".lastused")
	if strings.Contains(string(data), key) {
		t.Error("the last-use file holds the key")
	}
}

func (f *File) flushedChan() <-chan struct{} {
	f.usedMu.Lock()
	defer f.usedMu.Unlock()
	return f.flushed
}

func TestCompileProblems(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte("keys:\n  - kind: p\n    nmae: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, probs := Compile("partners", config.APIKeys{Header: "X Key", Keys: "bad.yaml"}, caller.Env{Dir: dir}, nil)
	if len(probs) != 2 || probs[0].Path != "api_keys.header" || probs[1].Path != "api_keys.keys" || !strings.Contains(probs[1].Msg, "nmae") {
		t.Errorf("problems = %+v", probs)
	}
}

// go test -run '^$' -bench . -benchmem ./internal/caller/apikey/
func BenchmarkVerify(b *testing.B) {
	dir := b.TempDir()
	v, file, probs := Compile("partners", config.APIKeys{}, caller.Env{Dir: dir}, nil)
	if len(probs) > 0 {
		b.Fatal(probs)
	}
	key, h, _ := Generate(rand.Reader)
	if err := file.Add(context.Background(), Record{Kind: "partners", Name: "acme", Hash: h, Created: time.Now()}); err != nil {
		b.Fatal(err)
	}
	if err := file.Load(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = file.Flush() })
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("X-Api-Key", key)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(context.Background(), r); err != nil {
			b.Fatal(err)
		}
	}
}

// TestConcurrentWriters: writers that each open the file themselves (as
// separate `keyward keys` processes do) and add and revoke at once never
// lose each other's records (H8: the file was rewritten without a lock).
func TestConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.yaml")
	now := newClock().Now()
	ctx := context.Background()
	if err := OpenFile(path, FileOptions{}).Add(ctx, Record{Kind: "partners", Name: "old", Hash: HashOf("old"), Created: now}); err != nil {
		t.Fatal(err)
	}
	const writers = 16
	var wg sync.WaitGroup
	errs := make(chan error, writers+1)
	for i := range writers {
		wg.Go(func() {
			name := fmt.Sprintf("p%02d", i)
			errs <- OpenFile(path, FileOptions{}).Add(ctx, Record{Kind: "partners", Name: name, Hash: HashOf(name), Created: now})
		})
	}
	wg.Go(func() { errs <- OpenFile(path, FileOptions{}).Revoke(ctx, "partners", "old", now) })
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	list, err := OpenFile(path, FileOptions{}).List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	revoked := false
	for _, r := range list {
		names = append(names, r.Name)
		if r.Name == "old" {
			revoked = !r.Revoked.IsZero()
		}
	}
	slices.Sort(names)
	want := []string{"old"}
	for i := range writers {
		want = append(want, fmt.Sprintf("p%02d", i))
	}
	slices.Sort(want)
	if diff := cmp.Diff(want, names); diff != "" || !revoked {
		t.Errorf("records after concurrent writes (-want +got):\n%s\nold revoked: %v", diff, revoked)
	}
}

// TestCompileStore: a verifier over a given store checks the block's
// header and kind, reads no keys file, and refuses every key of a store
// that was not opened.
func TestCompileStore(t *testing.T) {
	dir := t.TempDir()
	// A keys file that would not load: CompileStore must not read it.
	if err := os.WriteFile(filepath.Join(dir, "keys.yaml"), []byte("nonsense: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, probs := CompileStore("bad kind", config.APIKeys{Header: "X Key", Keys: "keys.yaml"}, caller.Env{Dir: dir}, NoStore{})
	if len(probs) != 2 || probs[0].Path != "api_keys.header" || probs[1].Path != "api_keys" {
		t.Errorf("problems = %+v", probs)
	}
	v, probs := CompileStore("partners", config.APIKeys{Keys: "keys.yaml"}, caller.Env{Dir: dir}, NoStore{})
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	key, _, _ := Generate(rand.Reader)
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set(DefaultHeader, key)
	if _, err := v.Verify(context.Background(), r); caller.ReasonOf(err) != caller.StoreFailed || !errors.Is(err, ErrNoStore) {
		t.Errorf("a key with no store opened: %v, want store_failed", err)
	}
}
