package apikey

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goccy/go-yaml"
)

// File is a Store and an Admin kept in a YAML file (the `keys:` file of
// an api_keys caller). The server re-reads it within CheckEvery of a
// change; `keyward keys` rewrites it whole, by rename, so a reader never
// sees half a file, holding FILE.lock (an flock) while it reads and
// rewrites, so that two writers at once never lose a record. Last uses are kept beside it, in FILE.lastused, which
// the server rewrites at most once per FlushEvery, so that serving never
// writes the file a person edits.
//
//	# keyward API keys: only SHA-256 hashes. Manage with `keyward keys`.
//	keys:
//	  - kind: partners
//	    name: acme
//	    hash: sha256:9f86d0...
//	    created: "2026-03-01T12:00:00Z"
//	    expires: "2026-05-30T12:00:00Z"
//	    limits: { rate: 600/m, budget: 100000/month }
type File struct {
	path       string
	now        func() time.Time
	checkEvery time.Duration
	flushEvery time.Duration
	onError    func(error)

	set       atomic.Pointer[fileSet] // nil until a load succeeds
	checkedAt atomic.Int64            // UnixNano of the last check for a change

	reloadMu sync.Mutex
	info     fs.FileInfo // of the file loaded; nil when it did not exist

	usedMu    sync.Mutex
	used      map[Hash]time.Time // uses not yet written
	flushedAt time.Time
	flushing  bool
	flushed   chan struct{} // closed and replaced after each write
}

var (
	_ Store = (*File)(nil)
	_ Admin = (*File)(nil)
)

// FileOptions tune a File. Zero values are the defaults.
type FileOptions struct {
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// CheckEvery is how often Lookup looks for a change of the file (one
	// stat). Default 1s: a revocation takes effect within it.
	CheckEvery time.Duration
	// FlushEvery is how often last uses are written. Default 1m.
	FlushEvery time.Duration
	// OnError is told of a reload or a last-use write that failed; the
	// keys last loaded stay in force. Nil means errors are dropped (the
	// CLI, which reports its own).
	OnError func(error)
}

// fileSet is one loaded file, immutable.
type fileSet struct {
	byHash  map[Hash]*Stored
	records []Record
}

// OpenFile returns the File at path. It reads nothing yet; Load does.
func OpenFile(path string, o FileOptions) *File {
	f := &File{
		path:       path,
		now:        o.Now,
		checkEvery: o.CheckEvery,
		flushEvery: o.FlushEvery,
		onError:    o.OnError,
		used:       map[Hash]time.Time{},
		flushed:    make(chan struct{}),
	}
	if f.now == nil {
		f.now = time.Now
	}
	if f.checkEvery == 0 {
		f.checkEvery = time.Second
	}
	if f.flushEvery == 0 {
		f.flushEvery = time.Minute
	}
	if f.onError == nil {
		f.onError = func(error) {}
	}
	return f
}

// Path returns the file's path.
func (f *File) Path() string { return f.path }

// Load reads the file now. A file that does not exist holds no keys.
func (f *File) Load() error {
	f.reloadMu.Lock()
	defer f.reloadMu.Unlock()
	f.checkedAt.Store(f.now().UnixNano())
	return f.reload()
}

// reload reads the file if it changed since the last load. reloadMu is held.
func (f *File) reload() error {
	info, err := os.Stat(f.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if f.info == nil && f.set.Load() != nil {
			return nil
		}
		f.info = nil
		f.set.Store(&fileSet{byHash: map[Hash]*Stored{}})
		return nil
	case err != nil:
		return fmt.Errorf("reading keys file: %w", err)
	}
	// The CLI replaces the file by rename, so a new inode means new
	// content even when the size and modification time look the same.
	if f.info != nil && f.set.Load() != nil && os.SameFile(f.info, info) &&
		info.ModTime().Equal(f.info.ModTime()) && info.Size() == f.info.Size() {
		return nil
	}
	set, err := readSet(f.path)
	if err != nil {
		return err
	}
	f.info = info
	f.set.Store(set)
	return nil
}

// Lookup finds the key with hash h, reading the file again when it
// changed (checked at most once per CheckEvery, by one caller).
func (f *File) Lookup(_ context.Context, h Hash) (Stored, bool, error) {
	now := f.now().UnixNano()
	last := f.checkedAt.Load()
	if now-last >= int64(f.checkEvery) && f.checkedAt.CompareAndSwap(last, now) {
		f.reloadMu.Lock()
		if err := f.reload(); err != nil {
			f.onError(err)
		}
		f.reloadMu.Unlock()
	}
	set := f.set.Load()
	if set == nil {
		return Stored{}, false, errors.New("the keys file could not be read")
	}
	s, ok := set.byHash[h]
	if !ok {
		return Stored{}, false, nil
	}
	return *s, true, nil
}

