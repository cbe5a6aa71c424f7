// Package spool keeps captures on local disk until they are stored.
//
// A capture is written into a temporary directory and made visible by one
// rename on Commit, so an entry is either complete or absent, also across a
// crash. Flush stores committed entries oldest first, profiles before the
// metadata JSON so a reader that sees the .json finds its profiles; Ready
// tells the uploader (internal/ship, which owns retries) when to call it.
// Entries survive a restart and are drained when the spool is opened again. The
// spool is bounded in bytes: the oldest entries are dropped to make room,
// logged and counted. A held entry is kept but not uploaded until Release.
package spool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/metrics"
	"github.com/heapwatch/heapwatch/store"
)

var (
	// ErrNotFound reports an entry that is gone: uploaded, discarded or
	// dropped from a full spool.
	ErrNotFound = errors.New("spool: no such entry")
	// ErrTooLarge reports an entry larger than the whole spool.
	ErrTooLarge = errors.New("spool: entry larger than the spool bound")
)

const (
	metadataFile = "metadata.json"
	heldMarker   = "HELD"
	tmpDir       = "tmp"
	entriesDir   = "entries"
)

// Spool is a bounded local queue of captures.
type Spool struct {
	dir      string
	maxBytes int64
	log      *slog.Logger
	metrics  *metrics.Metrics

	mu      sync.Mutex
	entries map[string]*entry // committed entries by ID
	bytes   int64
	seq     atomic.Uint64

	ready    chan struct{}
	uploadMu sync.Mutex // one upload pass at a time
}

type entry struct {
	id    string
	bytes int64
	held  bool
}

// Options configure Open.
type Options struct {
	MaxBytes int64
	Log      *slog.Logger
	Metrics  *metrics.Metrics
}

