package watch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/cgroup/cgrouptest"
	"github.com/heapwatch/heapwatch/internal/podsim"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/testkit"
	"github.com/heapwatch/heapwatch/internal/trigger"
)

const mib = 1 << 20

func TestMain(m *testing.M) {
	cgrouptest.RunIfChild()
	os.Exit(m.Run())
}

// recorder is a Handler that records every call with the time it was made.
type recorder struct {
	mu         sync.Mutex
	captures   []captured
	kills      []kill
	suppressed []string
}

type captured struct {
	ev Event
	at time.Time
}

type kill struct {
	c    Container
	at   time.Time
	last Sample
}

func (r *recorder) Capture(ev Event) {
	at := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.captures = append(r.captures, captured{ev, at})
}

func (r *recorder) OOMKilled(c Container, at time.Time, last Sample) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kills = append(r.kills, kill{c, at, last})
}

func (r *recorder) Suppressed(c Container, kind, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.suppressed = append(r.suppressed, kind+":"+why)
}

func (r *recorder) snapshot() ([]captured, []kill) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.captures), slices.Clone(r.kills)
}

func uniqueName(prefix string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// runWatcher runs a watcher on the real /proc until the test ends.
func runWatcher(t testing.TB, o Options, h Handler) *Watcher {
	t.Helper()
	fsys, err := procfs.NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	return startWatcher(t, New(o, fsys, h, testLogger(t)))
}

// startWatcher runs w until the test ends.
func startWatcher(t testing.TB, w *Watcher) *Watcher {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return w
}

var waitFor = testkit.WaitFor

// Status is a watched container's latest state, as the test sees it.
type Status struct {
	Container Container
	Last      Sample
}

// snapshot is what the watcher is watching now, by container name.
func snapshot(w *Watcher) []Status {
	w.mu.Lock()
	list := make([]*watched, 0, len(w.containers))
	for _, c := range w.containers {
		list = append(list, c)
	}
	w.mu.Unlock()
	out := make([]Status, 0, len(list))
	for _, c := range list {
		c.mu.Lock()
		ct := c.c
		ct.PIDs = slices.Clone(ct.PIDs)
		out = append(out, Status{Container: ct, Last: c.last})
		c.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Container.Name, b.Container.Name) })
	return out
}

func find(w *Watcher, name string) (Status, bool) {
	for _, s := range snapshot(w) {
		if s.Container.Name == name {
			return s, true
		}
	}
	return Status{}, false
}

