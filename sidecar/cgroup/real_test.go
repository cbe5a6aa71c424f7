package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/sidecar/podsim"
	"github.com/heapwatch/heapwatch/sidecar/procfs"
)

// The test binary doubles as the allocating process of the real-kernel
// tests: with allocEnv set it waits for the go file, allocates
// step MiB every interval up to total MiB, then sleeps until killed.
const allocEnv = "HEAPWATCH_CGROUP_TEST_ALLOC" // "step,every,total,gofile"

var hold [][]byte

func TestMain(m *testing.M) {
	if spec := os.Getenv(allocEnv); spec != "" {
		os.Exit(allocate(spec))
	}
	os.Exit(m.Run())
}

func allocate(spec string) int {
	f := strings.Split(spec, ",")
	if len(f) != 4 {
		fmt.Fprintln(os.Stderr, "bad alloc spec:", spec)
		return 2
	}
	step, err1 := strconv.Atoi(f[0])
	every, err2 := time.ParseDuration(f[1])
	total, err3 := strconv.Atoi(f[2])
	goFile := f[3]
	if err := errors.Join(err1, err2, err3); err != nil {
		fmt.Fprintln(os.Stderr, "bad alloc spec:", spec, err)
		return 2
	}
	for {
		if _, err := os.Stat(goFile); err == nil {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	for done := 0; done < total; done += step {
		b := make([]byte, step<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1 // touch every page so it is charged now
		}
		hold = append(hold, b)
		time.Sleep(every)
	}
	select {}
}

type allocSpec struct {
	limit    int64
	readOnly bool
	stepMiB  int
	every    time.Duration
	totalMiB int
}

// allocPod starts an emulated pod whose one container is this test binary
// in allocator mode. It returns the container, its host PID and a function
// that starts the allocation.
func allocPod(t *testing.T, s allocSpec) (*podsim.Pod, *podsim.Container, int, func()) {
	t.Helper()
	if err := podsim.Supported(); err != nil {
		t.Skipf("needs root and a writable cgroup v1 memory hierarchy: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	goFile := filepath.Join(t.TempDir(), "go")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := podsim.Start(ctx, podsim.Spec{Name: "cgtest", Containers: []podsim.ContainerSpec{{
		Name: "alloc", Argv: []string{exe, "-test.run=^$"}, MemoryLimit: s.limit, ReadOnlyCgroup: s.readOnly,
		Env:    []string{fmt.Sprintf("%s=%d,%v,%d,%s", allocEnv, s.stepMiB, s.every, s.totalMiB, goFile)},
		Stderr: os.Stderr,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	c := p.Container("alloc")
	pid, err := c.PID()
	if err != nil {
		t.Fatal(err)
	}
	// The view is complete once the container's script has exec'd us.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if target, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); target == exe {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container process %d did not exec %s", pid, exe)
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := func() {
		if err := os.WriteFile(goFile, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p, c, pid, start
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
	if want := fmt.Sprintf("/proc/%d/root/sys/fs/cgroup/memory", pid); dir != want || v != V1 {
		t.Fatalf("Locate = %s, %d; want the container view %s", dir, v, want)
	}
	m, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
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
	_, _, pid, start := allocPod(t, allocSpec{limit: limit, stepMiB: 2, every: 20 * time.Millisecond, totalMiB: 40})
	m := openView(t, pid)
	before, err := m.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if before.Limit != limit || before.Usage >= level || before.Usage == 0 {
		t.Fatalf("before: %+v; want limit %d and usage below %d", before, limit, level)
	}
	n, err := m.Notify()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
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
	start()
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
	p, c, pid, start := allocPod(t, allocSpec{limit: limit, stepMiB: 4, every: 10 * time.Millisecond, totalMiB: 256})
	m := openView(t, pid)
	n, err := m.Notify()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	start()
	waitNotice(t, n, NoticeOOM, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if code, err := c.Wait(ctx); err != nil || code != 128+int(syscall.SIGKILL) {
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
	if err := p.Close(); err != nil {
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
	_, _, pid, _ := allocPod(t, allocSpec{limit: limit, readOnly: true, stepMiB: 1, every: time.Millisecond, totalMiB: 1})
	m := openView(t, pid)
	n, err := m.Notify()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
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