// Open opens (creating) the spool in dir. Uncommitted leftovers of a crash
// are removed; held entries of a previous run are dropped (nothing can
// release them now); committed entries are kept for upload.
func Open(dir string, o Options) (*Spool, error) {
	if o.MaxBytes <= 0 {
		return nil, fmt.Errorf("spool: bound must be positive, got %d", o.MaxBytes)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	s := &Spool{dir: dir, maxBytes: o.MaxBytes, log: o.Log, metrics: o.Metrics,
		entries: make(map[string]*entry), ready: make(chan struct{}, 1)}
	if err := os.RemoveAll(filepath.Join(dir, tmpDir)); err != nil {
		return nil, fmt.Errorf("spool: clear %s: %w", tmpDir, err)
	}
	for _, d := range []string{tmpDir, entriesDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	names, err := os.ReadDir(filepath.Join(dir, entriesDir))
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	for _, de := range names {
		id := de.Name()
		path := s.path(id)
		if _, err := os.Stat(filepath.Join(path, heldMarker)); err == nil {
			s.log.Info("dropping a held capture of a previous run", "entry", id)
			_ = os.RemoveAll(path)
			continue
		}
		if _, err := s.readMetadata(id); err != nil {
			s.log.Warn("removing an unreadable spool entry", "entry", id, "err", err)
			_ = os.RemoveAll(path)
			continue
		}
		n, err := dirSize(path)
		if err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		s.entries[id] = &entry{id: id, bytes: n}
		s.bytes += n
	}
	s.seq.Store(uint64(len(names)))
	s.metrics.SpoolBytes(s.bytes)
	if len(s.entries) > 0 {
		s.log.Info("spool holds captures from a previous run", "entries", len(s.entries), "bytes", s.bytes)
	}
	return s, nil
}

// Bytes is the size of the committed entries.
func (s *Spool) Bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes
}

// Pending lists the committed entry IDs, oldest first, and whether each is held.
func (s *Spool) Pending() (ids []string, held []bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids = s.sortedIDs()
	for _, id := range ids {
		held = append(held, s.entries[id].held)
	}
	return ids, held
}

func (s *Spool) sortedIDs() []string {
	ids := make([]string, 0, len(s.entries))
	for id := range s.entries {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (s *Spool) path(id string) string { return filepath.Join(s.dir, entriesDir, id) }

// newID sorts by creation time, then by a sequence number.
func (s *Spool) newID() string {
	return fmt.Sprintf("%019d-%06d", time.Now().UnixNano(), s.seq.Add(1)%1_000_000)
}

// Writer builds one entry in the spool's temporary directory.
type Writer struct {
	s   *Spool
	id  string
	dir string
}

// Begin starts a new entry.
func (s *Spool) Begin() (*Writer, error) {
	id := s.newID()
	dir := filepath.Join(s.dir, tmpDir, id)
	if err := os.Mkdir(dir, 0o750); err != nil {
		return nil, fmt.Errorf("spool: begin: %w", err)
	}
	return &Writer{s: s, id: id, dir: dir}, nil
}

// Create opens the file for one profile of the entry.
func (w *Writer) Create(profile string) (*os.File, error) {
	if profile == "" || strings.ContainsAny(profile, `/\`) || profile == metadataFile || profile == heldMarker || profile[0] == '.' {
		return nil, fmt.Errorf("spool: bad profile name %q", profile)
	}
	f, err := os.OpenFile(filepath.Join(w.dir, profile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	return f, nil
}

// Abort removes the uncommitted entry.
func (w *Writer) Abort() { _ = os.RemoveAll(w.dir) }

// Commit writes meta and makes the entry visible. Profiles listed in meta
// are uploaded from the files of the same name; a held entry waits for
// Release. Older entries are dropped if the spool would exceed its bound.
func (w *Writer) Commit(meta *capture.Metadata, held bool) (string, error) {
	if err := writeJSON(filepath.Join(w.dir, metadataFile), meta); err != nil {
		w.Abort()
		return "", err
	}
	if held {
		if err := os.WriteFile(filepath.Join(w.dir, heldMarker), nil, 0o640); err != nil {
			w.Abort()
			return "", fmt.Errorf("spool: %w", err)
		}
	}
	n, err := dirSize(w.dir)
	if err != nil {
		w.Abort()
		return "", fmt.Errorf("spool: %w", err)
	}
	s := w.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if n > s.maxBytes {
		w.Abort()
		return "", fmt.Errorf("%w: %d bytes, bound %d", ErrTooLarge, n, s.maxBytes)
	}
	s.makeRoom(n)
	if err := os.Rename(w.dir, s.path(w.id)); err != nil {
		w.Abort()
		return "", fmt.Errorf("spool: commit: %w", err)
	}
	s.entries[w.id] = &entry{id: w.id, bytes: n, held: held}
	s.bytes += n
	s.metrics.SpoolBytes(s.bytes)
	if !held {
		s.kick()
	}
	return w.id, nil
}

// makeRoom drops the oldest entries until n more bytes fit. Called with mu.
func (s *Spool) makeRoom(n int64) {
	for _, id := range s.sortedIDs() {
		if s.bytes+n <= s.maxBytes {
			return
		}
		e := s.entries[id]
		s.log.Warn("spool full: dropping the oldest capture before it was stored",
			"entry", id, "bytes", e.bytes, "held", e.held, "spoolBytes", s.bytes, "bound", s.maxBytes)
		s.removeLocked(id)
		s.metrics.SpoolDropped(e.bytes)
	}
}

func (s *Spool) removeLocked(id string) {
	e, ok := s.entries[id]
	if !ok {
		return
	}
	_ = os.RemoveAll(s.path(id))
	delete(s.entries, id)
	s.bytes -= e.bytes
	s.metrics.SpoolBytes(s.bytes)
}

// Amend queues a metadata-only entry: uploading it overwrites the stored
// metadata of a capture whose profiles are already stored.
func (s *Spool) Amend(meta *capture.Metadata) (string, error) {
	w, err := s.Begin()
	if err != nil {
		return "", err
	}
	return w.Commit(meta, false)
}

// Release lets a held entry be uploaded, after update (may be nil) has
// changed its metadata, e.g. to mark it final.
func (s *Spool) Release(id string, update func(*capture.Metadata)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[id]
	if !ok {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if update != nil {
		meta, err := s.readMetadata(id)
		if err != nil {
			return err
		}
		update(meta)
		if err := writeJSON(filepath.Join(s.path(id), metadataFile), meta); err != nil {
			return err
		}
	}
	if err := os.Remove(filepath.Join(s.path(id), heldMarker)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("spool: release %s: %w", id, err)
	}
	e.held = false
	s.kick()
	return nil
}

// Discard removes an entry that is no longer wanted (a superseded held
// capture).
func (s *Spool) Discard(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeLocked(id)
}

func (s *Spool) kick() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Ready receives after an entry became ready for upload (committed unheld,
// or released) since the last receive; the uploader (internal/ship) then
// calls Flush.
func (s *Spool) Ready() <-chan struct{} { return s.ready }

// Flush uploads every committed, unheld entry now, oldest first, and stops
// at the first failure.
func (s *Spool) Flush(ctx context.Context, st store.Store) error {
	s.uploadMu.Lock()
	defer s.uploadMu.Unlock()
	for {
		id, ok := s.nextReady()
		if !ok {
			return nil
		}
		if err := s.upload(ctx, st, id); err != nil {
			if errors.Is(err, ErrNotFound) {
				continue // dropped or discarded meanwhile
			}
			s.metrics.UploadFailed()
			if errors.Is(err, store.ErrBadKey) {
				// Retrying cannot help, and the entry would block the rest.
				s.log.Error("dropping a capture the storage cannot hold", "entry", id, "err", err)
				s.Discard(id)
				s.metrics.SpoolDropped(0)
				continue
			}
			return err
		}
		s.metrics.Uploaded()
	}
}

func (s *Spool) nextReady() (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range s.sortedIDs() {
		if !s.entries[id].held {
			return id, true
		}
	}
	return "", false
}

// upload stores the entry's profiles, then its metadata, then removes it.
// Each stored profile file is deleted at once, so a retry resumes.
func (s *Spool) upload(ctx context.Context, st store.Store, id string) error {
	meta, err := s.readMetadata(id)
	if err != nil {
		s.mu.Lock()
		_, ok := s.entries[id]
		if ok {
			s.log.Error("removing an unreadable spool entry", "entry", id, "err", err)
			s.removeLocked(id)
		}
		s.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	dir := s.path(id)
	for _, p := range meta.Profiles {
		if p.Key == "" {
			continue
		}
		path := filepath.Join(dir, p.Name)
		if err := putFile(ctx, st, p.Key, path); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // stored by an earlier attempt
			}
			return err
		}
		if err := s.removeFile(id, path); err != nil {
			return err
		}
	}
	if err := putFile(ctx, st, meta.Name().MetadataKey(), filepath.Join(dir, metadataFile)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return err
	}
	s.mu.Lock()
	s.removeLocked(id)
	s.mu.Unlock()
	s.log.Info("capture stored", "id", meta.ID, "final", meta.Final, "bytes", meta.TotalBytes())
	return nil
}

// removeFile deletes one uploaded file and takes it off the spool's size.
func (s *Spool) removeFile(id, path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[id]
	if !ok {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	e.bytes -= st.Size()
	s.bytes -= st.Size()
	s.metrics.SpoolBytes(s.bytes)
	return nil
}

func putFile(ctx context.Context, st store.Store, key, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if err := st.Put(ctx, key, f, info.Size()); err != nil {
		return fmt.Errorf("store %s: %w", key, err)
	}
	return nil
}

func (s *Spool) readMetadata(id string) (*capture.Metadata, error) {
	b, err := os.ReadFile(filepath.Join(s.path(id), metadataFile))
	if err != nil {
		return nil, fmt.Errorf("spool: entry %s: %w", id, err)
	}
	m, err := capture.DecodeMetadata(b)
	if err != nil {
		return nil, fmt.Errorf("spool: entry %s: %w", id, err)
	}
	return m, nil
}

// writeJSON replaces path atomically.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("spool: encode metadata: %w", err)
	}
	tmp := path + ".tmp-" + strconv.FormatUint(rand.Uint64(), 36)
	if err := os.WriteFile(tmp, append(b, '\n'), 0o640); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}

func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	return n, err
}
