package watch

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/trigger"
)

// v2Pod builds a /proc tree of a pod on a cgroup v2 host with cgroup
// namespaces (the memory controller is not available on this machine): the
// sidecar (self), a pause process and one app whose cgroup view holds
// memory.current, memory.max, memory.events and memory.stat.
func v2Pod(t *testing.T) (root, cg string) {
	t.Helper()
	root = t.TempDir()
	write := func(rel, content string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	stat := func(pid int, comm string) string {
		return strconv.Itoa(pid) + " (" + comm + ") S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 " + strconv.Itoa(1000+pid) + " 0 0"
	}
	for _, p := range []struct {
		pid          int
		comm, cgroup string
		env          string
	}{
		{1, "pause", "0::/../pause", ""},
		{7, "heapwatch", "0::/", "HEAPWATCH_CONTAINER_NAME=heapwatch\x00"},
		{20, "app", "0::/../app", "PATH=/bin\x00HEAPWATCH_CONTAINER_NAME=app\x00"},
	} {
		dir := strconv.Itoa(p.pid)
		write(dir+"/stat", stat(p.pid, p.comm))
		write(dir+"/comm", p.comm+"\n")
		write(dir+"/cmdline", "/"+p.comm+"\x00")
		write(dir+"/cgroup", p.cgroup+"\n")
		write(dir+"/environ", p.env)
	}
	if err := os.Symlink("7", filepath.Join(root, "self")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "1", "fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	cg = "20/root/sys/fs/cgroup/"
	write(cg+"memory.current", strconv.Itoa(40*mib))
	write(cg+"memory.max", strconv.Itoa(100*mib))
	write(cg+"memory.high", "max\n")
	write(cg+"memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 1\noom_group_kill 0\n")
	write(cg+"memory.stat", "anon 41943040\ninactive_file 0\n")
	return root, filepath.Join(root, cg)
}

// TestFixtureV2 runs the watcher over a fixture pod on cgroup v2: the app
// is found through its cgroup-namespace view, the pause process and the
// sidecar are not watched, a threshold is caught by sampling, and an
// oom_kill increment in memory.events (seen through inotify) is reported
// once.
func TestFixtureV2(t *testing.T) {
	root, cg := v2Pod(t)
	fsys, err := procfs.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	w := New(Options{Rescan: 50 * time.Millisecond, Trigger: trigger.Options{Thresholds: []float64{75}, GrowthFloor: 99}}, fsys, rec, testLogger(t))
	startWatcher(t, w)
	waitFor(t, 5*time.Second, "the app to be watched", func() bool { _, ok := find(w, "app"); return ok })
	if snap := snapshot(w); len(snap) != 1 {
		t.Fatalf("watching %+v, want only the app", snap)
	}
	st, _ := find(w, "app")
	if st.Container.Version != cgroup.V2 || st.Container.Notify != cgroup.ModeInotify || st.Last.Limit != 100*mib || st.Container.PIDs[0] != 20 {
		t.Fatalf("app watched as %+v, last %+v", st.Container, st.Last)
	}
	if err := os.WriteFile(filepath.Join(cg, "memory.current"), []byte(strconv.Itoa(80*mib)), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the threshold capture", func() bool { c, _ := rec.snapshot(); return len(c) > 0 })
	if c, _ := rec.snapshot(); c[0].ev.Kind != "threshold-75" || c[0].ev.Sample.Usage != 80*mib || c[0].ev.Stat["anon"] != 41943040 {
		t.Errorf("capture %+v", c[0].ev)
	}
	events := "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\noom_group_kill 0\n"
	if err := os.WriteFile(filepath.Join(cg, "memory.events"), []byte(events), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the kill", func() bool { _, k := rec.snapshot(); return len(k) > 0 })
	// The process disappears after the kill: no second report.
	if err := os.RemoveAll(filepath.Join(root, "20")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the app to be dropped", func() bool { _, ok := find(w, "app"); return !ok })
	if _, k := rec.snapshot(); len(k) != 1 || k[0].last.Usage != 80*mib {
		t.Errorf("kills %+v, want one with the pre-kill sample", k)
	}
}

// TestFixtureVanishedNearLimit: processes that vanish while usage is near
// the limit, with no oom_kill counter movement, are reported as one kill.
func TestFixtureVanishedNearLimit(t *testing.T) {
	root, cg := v2Pod(t)
	fsys, err := procfs.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	w := startWatcher(t, New(Options{Rescan: 50 * time.Millisecond, Trigger: trigger.Options{Thresholds: []float64{99}}}, fsys, rec, testLogger(t)))
	waitFor(t, 5*time.Second, "the app to be watched", func() bool { _, ok := find(w, "app"); return ok })
	if err := os.WriteFile(filepath.Join(cg, "memory.current"), []byte(strconv.Itoa(95*mib)), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a sample near the limit", func() bool { s, ok := find(w, "app"); return ok && s.Last.Usage == 95*mib })
	if err := os.RemoveAll(filepath.Join(root, "20")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the app to be dropped", func() bool { _, ok := find(w, "app"); return !ok })
	if _, k := rec.snapshot(); len(k) != 1 || k[0].last.Usage != 95*mib || k[0].c.Name != "app" {
		t.Errorf("kills %+v, want one inferred kill with the last sample", k)
	}
}

// TestFixtureUnwatchedReported: a container the sidecar does not watch is
// reported once, with its reason, after two scans agree (a process seen
// between fork and its cgroup is not reported), and dropped from the report
// once it is watched.
func TestFixtureUnwatchedReported(t *testing.T) {
	root, cg := v2Pod(t)
	if err := os.WriteFile(filepath.Join(cg, "memory.max"), []byte("max\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fsys, err := procfs.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var calls [][]Unwatched
	w := New(Options{Rescan: 50 * time.Millisecond, Trigger: trigger.Options{Thresholds: []float64{75}},
		OnUnwatched: func(u []Unwatched) {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, u)
		}}, fsys, &recorder{}, testLogger(t))
	startWatcher(t, w)
	waitFor(t, 5*time.Second, "the unlimited app to be reported", func() bool { return len(w.Unwatched()) == 1 })
	if u := w.Unwatched()[0]; u.Container != "app" || u.Reason != ReasonNoLimit || !slices.Equal(u.PIDs, []int{20}) {
		t.Fatalf("reported %+v, want app with reason %s", u, ReasonNoLimit)
	}
	time.Sleep(200 * time.Millisecond) // more scans: no second report
	mu.Lock()
	if len(calls) != 1 {
		t.Errorf("OnUnwatched called %d times for one unwatched container, want once: %+v", len(calls), calls)
	}
	mu.Unlock()
	// A limit set later is picked up: nothing was cached.
	if err := os.WriteFile(filepath.Join(cg, "memory.max"), []byte(strconv.Itoa(100*mib)), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the app to be watched once it has a limit", func() bool { _, ok := find(w, "app"); return ok })
	waitFor(t, 5*time.Second, "the report to be cleared", func() bool { return len(w.Unwatched()) == 0 })
	mu.Lock()
	defer mu.Unlock()
	if last := calls[len(calls)-1]; len(last) != 0 {
		t.Errorf("last OnUnwatched %+v, want an empty list", last)
	}
}

// TestScanOpensExecedGroupAtOnce: a new group whose process already runs
// the container's own program (it shows HEAPWATCH_CONTAINER_NAME) is
// watched by the first scan that sees it, so discovery takes one interval;
// a group whose only process has the runtime helper's environment (runc
// init, before its mounts and exec) is left for a later scan, neither
// watched nor reported.
func TestScanOpensExecedGroupAtOnce(t *testing.T) {
	root, _ := v2Pod(t)
	dir := filepath.Join(root, "30")
	for name, content := range map[string]string{
		"stat":    "30 (runc:[2:INIT]) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1030 0 0",
		"comm":    "runc:[2:INIT]\n",
		"cmdline": "runc\x00init\x00",
		"cgroup":  "0::/../starting\n",
		"environ": "_LIBCONTAINER_INITPIPE=3\x00",
	} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fsys, err := procfs.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	w := New(Options{Trigger: trigger.Options{Thresholds: []float64{75}}}, fsys, &recorder{}, testLogger(t))
	if w.sampler, err = newSampler(w); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		for _, c := range w.containers {
			c.close()
		}
		wg.Wait()
		w.sampler.close()
	})
	young := w.scan(&wg)
	var names []string
	for _, c := range w.containers {
		names = append(names, c.c.Name)
	}
	if !slices.Equal(names, []string{"app"}) {
		t.Errorf("after the first scan watching %v, want [app]", names)
	}
	if !young {
		t.Error("the group of the process still in runc init was not left for a later scan")
	}
	if len(w.pending) != 0 || len(w.reported) != 0 {
		t.Errorf("verdicts %v %v: a group in set-up must not be reported", w.pending, w.reported)
	}
	// However long runc init lasts (it outlasted settleAge and two scans on
	// a real node), it is no sighting of the container: the group is not
	// watched under its container ID, and waits for the entrypoint's name.
	for key := range w.firstSeen {
		w.firstSeen[key] = w.firstSeen[key].Add(-time.Minute)
	}
	for range 3 {
		w.scan(&wg)
	}
	if len(w.containers) != 1 || len(w.pending) != 0 || len(w.reported) != 0 {
		t.Errorf("watching %d containers, verdicts %v %v: the process in runc init was taken for a container", len(w.containers), w.pending, w.reported)
	}
}
