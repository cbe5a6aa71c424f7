package ship

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/metrics"
	"github.com/heapwatch/heapwatch/internal/spool"
	"github.com/heapwatch/heapwatch/internal/testkit"
	"github.com/heapwatch/heapwatch/store"
	"github.com/heapwatch/heapwatch/store/s3test"
)

var fastBackoff = Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}

var t0 = time.Date(2026, 12, 3, 2, 0, 0, 0, time.UTC)

func openSpool(t *testing.T, m *metrics.Metrics) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(t.TempDir(), spool.Options{MaxBytes: 1 << 20, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// addCapture commits an entry with a heap profile of 100 bytes.
func addCapture(t *testing.T, sp *spool.Spool, second int, held bool) (string, *capture.Metadata) {
	t.Helper()
	meta := &capture.Metadata{SchemaVersion: capture.SchemaVersion, Namespace: "ns", Pod: "pod", Container: "app",
		Trigger: "threshold-60", CapturedAt: t0.Add(time.Duration(second) * time.Second)}
	meta.ID = meta.Name().ID()
	w, err := sp.Begin()
	if err != nil {
		t.Fatal(err)
	}
	f, err := w.Create("heap")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(bytes.Repeat([]byte{byte(second)}, 100)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	meta.Profiles = []capture.Profile{{Name: "heap", Key: meta.Name().ProfileKey("heap"), Bytes: 100}}
	id, err := w.Commit(meta, held)
	if err != nil {
		t.Fatal(err)
	}
	return id, meta
}

// stored reports whether the capture's metadata is in the storage at rawURL.
func stored(t *testing.T, rawURL string, m *capture.Metadata) bool {
	t.Helper()
	st, err := store.Open(context.Background(), rawURL)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := st.Get(context.Background(), m.Name().MetadataKey())
	if errors.Is(err, store.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	got, err := capture.DecodeMetadata(b)
	if err != nil {
		t.Fatal(err)
	}
	return got.ID == m.ID
}

func pending(sp *spool.Spool) int {
	ids, _ := sp.Pending()
	return len(ids)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, 10*time.Second, what, cond)
}

// blockedStorage is a file:// URL whose directory is a regular file: every
// Put fails for real until unblock removes it.
func blockedStorage(t *testing.T) (rawURL string, unblock func()) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "captures")
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return "file://" + dir, func() {
		if err := os.Remove(dir); err != nil {
			t.Fatal(err)
		}
	}
}

func logger(buf *testkit.Buffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func stop(t *testing.T, sh *Shipper) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return sh.Stop(ctx)
}

func TestShipsEachReadyEntry(t *testing.T) {
	sp := openSpool(t, nil)
	rawURL := "file://" + t.TempDir()
	_, before := addCapture(t, sp, 1, false) // spooled before the start: drained at once
	sh := Start(sp, Options{Storage: rawURL, Backoff: fastBackoff})
	waitFor(t, "the spooled capture stored", func() bool { return stored(t, rawURL, before) })
	_, after := addCapture(t, sp, 2, false)
	waitFor(t, "a new commit stored", func() bool { return stored(t, rawURL, after) })
	id, held := addCapture(t, sp, 3, true)
	if err := sp.Release(id, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a released capture stored", func() bool { return stored(t, rawURL, held) })
	if err := stop(t, sh); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if n := pending(sp); n != 0 {
		t.Errorf("%d entries left", n)
	}
}

func TestRetriesUntilStorageWorks(t *testing.T) {
	m := metrics.New()
	sp := openSpool(t, m)
	rawURL, unblock := blockedStorage(t)
	var logs testkit.Buffer
	_, meta := addCapture(t, sp, 1, false)
	sh := Start(sp, Options{Storage: rawURL, Log: logger(&logs), Backoff: fastBackoff})
	waitFor(t, "three failed passes", func() bool { return strings.Count(logs.String(), "storing captures failed") >= 3 })
	if n := pending(sp); n != 1 {
		t.Fatalf("entry lost while the storage fails: %d pending", n)
	}
	unblock()
	waitFor(t, "the capture stored once the storage works", func() bool { return stored(t, rawURL, meta) })
	if err := stop(t, sh); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

// An S3 storage whose client cannot even be made (a named AWS profile that
// does not exist) is opened again until it can.
func TestOpenRetriedUntilItWorks(t *testing.T) {
	srv := s3test.Start(t)
	srv.Setenv(t)
	t.Setenv("AWS_PROFILE", "heapwatch-no-such-profile")
	sp := openSpool(t, nil)
	var logs testkit.Buffer
	_, meta := addCapture(t, sp, 1, false)
	sh := Start(sp, Options{Storage: srv.URL("ship"), Log: logger(&logs), Backoff: fastBackoff})
	waitFor(t, "two failed opens", func() bool { return strings.Count(logs.String(), "cannot open the storage") >= 2 })
	os.Setenv("AWS_PROFILE", "") // t.Setenv restores it at the end
	waitFor(t, "the capture stored once the storage opens", func() bool { return pending(sp) == 0 })
	if !stored(t, srv.URL("ship"), meta) {
		t.Error("capture not in the bucket")
	}
	if err := stop(t, sh); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

// The S3-compatible server goes away and comes back: captures wait in the
// spool and are stored once it answers again.
func TestS3ServerDownAndBack(t *testing.T) {
	srv := s3test.Start(t)
	srv.Setenv(t)
	rawURL := srv.URL("ship")
	sp := openSpool(t, nil)
	var logs testkit.Buffer
	sh := Start(sp, Options{Storage: rawURL, Log: logger(&logs), Backoff: fastBackoff})
	_, first := addCapture(t, sp, 1, false)
	waitFor(t, "the first capture stored", func() bool { return pending(sp) == 0 })
	srv.Stop()
	_, second := addCapture(t, sp, 2, false)
	waitFor(t, "a failed pass", func() bool { return strings.Contains(logs.String(), "storing captures failed") })
	if n := pending(sp); n != 1 {
		t.Fatalf("%d pending while the server is down, want 1", n)
	}
	srv.Start()
	waitFor(t, "the second capture stored", func() bool { return pending(sp) == 0 })
	for _, m := range []*capture.Metadata{first, second} {
		if !stored(t, rawURL, m) {
			t.Errorf("%s not in the bucket", m.ID)
		}
	}
	if err := stop(t, sh); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

// Stop stores what the background loop could not, within the deadline.
func TestStopFlushesOnceMore(t *testing.T) {
	sp := openSpool(t, nil)
	rawURL, unblock := blockedStorage(t)
	var logs testkit.Buffer
	_, meta := addCapture(t, sp, 1, false)
	// After one failure the loop waits an hour: only Stop can store it.
	sh := Start(sp, Options{Storage: rawURL, Log: logger(&logs), Backoff: Backoff{Initial: time.Hour, Max: time.Hour}})
	waitFor(t, "a failed pass", func() bool { return strings.Contains(logs.String(), "storing captures failed") })
	unblock()
	if err := stop(t, sh); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if !stored(t, rawURL, meta) || pending(sp) != 0 {
		t.Errorf("after Stop: stored %v, %d pending", stored(t, rawURL, meta), pending(sp))
	}
}

func TestStopLeavesWhatCannotBeStored(t *testing.T) {
	sp := openSpool(t, nil)
	rawURL, _ := blockedStorage(t)
	id, _ := addCapture(t, sp, 1, false)
	sh := Start(sp, Options{Storage: rawURL, Backoff: fastBackoff})
	if err := stop(t, sh); err == nil {
		t.Error("Stop = nil although the storage refuses every Put")
	}
	if ids, _ := sp.Pending(); !slices.Equal(ids, []string{id}) {
		t.Errorf("pending %v after Stop, want %v kept for the next start", ids, id)
	}
}

// TestShutdown: running captures get half the grace period; one that
// commits meanwhile is stored by the final pass, and Shutdown says what it
// left (nothing).
func TestShutdown(t *testing.T) {
	sp := openSpool(t, nil)
	rawURL := "file://" + t.TempDir()
	var logs testkit.Buffer
	// After one pass the loop waits an hour: only the final pass can store
	// what commits while captures end.
	sh := Start(sp, Options{Storage: rawURL, Log: logger(&logs), Backoff: Backoff{Initial: time.Hour, Max: time.Hour}})
	var meta *capture.Metadata
	var gotWait time.Duration
	sh.Shutdown(4*time.Second, func(wait time.Duration) {
		gotWait = wait
		_, meta = addCapture(t, sp, 1, false)
	})
	if gotWait != 2*time.Second {
		t.Errorf("running captures got %v, want half the grace (2s)", gotWait)
	}
	if !stored(t, rawURL, meta) || pending(sp) != 0 {
		t.Errorf("after Shutdown: stored %v, %d pending", stored(t, rawURL, meta), pending(sp))
	}
	if !strings.Contains(logs.String(), `"spooled":0`) {
		t.Errorf("Shutdown did not log what it left:\n%s", logs.String())
	}
}

// panicOnce is the real file store, whose first Put panics.
type panicOnce struct {
	store.Store
	panicked *atomic.Bool
}

func (p panicOnce) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if p.panicked.CompareAndSwap(false, true) {
		panic("a bug in a storage client")
	}
	return p.Store.Put(ctx, key, r, size)
}

func TestPanicInAPassIsRecovered(t *testing.T) {
	sp := openSpool(t, nil)
	rawURL := "file://" + t.TempDir()
	var logs testkit.Buffer
	var panicked atomic.Bool
	var opens atomic.Int32
	sh := newShipper(sp, Options{Storage: rawURL, Log: logger(&logs), Backoff: fastBackoff})
	sh.open = func(ctx context.Context, rawURL string) (store.Store, error) {
		opens.Add(1)
		st, err := store.Open(ctx, rawURL)
		return panicOnce{st, &panicked}, err
	}
	sh.start()
	_, meta := addCapture(t, sp, 1, false)
	waitFor(t, "the capture stored after the panic", func() bool { return stored(t, rawURL, meta) })
	if !panicked.Load() || !strings.Contains(logs.String(), "an upload pass panicked") {
		t.Errorf("no panic seen; logs:\n%s", logs.String())
	}
	if n := opens.Load(); n != 2 {
		t.Errorf("storage opened %d times, want 2 (again after the panic)", n)
	}
	if err := stop(t, sh); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

func TestBackoff(t *testing.T) {
	b := Backoff{Initial: time.Second, Max: 5 * time.Second}
	var d time.Duration
	var got []time.Duration
	for range 5 {
		d = b.next(d)
		got = append(got, d)
	}
	if want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}; !slices.Equal(got, want) {
		t.Errorf("backoff %v, want %v", got, want)
	}
	for range 100 {
		if j := jitter(4 * time.Second); j < 2*time.Second || j > 4*time.Second {
			t.Fatalf("jitter(4s) = %v, want within [2s, 4s]", j)
		}
	}
}
