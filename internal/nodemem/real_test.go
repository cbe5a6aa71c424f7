package nodemem

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/testkit"
)

func TestMain(m *testing.M) {
	testkit.RunChild(map[string]func() int{"allocator": runAllocator})
	os.Exit(m.Run())
}

var held [][]byte

// runAllocator is the child process: each line "N" on its stdin
// allocates and touches N MiB more, then it answers "ok".
func runAllocator() int {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		mib, err := strconv.Atoi(sc.Text())
		if err != nil {
			fmt.Println("bad:", err)
			return 2
		}
		b := make([]byte, mib<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1 // charge every page now
		}
		held = append(held, b)
		fmt.Println("ok")
	}
	return 0
}

// allocator is a child process in a memory cgroup of its own.
type allocator struct {
	dir string
	in  io.Writer
	out *bufio.Scanner
}

// startAllocator starts the test binary as an allocator inside the
// cgroup dir (moved there before it allocates anything of the test's)
// and stops it when the test ends.
func startAllocator(t *testing.T, dir string) *allocator {
	t.Helper()
	cmd := testkit.Child("allocator")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	a := &allocator{dir: dir, in: in, out: bufio.NewScanner(out)}
	a.grow(t, 0) // the child has started and answers: its start-up is done
	return a
}

// grow allocates mib more and waits until the child has touched it.
func (a *allocator) grow(t *testing.T, mib int) {
	t.Helper()
	if _, err := fmt.Fprintln(a.in, mib); err != nil {
		t.Fatal(err)
	}
	if !a.out.Scan() || a.out.Text() != "ok" {
		t.Fatalf("allocator in %s: %q, %v", a.dir, a.out.Text(), a.out.Err())
	}
}

// workingSet is what the agent hands in for a daemon: the working set of
// its service cgroup.
func workingSet(t *testing.T, dir string) uint64 {
	t.Helper()
	m, err := cgroup.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s, err := m.Sample()
	if err != nil {
		t.Fatal(err)
	}
	return s.WorkingSet
}

// makeHierarchy makes a unique cgroup v1 memory hierarchy standing for a
// node's: kubepods/pod<id>/ for a pod and system.slice/leaky.service/ for
// a host daemon's service. It is removed when the test ends (after the
// allocators, registered later, are stopped).
func makeHierarchy(t *testing.T) (root, pod, daemon string) {
	t.Helper()
	const v1 = "/sys/fs/cgroup/memory"
	testkit.NeedsRoot(t, "to make cgroups")
	if _, err := os.Stat(filepath.Join(v1, "memory.usage_in_bytes")); err != nil {
		t.Skipf("needs a cgroup v1 memory hierarchy at %s: %v", v1, err)
	}
	removeStale(t, v1)
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	root = filepath.Join(v1, "heapwatch-nodemem-"+hex.EncodeToString(suffix))
	pod = filepath.Join(root, "kubepods", "pod0a1b")
	daemon = filepath.Join(root, "system.slice", "leaky.service")
	dirs := []string{root, filepath.Dir(pod), pod, filepath.Dir(daemon), daemon}
	t.Cleanup(func() {
		for i := len(dirs) - 1; i >= 0; i-- {
			// An exited task leaves its cgroup a moment after it is reaped.
			testkit.WaitFor(t, 10*time.Second, "cgroup "+dirs[i]+" removed", func() bool {
				err := os.Remove(dirs[i])
				return err == nil || errors.Is(err, os.ErrNotExist)
			})
		}
	})
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root, pod, daemon
}

// removeStale removes the hierarchies of earlier runs that were killed
// before their cleanup ran (their allocators exit when the test's end of
// their stdin closes): empty groups older than ten minutes, so one of a
// run going on right now is never touched.
func removeStale(t *testing.T, v1 string) {
	dirs, _ := filepath.Glob(filepath.Join(v1, "heapwatch-nodemem-*"))
	for _, dir := range dirs {
		if st, err := os.Stat(dir); err != nil || time.Since(st.ModTime()) < 10*time.Minute {
			continue
		}
		var tree []string
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				tree = append(tree, p)
			}
			return nil
		})
		for i := len(tree) - 1; i >= 0; i-- {
			if err := os.Remove(tree[i]); err != nil {
				t.Logf("stale cgroup %s: %v", tree[i], err)
				break
			}
		}
	}
}