// Used notes a use; the uses are written to FILE.lastused at most once
// per FlushEvery, in the background.
func (f *File) Used(h Hash, t time.Time) {
	f.usedMu.Lock()
	defer f.usedMu.Unlock()
	f.used[h] = t
	if f.flushing || t.Sub(f.flushedAt) < f.flushEvery {
		return
	}
	f.flushing = true
	f.flushedAt = t
	batch := f.used
	f.used = map[Hash]time.Time{}
	go func() {
		if err := mergeLastUsed(f.path, batch); err != nil {
			f.onError(err)
		}
		f.usedMu.Lock()
		f.flushing = false
		close(f.flushed)
		f.flushed = make(chan struct{})
		f.usedMu.Unlock()
	}()
}

// Flush writes the uses not yet written, after any write under way. The
// server calls it when it stops, so the last minute of uses is kept.
func (f *File) Flush() error {
	f.usedMu.Lock()
	for f.flushing {
		done := f.flushed
		f.usedMu.Unlock()
		<-done
		f.usedMu.Lock()
	}
	batch := f.used
	f.used = map[Hash]time.Time{}
	f.flushing = true
	f.usedMu.Unlock()
	var err error
	if len(batch) > 0 {
		err = mergeLastUsed(f.path, batch)
	}
	f.usedMu.Lock()
	f.flushing = false
	close(f.flushed)
	f.flushed = make(chan struct{})
	f.usedMu.Unlock()
	return err
}

// Add stores r. The file is read and rewritten under its lock, so that
// concurrent writers (two `keyward keys create`) never lose a record.
func (f *File) Add(_ context.Context, r Record) error {
	unlock, err := lock(f.path)
	if err != nil {
		return err
	}
	defer unlock()
	set, err := readSet(f.path)
	if err != nil {
		return err
	}
	for _, old := range set.records {
		if old.Kind == r.Kind && old.Name == r.Name {
			return ErrNameTaken
		}
	}
	if set.byHash[r.Hash] != nil {
		// A file with a hash twice would no longer load.
		return errors.New("a key with the same hash is already stored")
	}
	if err := r.Validate(); err != nil {
		return err
	}
	return writeSet(f.path, append(set.records, r))
}

// List returns the records of kind, or all, with their last uses.
func (f *File) List(_ context.Context, kind string) ([]Record, error) {
	set, err := readSet(f.path)
	if err != nil {
		return nil, err
	}
	used, err := readLastUsed(f.path)
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, r := range set.records {
		if kind == "" || r.Kind == kind {
			r.LastUsed = used[r.Hash]
			out = append(out, r)
		}
	}
	return out, nil
}

// Revoke marks kind/name revoked at t, under the file's lock like Add.
func (f *File) Revoke(_ context.Context, kind, name string, t time.Time) error {
	unlock, err := lock(f.path)
	if err != nil {
		return err
	}
	defer unlock()
	set, err := readSet(f.path)
	if err != nil {
		return err
	}
	for i, r := range set.records {
		if r.Kind == kind && r.Name == name && r.Revoked.IsZero() {
			set.records[i].Revoked = t
			return writeSet(f.path, set.records)
		}
	}
	return ErrNotFound
}

// The file's YAML shape. Times are RFC 3339 strings in UTC.
type fileDoc struct {
	Keys []fileRecord `yaml:"keys"`
}

type fileRecord struct {
	Kind    string  `yaml:"kind"`
	Name    string  `yaml:"name"`
	Hash    string  `yaml:"hash"`
	Created string  `yaml:"created"`
	Expires string  `yaml:"expires,omitempty"`
	Revoked string  `yaml:"revoked,omitempty"`
	Limits  *Limits `yaml:"limits,omitempty"`
}

