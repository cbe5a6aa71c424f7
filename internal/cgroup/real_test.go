package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/internal/cgroup/cgrouptest"
	"github.com/heapwatch/heapwatch/internal/podsim"
	"github.com/heapwatch/heapwatch/internal/procfs"
)

func TestMain(m *testing.M) {
	cgrouptest.RunIfChild()
	os.Exit(m.Run())
}

func openView(t *testing.T, pid int) *Memory {
	t.Helper()
	fsys, err := procfs.NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	dir, v, err := Locate(fsys.Proc(pid))
	if err != nil {
		t.Fatal(err)
	}
	want, wantV := fmt.Sprintf("/proc/%d/root/sys/fs/cgroup/memory", pid), V1
	if onV2() {
		// The container's own cgroup namespace root, mounted at /sys/fs/cgroup.
		want, wantV = fmt.Sprintf("/proc/%d/root/sys/fs/cgroup", pid), V2
	}
	if dir != want || v != wantV {
		t.Fatalf("Locate = %s, %d; want the container view %s, %d", dir, v, want, wantV)
	}
	m, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// onV2 reports a cgroup v2 kernel: the tests then run in the VM of
// e2e/v2, and expect what v2 offers instead of v1's eventfd.
func onV2() bool { return podsim.CgroupVersion() == 2 }

// oomNotice is the notice kind an OOM kill produces.
func oomNotice() string {
	if onV2() {
		return NoticeEvents
	}
	return NoticeOOM
}

func waitNotice(t *testing.T, n *Notifier, kind string, within time.Duration) Notice {
	t.Helper()
	timeout := time.After(within)
	for {
		select {
		case nt := <-n.C():
			if nt.Kind == kind {
				return nt
			}
		case <-timeout:
			t.Fatalf("no %s notice within %v", kind, within)
		}
	}
}

func TestRealThresholdNotification(t *testing.T) {
	const limit, level = 64 * mib, 24 * mib
	app := cgrouptest.Start(t, "cgtest", limit, false, cgrouptest.Alloc{StepMiB: 2, Every: 20 * time.Millisecond, TotalMiB: 40})
	m := openView(t, app.PID)
	if _, ok, err := m.Pressure(); !onV2() && (ok || err != nil) {
		t.Errorf("v1 group: Pressure ok %v, %v; want none (v1 has no per-group PSI)", ok, err)
	}
	before, err := m.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if before.Limit != limit || before.Usage >= level || before.Usage == 0 {
		t.Fatalf("before: %+v; want limit %d and usage below %d", before, limit, level)
	}
	n := m.Notify()
	t.Cleanup(func() { n.Close() })
	if onV2() {
		checkV2Growth(t, m, n, app, level)
		return
	}
	if n.Mode() != ModeEventfd || n.Reason() != nil {
		t.Fatalf("mode %s (%v), want eventfd", n.Mode(), n.Reason())
	}
	// A level the allocation never reaches, then the real one: replacing
	// the set must keep notifications working.
	if err := n.SetThresholds([]uint64{60 * mib}); err != nil {
		t.Fatal(err)
	}
	if err := n.SetThresholds([]uint64{level, 60 * mib}); err != nil {
		t.Fatal(err)
	}
	app.Go(t)
	nt := waitNotice(t, n, NoticeThreshold, 20*time.Second)
	after, err := m.Sample()
	if err != nil {
		t.Fatal(err)
	}
	// The same open files now show the growth (pread re-reads, no re-open).
	if after.Usage < level {
		t.Errorf("notified at %v but usage %d is below the threshold %d", nt.At, after.Usage, level)
	}
	if after.WorkingSet == 0 || after.WorkingSet > after.Usage || after.MaxUsage < after.Usage {
		t.Errorf("inconsistent sample %+v", after)
	}
}

func TestRealOOMKill(t *testing.T) {
	const limit = 32 * mib
	app := cgrouptest.Start(t, "cgtest", limit, false, cgrouptest.Alloc{StepMiB: 4, Every: 10 * time.Millisecond, TotalMiB: 256})
	m := openView(t, app.PID)
	n := m.Notify()
	t.Cleanup(func() { n.Close() })
	app.Go(t)
	waitNotice(t, n, oomNotice(), 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if code, err := app.Container.Wait(ctx); err != nil || code != 128+int(syscall.SIGKILL) {
		t.Fatalf("exit %d, %v; want SIGKILL", code, err)
	}
	// The process and its root are gone; the open files still read the
	// group until it is removed.
	s, err := m.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if s.OOMKills < 1 {
		t.Errorf("OOMKills = %d after an OOM kill", s.OOMKills)
	}
	if err := app.Pod.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Sample(); !errors.Is(err, ErrGone) {
		t.Errorf("after rmdir: got %v, want ErrGone", err)
	}
	if _, err := m.Stat(); !errors.Is(err, ErrGone) {
		t.Errorf("Stat after rmdir: got %v, want ErrGone", err)
	}
}

func TestRealReadOnlyViewFallsBackToPolling(t *testing.T) {
	const limit = 64 * mib
	app := cgrouptest.Start(t, "cgtest", limit, true, cgrouptest.Alloc{StepMiB: 1, Every: time.Millisecond, TotalMiB: 1})
	m := openView(t, app.PID)
	n := m.Notify()
	t.Cleanup(func() { n.Close() })
	if onV2() {
		// inotify needs no write access: a read-only v2 view keeps kernel
		// notifications.
		if n.Mode() != ModeInotify || n.Reason() != nil {
			t.Errorf("v2 read-only view: mode %s (%v), want inotify", n.Mode(), n.Reason())
		}
		if s, err := m.Sample(); err != nil || s.Limit != limit {
			t.Errorf("Sample through a read-only view = %+v, %v", s, err)
		}
		return
	}
	if n.Mode() != ModePoll || !errors.Is(n.Reason(), syscall.EROFS) {
		t.Errorf("mode %s, reason %v; want poll because of EROFS", n.Mode(), n.Reason())
	}
	if err := n.SetThresholds([]uint64{32 * mib}); err != nil || n.Mode() != ModePoll {
		t.Errorf("SetThresholds in poll mode: %v, mode %s", err, n.Mode())
	}
	s, err := m.Sample()
	if err != nil || s.Limit != limit {
		t.Errorf("Sample through a read-only view = %+v, %v", s, err)
	}
}

// checkV2Growth is the v2 side of TestRealThresholdNotification: v2 has no
// usage thresholds, so memory.events is watched with inotify and growth is
// seen by sampling; the working set is memory.current minus inactive_file,
// as the kubelet computes it on v2.
func checkV2Growth(t *testing.T, m *Memory, n *Notifier, app *cgrouptest.App, level uint64) {
	t.Helper()
	if n.Mode() != ModeInotify || n.Reason() != nil {
		t.Fatalf("mode %s (%v), want inotify", n.Mode(), n.Reason())
	}
	if err := n.SetThresholds([]uint64{level}); err != nil || n.Mode() != ModeInotify {
		t.Fatalf("SetThresholds on v2: %v, mode %s; want a no-op", err, n.Mode())
	}
	app.Go(t)
	deadline := time.Now().Add(20 * time.Second)
	var s Sample
	for {
		var err error
		if s, err = m.Sample(); err != nil {
			t.Fatal(err)
		}
		if s.Usage >= level {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage %d never reached %d", s.Usage, level)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stat, err := m.Stat()
	if err != nil {
		t.Fatal(err)
	}
	inactive, ok := stat["inactive_file"]
	if !ok {
		t.Fatalf("v2 memory.stat without inactive_file: %v", stat)
	}
	// Sample after Stat: with no stat refresh policy, Sample re-reads
	// memory.stat, so both see the same inactive_file unless the kernel
	// moved file pages in between (the allocator touches no files).
	s, err = m.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if want := s.Usage - min(s.Usage, inactive); s.WorkingSet != want {
		t.Errorf("working set %d, want memory.current %d - inactive_file %d = %d", s.WorkingSet, s.Usage, inactive, want)
	}
	if _, ok, err := m.Pressure(); err != nil || !ok {
		t.Errorf("v2 memory.pressure through the container view: ok %v, %v; want PSI", ok, err)
	}
	if s.MaxUsage != 0 || s.Limit == 0 {
		t.Errorf("v2 sample %+v: want no v1 peak and the memory.max limit", s)
	}
}
