package cgroup

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// copyTree copies a fixture directory so a test can modify it.
func copyTree(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	return dst
}

// inotifyFixture opens a copy of a v2 fixture group with notifications.
func inotifyFixture(t *testing.T) (string, *Memory, *Notifier) {
	t.Helper()
	dir := copyTree(t, "testdata/v2/limited")
	m, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	n := m.Notify()
	t.Cleanup(func() { n.Close() })
	if n.Mode() != ModeInotify {
		t.Fatalf("mode %s (%v), want inotify", n.Mode(), n.Reason())
	}
	return dir, m, n
}

func TestV2InotifyOnMemoryEvents(t *testing.T) {
	dir, m, n := inotifyFixture(t)
	// v2 has no arbitrary thresholds: a no-op, not an error.
	if err := n.SetThresholds([]uint64{1 << 20}); err != nil {
		t.Fatal(err)
	}
	// The kernel modifies memory.events when a counter moves; a write to
	// the fixture file raises the same inotify event.
	events := "low 0\nhigh 0\nmax 13\noom 4\noom_kill 2\noom_group_kill 0\n"
	if err := os.WriteFile(filepath.Join(dir, "memory.events"), []byte(events), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case nt := <-n.C():
		if nt.Kind != NoticeEvents {
			t.Errorf("notice kind %s, want %s", nt.Kind, NoticeEvents)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no notice after memory.events changed")
	}
	s, err := m.Sample()
	if err != nil || s.OOMKills != 2 || s.OOMs != 4 {
		t.Errorf("Sample after the change = %+v, %v", s, err)
	}
	if err := n.Close(); err != nil {
		t.Error(err)
	}
}

func TestV2MissingEventsFallsBackToPolling(t *testing.T) {
	m, err := Open("testdata/v2/missing-optional")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	n := m.Notify()
	defer n.Close()
	if n.Mode() != ModePoll || n.Reason() == nil {
		t.Fatalf("Notify without memory.events: mode %s, reason %v; want polling with the reason", n.Mode(), n.Reason())
	}
}

// TestV2WatchRemovedFallsBackToPolling: when the kernel removes the inotify
// watch (IN_IGNORED: the watched file or its cgroup is gone, or the watch
// was removed), the notifier says so and is in poll mode, so the caller
// stops waiting for notices. The removal is real (inotify_rm_watch on the
// notifier's own descriptor, so the kernel sends IN_IGNORED); only who
// removes it is the test.
func TestV2WatchRemovedFallsBackToPolling(t *testing.T) {
	_, _, n := inotifyFixture(t)
	rc, err := n.oom.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var rmErr error
	if err := rc.Control(func(fd uintptr) { _, rmErr = unix.InotifyRmWatch(int(fd), 1) }); err != nil || rmErr != nil {
		t.Fatalf("inotify_rm_watch: %v %v", err, rmErr)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case nt := <-n.C():
			if nt.Kind != NoticeFailed {
				continue // the removal may first show as a modification
			}
			if n.Mode() != ModePoll || n.Reason() == nil {
				t.Fatalf("after %s: mode %s, reason %v; want poll with a reason", nt.Kind, n.Mode(), n.Reason())
			}
			return
		case <-deadline:
			t.Fatalf("no %s notice after the watch was removed; mode %s", NoticeFailed, n.Mode())
		}
	}
}