// readSet reads and checks the file; a missing file is an empty set.
func readSet(path string) (*fileSet, error) {
	set := &fileSet{byHash: map[Hash]*Stored{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return set, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading keys file: %w", err)
	}
	var doc fileDoc
	if err := yaml.UnmarshalWithOptions(data, &doc, yaml.DisallowUnknownField()); err != nil {
		return nil, fmt.Errorf("keys file %s: %s", path, yaml.FormatError(err, false, false))
	}
	var errs []error
	names := map[[2]string]bool{}
	for i, fr := range doc.Keys {
		r, err := fr.record()
		if err == nil {
			err = r.Validate()
		}
		if err == nil && names[[2]string{r.Kind, r.Name}] {
			err = fmt.Errorf("%s/%s appears twice", r.Kind, r.Name)
		}
		if err == nil && set.byHash[r.Hash] != nil {
			err = errors.New("the same hash appears twice")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("keys file %s: keys[%d]: %w", path, i, err))
			continue
		}
		plan, _ := r.Limits.Plan() // checked by Validate
		names[[2]string{r.Kind, r.Name}] = true
		set.byHash[r.Hash] = &Stored{Record: r, Plan: plan}
		set.records = append(set.records, r)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return set, nil
}

func (fr fileRecord) record() (Record, error) {
	r := Record{Kind: fr.Kind, Name: fr.Name, Limits: fr.Limits}
	var err error
	if r.Hash, err = ParseHash(fr.Hash); err != nil {
		return r, err
	}
	for _, t := range []struct {
		name string
		s    string
		to   *time.Time
	}{{"created", fr.Created, &r.Created}, {"expires", fr.Expires, &r.Expires}, {"revoked", fr.Revoked, &r.Revoked}} {
		if t.s == "" {
			continue
		}
		if *t.to, err = time.Parse(time.RFC3339, t.s); err != nil {
			return r, fmt.Errorf("%s %q: want an RFC 3339 time like 2026-03-01T12:00:00Z", t.name, t.s)
		}
	}
	return r, nil
}

const fileHeader = "# keyward API keys: only SHA-256 hashes, never keys. Manage with `keyward keys`.\n"

func writeSet(path string, records []Record) error {
	doc := fileDoc{Keys: make([]fileRecord, len(records))}
	for i, r := range records {
		doc.Keys[i] = fileRecord{Kind: r.Kind, Name: r.Name, Hash: r.Hash.String(),
			Created: stamp(r.Created), Expires: stamp(r.Expires), Revoked: stamp(r.Revoked), Limits: r.Limits}
	}
	body, err := yaml.Marshal(doc)
	if err != nil {
		return fmt.Errorf("encoding keys file: %w", err)
	}
	return writeAtomic(path, append([]byte(fileHeader), body...))
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// writeAtomic replaces path with data by rename, so that a reader (the
// server) never reads half a file, keeping the mode of an existing file
// (0600 for a new one: the file names every partner).
func writeAtomic(path string, data []byte) (err error) {
	mode := fs.FileMode(0o600)
	if info, err := os.Stat(path); err == nil {
		mode = info.Mode().Perm()
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// lockPath is the lock file of the keys file at path.
func lockPath(path string) string { return path + ".lock" }

// lastUsedPath is where the uses of the keys in path are kept.
func lastUsedPath(path string) string { return path + ".lastused" }

// readLastUsed reads FILE.lastused: one "sha256:HEX: TIME" per key.
func readLastUsed(path string) (map[Hash]time.Time, error) {
	out := map[Hash]time.Time{}
	data, err := os.ReadFile(lastUsedPath(path))
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading last uses: %w", err)
	}
	var m map[string]string
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("reading last uses %s: not a mapping of hashes to times", lastUsedPath(path))
	}
	for k, v := range m {
		h, err1 := ParseHash(k)
		t, err2 := time.Parse(time.RFC3339, v)
		if err1 == nil && err2 == nil {
			out[h] = t
		}
	}
	return out, nil
}

// mergeLastUsed adds batch to FILE.lastused, keeping the later time of
// each key, under the keys file's lock, so that instances sharing the
// file do not undo each other.
func mergeLastUsed(path string, batch map[Hash]time.Time) error {
	unlock, err := lock(path)
	if err != nil {
		return err
	}
	defer unlock()
	all, err := readLastUsed(path)
	if err != nil {
		return err
	}
	for h, t := range batch {
		if t.After(all[h]) {
			all[h] = t
		}
	}
	keys := make([]string, 0, len(all))
	m := make(map[string]string, len(all))
	for h, t := range all {
		keys = append(keys, h.String())
		m[h.String()] = stamp(t)
	}
	slices.Sort(keys)
	var b bytes.Buffer
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %q\n", k, m[k])
	}
	return writeAtomic(lastUsedPath(path), b.Bytes())
}