// TestRealThresholdAndOOMKill watches a real process in a real v1 memory
// cgroup, read through its bind-mounted container view, allocating until
// the kernel OOM-kills it: with kernel notifications (writable view) and
// with polling only (read-only view).
func TestRealThresholdAndOOMKill(t *testing.T) {
	for _, tt := range []struct {
		name     string
		readOnly bool
		mode     cgroup.Mode
	}{{"eventfd", false, cgroup.ModeEventfd}, {"read-only view polls", true, cgroup.ModePoll}} {
		t.Run(tt.name, func(t *testing.T) {
			const limit = 64 * mib
			name := uniqueName("wt")
			app := cgrouptest.Start(t, name, limit, tt.readOnly, cgrouptest.Alloc{StepMiB: 2, Every: 20 * time.Millisecond, TotalMiB: 256})
			rec := &recorder{}
			w := runWatcher(t, Options{Containers: []string{name}, Rescan: 200 * time.Millisecond,
				Trigger: trigger.Options{Thresholds: []float64{50}, Interval: 100 * time.Millisecond}}, rec)
			waitFor(t, 5*time.Second, "the container to be watched", func() bool {
				s, ok := find(w, name)
				return ok && slices.Contains(s.Container.PIDs, app.PID)
			})
			st, _ := find(w, name)
			if st.Container.Notify != tt.mode || st.Last.Limit != limit || st.Container.Version != cgroup.V1 {
				t.Fatalf("watching %+v with last sample %+v; want mode %s and limit %d", st.Container, st.Last, tt.mode, limit)
			}
			app.Go(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if code, err := app.Container.Wait(ctx); err != nil || code != 128+int(syscall.SIGKILL) {
				t.Fatalf("app exit %d, %v; want an OOM kill", code, err)
			}
			waitFor(t, 5*time.Second, "OOMKilled", func() bool { _, k := rec.snapshot(); return len(k) > 0 })
			time.Sleep(1500 * time.Millisecond) // a second report would come within this
			caps, kills := rec.snapshot()
			if len(kills) != 1 {
				t.Fatalf("OOMKilled called %d times, want once: %+v", len(kills), kills)
			}
			if k := kills[0]; k.c.Name != name || k.last.Usage < limit/2 || k.at.IsZero() {
				t.Errorf("kill report %+v: want the container and a pre-kill sample above half the limit", k)
			}
			var th *captured
			for i := range caps {
				if caps[i].ev.Kind == "threshold-50" {
					th = &caps[i]
				}
			}
			if th == nil {
				t.Fatalf("no threshold-50 capture among %d captures", len(caps))
			}
			ev := th.ev
			if ev.Sample.WorkingSet < limit/2 || ev.Container.Name != name || ev.Hold || len(ev.Stat) == 0 || ev.Reason == "" {
				t.Errorf("threshold event %+v", ev)
			}
			if lat := th.at.Sub(ev.DetectedAt); lat < 0 || lat > 50*time.Millisecond {
				t.Errorf("handler called %v after the crossing was detected; want within 50ms", lat)
			}
			t.Logf("%d captures; threshold-50 detected->handler %v; kill seen %v after the threshold", len(caps), th.at.Sub(ev.DetectedAt), kills[0].at.Sub(ev.DetectedAt))
		})
	}
}

// TestRealDiscovery: a container started later is picked up within the
// rescan interval, and the sidecar's own process and cgroup are never
// watched even when they would qualify.
func TestRealDiscovery(t *testing.T) {
	if err := podsim.Supported(); err != nil {
		t.Skipf("needs root and a writable cgroup v1 memory hierarchy: %v", err)
	}
	fsys, err := procfs.NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	cgs, err := fsys.Proc(os.Getpid()).Cgroups()
	if err != nil {
		t.Fatal(err)
	}
	selfPath, _, _ := procfs.MemoryCgroup(cgs)
	selfName := procfs.ContainerID(selfPath)

	a, b := uniqueName("wd"), uniqueName("wd")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pod, err := podsim.Start(ctx, podsim.Spec{Name: "discovery", Containers: []podsim.ContainerSpec{
		{Name: a, Argv: []string{"sleep", "60"}, MemoryLimit: 64 * mib},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pod.Close(); err != nil {
			t.Error(err)
		}
	})
	const rescan = 200 * time.Millisecond
	rec := &recorder{}
	// The absolute threshold makes unlimited cgroups watchable, so the
	// sidecar's own (unlimited) cgroup would be watched if not excluded.
	w := runWatcher(t, Options{Containers: []string{a, b, selfName}, Rescan: rescan,
		Trigger: trigger.Options{Thresholds: []float64{90}, Absolute: 1 << 40}}, rec)
	waitFor(t, 5*time.Second, "the first container", func() bool { _, ok := find(w, a); return ok })

	cb, err := pod.Add(podsim.ContainerSpec{Name: b, Argv: []string{"sleep", "60"}, MemoryLimit: 32 * mib})
	if err != nil {
		t.Fatal(err)
	}
	pidB, err := cb.PID()
	if err != nil {
		t.Fatal(err)
	}
	// Measure from the moment the process is in its container's cgroup,
	// so the bound is about discovery, not about how fast sh starts.
	waitFor(t, 10*time.Second, "the new process to join its cgroup", func() bool {
		cg, err := os.ReadFile("/proc/" + strconv.Itoa(pidB) + "/cgroup")
		return err == nil && strings.Contains(string(cg), "/"+b+"\n")
	})
	joined := time.Now()
	waitFor(t, 5*time.Second, "the added container", func() bool { _, ok := find(w, b); return ok })
	if took := time.Since(joined); took > rescan+500*time.Millisecond {
		t.Errorf("new container picked up %v after it started, want within one rescan (%v)", took, rescan)
	}
	sb, _ := find(w, b)
	if sb.Last.Limit != 32*mib {
		t.Errorf("second container limit %d", sb.Last.Limit)
	}
	for _, s := range snapshot(w) {
		if slices.Contains(s.Container.PIDs, os.Getpid()) || s.Container.Name == selfName {
			t.Errorf("the sidecar's own process or cgroup is watched: %+v", s.Container)
		}
	}
	// A container whose processes exit stops being watched.
	if err := syscall.Kill(pidB, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the exited container to be dropped", func() bool { _, ok := find(w, b); return !ok })
	if _, kills := rec.snapshot(); len(kills) != 0 {
		t.Errorf("a normal exit far below the limit was reported as a kill: %+v", kills)
	}
}

// TestRealHeldInExec: a container whose process reads an empty
// /proc/<pid>/cmdline while alive, as it does inside execve (runc init
// exec'ing the entrypoint under the same PID), is watched all the same,
// and stays watched through its real exec until the kernel OOM-kills it.
// A watcher that took the empty command line for a kernel thread or a
// zombie, and cached that, never watched it.
func TestRealHeldInExec(t *testing.T) {
	const limit = 64 * mib
	name := uniqueName("wx")
	app := cgrouptest.Start(t, name, limit, true, cgrouptest.Alloc{StepMiB: 2, Every: 20 * time.Millisecond, TotalMiB: 256, HeldInExec: true})
	cmdline := func() string {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(app.PID) + "/cmdline")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Trim(string(b), "\x00")
	}
	waitFor(t, 5*time.Second, "the child to blank its command line", func() bool { return cmdline() == "" })
	rec := &recorder{}
	w := runWatcher(t, Options{Containers: []string{name}, Rescan: 100 * time.Millisecond,
		Trigger: trigger.Options{Thresholds: []float64{50}, Interval: 100 * time.Millisecond}}, rec)
	waitFor(t, 5*time.Second, "the held process to be watched", func() bool {
		s, ok := find(w, name)
		return ok && slices.Contains(s.Container.PIDs, app.PID)
	})
	if c := cmdline(); c != "" {
		t.Fatalf("command line %q before the release: the test did not hold the process", c)
	}
	app.Go(t)
	waitFor(t, 5*time.Second, "the exec", func() bool { return cmdline() != "" })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if code, err := app.Container.Wait(ctx); err != nil || code != 128+int(syscall.SIGKILL) {
		t.Fatalf("app exit %d, %v; want an OOM kill", code, err)
	}
	waitFor(t, 5*time.Second, "OOMKilled", func() bool { _, k := rec.snapshot(); return len(k) > 0 })
	caps, kills := rec.snapshot()
	if len(kills) != 1 || kills[0].c.Name != name || !slices.ContainsFunc(caps, func(c captured) bool { return c.ev.Kind == "threshold-50" }) {
		t.Fatalf("kills %+v, %d captures: want one kill and a threshold-50 capture", kills, len(caps))
	}
}

// TestRealDiscoveryByProbe: with no container watched yet and no periodic
// rescan to speak of, a container started in the pod after the watcher
// settled is found through the discovery probe (the last PID moving),
// within a second or so of joining its cgroup. The watcher reads the pod's
// own /proc, so nothing else in it makes the watcher rescan.
func TestRealDiscoveryByProbe(t *testing.T) {
	if err := podsim.Supported(); err != nil {
		t.Skipf("needs root and a writable cgroup v1 memory hierarchy: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pod, err := podsim.Start(ctx, podsim.Spec{Name: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pod.Close(); err != nil {
			t.Error(err)
		}
	})
	fsys, err := procfs.NewFS("/proc/" + strconv.Itoa(pod.InitPID()) + "/root/proc")
	if err != nil {
		t.Fatal(err)
	}
	name := uniqueName("wp")
	w := startWatcher(t, New(Options{Rescan: time.Hour, Trigger: trigger.Options{Thresholds: []float64{90}, Interval: 100 * time.Millisecond}},
		fsys, &recorder{}, testLogger(t)))
	time.Sleep(1500 * time.Millisecond) // the first scans and their settling are over
	if _, err := pod.Add(podsim.ContainerSpec{Name: name, Argv: []string{"sleep", "60"}, MemoryLimit: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "the container started after the watcher", func() bool { _, ok := find(w, name); return ok })
}