// TestRealCgroups: against the real kernel's /proc/meminfo and real
// cgroups, in the exported series, a growing host daemon grows the daemons part (and, while it is
// not watched, the unaccounted part) and not the pods part; a growing pod
// grows the pods part and neither the daemons nor the unaccounted part.
//
// The cgroup parts are exact. The used figure moves with the whole
// machine (and lags it by up to a second), so its effects are asserted on
// rounds: a bug (memory counted in the wrong part) shows in every round,
// other processes' noise only in some, and one clean round proves the
// effect.
func TestRealCgroups(t *testing.T) {
	const (
		rounds  = 4
		growMiB = 128
		grow    = growMiB << 20
	)
	root, podDir, daemonDir := makeHierarchy(t)
	daemon := startAllocator(t, daemonDir)
	pod := startAllocator(t, podDir)

	r, err := NewReader("/proc", root, "")
	if err != nil {
		t.Fatal(err)
	}
	if r.MemoryRoot() != root {
		t.Fatalf("memory hierarchy %s, want %s", r.MemoryRoot(), root)
	}
	c := NewCollector(r, slog.New(slog.NewTextHandler(io.Discard, nil)))
	// read returns the parts with the daemon watched, and the same
	// reading with it not watched.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	// scrape returns the parts as exported, and the daemon's series.
	scrape := func() (p Parts, daemon float64) {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		parts := map[string]*uint64{PartTotal: &p.Total, PartUsed: &p.Used, PartPods: &p.Pods,
			PartDaemons: &p.Daemons, PartKernel: &p.Kernel, PartUnaccounted: &p.Unaccounted}
		seen := 0
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				switch mf.GetName() {
				case MetricNode:
					*parts[m.GetLabel()[0].GetValue()] = uint64(m.GetGauge().GetValue())
					seen++
				case MetricDaemon:
					daemon = m.GetGauge().GetValue()
				}
			}
		}
		if seen != len(parts) {
			t.Fatalf("%d node parts exported, want %d (pods found?)", seen, len(parts))
		}
		return p, daemon
	}
	// read scrapes with the daemon watched (its latest working set handed
	// in, as the agent does at each sample), then with it not watched.
	read := func() (watched, unwatched Parts) {
		t.Helper()
		ws := workingSet(t, daemonDir)
		c.SetDaemon("leaky", ws)
		watched, daemon := scrape()
		if daemon != float64(ws) {
			t.Fatalf("%s{daemon=\"leaky\"} = %v, want %d", MetricDaemon, daemon, ws)
		}
		c.RemoveDaemon("leaky")
		unwatched, _ = scrape()
		return watched, unwatched
	}
	delta := func(a, b uint64) int64 { return int64(b) - int64(a) }
	// settle reads again until the kernel's used figure shows most of the
	// growth: /proc/meminfo folds the per-CPU page counters in every
	// vm.stat_interval (1 s), so it can lag a fresh allocation.
	settle := func(before Parts) (watched, unwatched Parts) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for {
			watched, unwatched = read()
			if delta(before.Used, watched.Used) >= grow/2 || time.Now().After(deadline) {
				return watched, unwatched
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	still := func(a, b uint64) bool { d := delta(a, b); return d <= 1<<20 && d >= -1<<20 }

	var daemonUnaccounted, podUnaccounted bool
	for round := range rounds {
		before, beforeUnwatched := read()
		daemon.grow(t, growMiB)
		after, afterUnwatched := settle(before)
		t.Logf("round %d, daemon +%d MiB: daemons %+d, pods %+d, unaccounted if unwatched %+d, used %+d bytes", round, growMiB,
			delta(before.Daemons, after.Daemons), delta(before.Pods, after.Pods),
			delta(beforeUnwatched.Unaccounted, afterUnwatched.Unaccounted), delta(before.Used, after.Used))
		if d := delta(before.Daemons, after.Daemons); d < grow {
			t.Errorf("daemon grew %d bytes, the daemons part only %d", grow, d)
		}
		if !still(before.Pods, after.Pods) {
			t.Errorf("daemon grew, the pods part moved %d bytes", delta(before.Pods, after.Pods))
		}
		if delta(beforeUnwatched.Unaccounted, afterUnwatched.Unaccounted) >= grow/2 {
			daemonUnaccounted = true
		}

		before, _ = read()
		pod.grow(t, growMiB)
		after, _ = settle(before)
		t.Logf("round %d, pod +%d MiB: pods %+d, daemons %+d, unaccounted %+d, used %+d bytes", round, growMiB,
			delta(before.Pods, after.Pods), delta(before.Daemons, after.Daemons),
			delta(before.Unaccounted, after.Unaccounted), delta(before.Used, after.Used))
		if d := delta(before.Pods, after.Pods); d < grow {
			t.Errorf("pod grew %d bytes, the pods part only %d", grow, d)
		}
		if !still(before.Daemons, after.Daemons) {
			t.Errorf("pod grew, the daemons part moved %d bytes", delta(before.Daemons, after.Daemons))
		}
		// Used grew with the pod: unaccounted stays put.
		if delta(before.Used, after.Used) >= grow/2 && delta(before.Unaccounted, after.Unaccounted) < grow/2 {
			podUnaccounted = true
		}
	}
	if !daemonUnaccounted {
		t.Errorf("in none of %d rounds did an unwatched daemon's growth of %d bytes show as unaccounted", rounds, grow)
	}
	if !podUnaccounted {
		t.Errorf("in none of %d rounds did a pod's growth of %d bytes show in used and stay out of unaccounted", rounds, grow)
	}
}
