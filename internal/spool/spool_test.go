package spool

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/metrics"
	"github.com/heapwatch/heapwatch/store"
)

// recorder is a real file store that also records the order of Puts.
type recorder struct {
	store.Store
	mu   sync.Mutex
	keys []string
}

func (r *recorder) Put(ctx context.Context, key string, body io.Reader, size int64) error {
	err := r.Store.Put(ctx, key, body, size)
	if err == nil {
		r.mu.Lock()
		r.keys = append(r.keys, key)
		r.mu.Unlock()
	}
	return err
}

func fileStore(t *testing.T, dir string) store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func openSpool(t *testing.T, dir string, max int64, m *metrics.Metrics) *Spool {
	t.Helper()
	s, err := Open(dir, Options{MaxBytes: max, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var t0 = time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)

// addCapture commits an entry with a heap profile of n bytes.
func addCapture(t *testing.T, s *Spool, second int, n int, held bool) (string, *capture.Metadata) {
	t.Helper()
	meta := &capture.Metadata{SchemaVersion: capture.SchemaVersion, Namespace: "ns", Pod: "pod", Container: "app",
		Trigger: "threshold-60", CapturedAt: t0.Add(time.Duration(second) * time.Second)}
	meta.ID = meta.Name().ID()
	w, err := s.Begin()
	if err != nil {
		t.Fatal(err)
	}
	f, err := w.Create("heap")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(bytes.Repeat([]byte{byte(second)}, n)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	meta.Profiles = []capture.Profile{{Name: "heap", Key: meta.Name().ProfileKey("heap"), Bytes: int64(n)}}
	id, err := w.Commit(meta, held)
	if err != nil {
		t.Fatal(err)
	}
	return id, meta
}

func readMeta(t *testing.T, st store.Store, m *capture.Metadata) *capture.Metadata {
	t.Helper()
	rc, err := st.Get(context.Background(), m.Name().MetadataKey())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	got, err := capture.DecodeMetadata(b)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestUploadOrderAndRemoval(t *testing.T) {
	s := openSpool(t, t.TempDir(), 1<<20, nil)
	rec := &recorder{Store: fileStore(t, t.TempDir())}
	_, m1 := addCapture(t, s, 1, 1000, false)
	_, m2 := addCapture(t, s, 2, 2000, false)
	if err := s.Flush(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	want := []string{m1.Profiles[0].Key, m1.Name().MetadataKey(), m2.Profiles[0].Key, m2.Name().MetadataKey()}
	if !slices.Equal(rec.keys, want) {
		t.Errorf("Put order %q, want %q", rec.keys, want)
	}
	if ids, _ := s.Pending(); len(ids) != 0 || s.Bytes() != 0 {
		t.Errorf("after upload: pending %v, %d bytes", ids, s.Bytes())
	}
	rc, err := rec.Get(context.Background(), m2.Profiles[0].Key)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if len(b) != 2000 || b[0] != 2 {
		t.Errorf("stored profile: %d bytes starting %d", len(b), b[0])
	}
}

func TestBoundDropsOldest(t *testing.T) {
	m := metrics.New()
	s := openSpool(t, t.TempDir(), 10_000, m)
	id1, _ := addCapture(t, s, 1, 4000, false)
	id2, _ := addCapture(t, s, 2, 4000, true)
	id3, _ := addCapture(t, s, 3, 4000, false)
	ids, _ := s.Pending()
	if !slices.Equal(ids, []string{id2, id3}) {
		t.Errorf("pending %v, want the two newest %v (dropped %s)", ids, []string{id2, id3}, id1)
	}
	if s.Bytes() > 10_000 {
		t.Errorf("spool holds %d bytes, bound 10000", s.Bytes())
	}
	if got := counter(t, m, "heapwatch_spool_dropped_total"); got != 1 {
		t.Errorf("dropped counter %v, want 1", got)
	}
	w, _ := s.Begin()
	f, _ := w.Create("heap")
	f.Write(make([]byte, 20_000))
	f.Close()
	if _, err := w.Commit(&capture.Metadata{}, false); !errors.Is(err, ErrTooLarge) {
		t.Errorf("entry larger than the spool: %v, want ErrTooLarge", err)
	}
	if ids, _ := s.Pending(); len(ids) != 2 {
		t.Errorf("a rejected entry dropped others: pending %v", ids)
	}
}

func counter(t *testing.T, m *metrics.Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, metric := range mf.GetMetric() {
				sum += metric.GetCounter().GetValue() + metric.GetGauge().GetValue()
			}
			return sum
		}
	}
	return 0
}

func TestHeldUntilReleased(t *testing.T) {
	s := openSpool(t, t.TempDir(), 1<<20, nil)
	st := fileStore(t, t.TempDir())
	id, m := addCapture(t, s, 1, 100, true)
	if err := s.Flush(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(context.Background(), m.Name().MetadataKey()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("held entry was uploaded: %v", err)
	}
	killed := t0.Add(time.Minute)
	if err := s.Release(id, func(m *capture.Metadata) { m.Final, m.OOMKilledAt = true, &killed }); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	got := readMeta(t, st, m)
	if !got.Final || got.OOMKilledAt == nil || !got.OOMKilledAt.Equal(killed) {
		t.Errorf("released metadata: final %v, killed at %v", got.Final, got.OOMKilledAt)
	}
	if err := s.Release(id, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Release of an uploaded entry: %v, want ErrNotFound", err)
	}
}

func TestAmendOverwritesStoredMetadata(t *testing.T) {
	s := openSpool(t, t.TempDir(), 1<<20, nil)
	st := fileStore(t, t.TempDir())
	_, m := addCapture(t, s, 1, 100, false)
	if err := s.Flush(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	m.Final = true
	if _, err := s.Amend(m); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if got := readMeta(t, st, m); !got.Final {
		t.Error("amended metadata not stored")
	}
}

func TestSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s := openSpool(t, dir, 1<<20, nil)
	_, m1 := addCapture(t, s, 1, 100, false)
	addCapture(t, s, 2, 100, true)
	w, _ := s.Begin() // never committed: a crash mid-capture
	f, _ := w.Create("heap")
	f.Close()

	s = openSpool(t, dir, 1<<20, nil)
	ids, held := s.Pending()
	if len(ids) != 1 || held[0] {
		t.Fatalf("after restart: pending %v held %v, want the one committed unheld entry", ids, held)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, tmpDir)); len(left) != 0 {
		t.Errorf("uncommitted entries left: %v", left)
	}
	st := fileStore(t, t.TempDir())
	if err := s.Flush(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	readMeta(t, st, m1)
}

func TestReadyOnCommitAndRelease(t *testing.T) {
	s := openSpool(t, t.TempDir(), 1<<20, nil)
	ready := func() bool {
		select {
		case <-s.Ready():
			return true
		default:
			return false
		}
	}
	if ready() {
		t.Error("an empty spool is ready")
	}
	addCapture(t, s, 1, 100, false)
	addCapture(t, s, 2, 100, false)
	if !ready() {
		t.Error("not ready after a commit")
	}
	if ready() {
		t.Error("two commits before a receive are two signals; the uploader flushes both in one pass")
	}
	id, _ := addCapture(t, s, 3, 100, true)
	if ready() {
		t.Error("ready after a held commit")
	}
	if err := s.Release(id, nil); err != nil {
		t.Fatal(err)
	}
	if !ready() {
		t.Error("not ready after Release")
	}
}

func TestBadProfileNames(t *testing.T) {
	s := openSpool(t, t.TempDir(), 1<<20, nil)
	w, _ := s.Begin()
	defer w.Abort()
	for _, name := range []string{"", "../x", "a/b", metadataFile, heldMarker, ".hidden"} {
		if _, err := w.Create(name); err == nil || !strings.Contains(err.Error(), "bad profile name") {
			t.Errorf("Create(%q): %v", name, err)
		}
	}
}
