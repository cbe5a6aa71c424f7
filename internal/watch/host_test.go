package watch

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/trigger"
)

// hostTree writes a host /proc fixture: each process's stat, comm,
// cgroup (v1 memory line) and, when exe is set, its exe link.
type hostTree struct {
	t    *testing.T
	root string
}

type fixtureProc struct {
	pid, ppid int
	comm, exe string
	cgroup    string // memory cgroup path: v1's, or v2's with v2
	v2        bool
	kthread   bool
}

func newHostTree(t *testing.T, self int) *hostTree {
	h := &hostTree{t: t, root: t.TempDir()}
	if err := os.Symlink(strconv.Itoa(self), filepath.Join(h.root, "self")); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *hostTree) add(procs ...fixtureProc) {
	for _, p := range procs {
		dir := filepath.Join(h.root, strconv.Itoa(p.pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			h.t.Fatal(err)
		}
		flags := 0
		if p.kthread {
			flags = 0x00200000
		}
		files := map[string]string{
			"stat":   fmt.Sprintf("%d (%s) S %d 1 1 0 -1 %d 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0", p.pid, p.comm, p.ppid, flags, 1000+p.pid),
			"comm":   p.comm + "\n",
			"cgroup": "12:memory:" + p.cgroup + "\n0::/\n",
		}
		if p.v2 {
			files["cgroup"] = "0::" + p.cgroup + "\n"
		}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
				h.t.Fatal(err)
			}
		}
		if p.exe != "" {
			if err := os.Symlink(p.exe, filepath.Join(dir, "exe")); err != nil {
				h.t.Fatal(err)
			}
		}
	}
}

func (h *hostTree) remove(pid int) {
	if err := os.RemoveAll(filepath.Join(h.root, strconv.Itoa(pid))); err != nil {
		h.t.Fatal(err)
	}
}

// TestHostDaemons: daemons are found by executable or cgroup; one in a
// service cgroup of its own is read from it with its children, one in the
// root cgroup or beside unrelated processes by RSS; kernel threads, pods'
// processes and the agent are never matched; a restart (new PID) keeps
// the group's key and name.
func TestHostDaemons(t *testing.T) {
	h := newHostTree(t, 7)
	h.add(
		fixtureProc{pid: 1, comm: "systemd", exe: "/usr/lib/systemd/systemd", cgroup: "/init.scope"},
		fixtureProc{pid: 2, comm: "kthreadd", cgroup: "/", kthread: true},
		fixtureProc{pid: 7, ppid: 1, comm: "agent", exe: "/agent", cgroup: "/kubepods/besteffort/podx/agent"},
		fixtureProc{pid: 100, ppid: 1, comm: "containerd", exe: "/usr/bin/containerd", cgroup: "/system.slice/containerd.service"},
		fixtureProc{pid: 110, ppid: 100, comm: "containerd-shim", exe: "/usr/bin/containerd-shim-runc-v2", cgroup: "/system.slice/containerd.service"},
		fixtureProc{pid: 200, ppid: 1, comm: "kubelet", exe: "/usr/bin/kubelet", cgroup: "/"},
		fixtureProc{pid: 300, ppid: 1, comm: "dockerd", exe: "/usr/sbin/dockerd (deleted)", cgroup: "/system.slice/misc.service"},
		fixtureProc{pid: 301, ppid: 1, comm: "cron", exe: "/usr/sbin/cron", cgroup: "/system.slice/misc.service"},
		fixtureProc{pid: 400, ppid: 1, comm: "containerd", exe: "/usr/bin/containerd", cgroup: "/kubepods/burstable/podk/kind"},
		// No readable exe link: matched by comm, truncated to 15 bytes.
		fixtureProc{pid: 500, ppid: 1, comm: "very-long-daemo", cgroup: "/system.slice/long.service"},
		fixtureProc{pid: 600, ppid: 1, comm: "vector", exe: "/usr/bin/vector", cgroup: "/system.slice/vector.service"},
	)
	fsys, err := procfs.NewFS(h.root)
	if err != nil {
		t.Fatal(err)
	}
	d := NewHostDaemons(fsys, "node-1", []DaemonSpec{
		{Name: "containerd", Exe: "containerd", Cgroup: "containerd.service"},
		{Name: "kubelet", Exe: "kubelet"},
		{Name: "dockerd", Exe: "dockerd"},
		{Name: "long", Exe: "very-long-daemon-name"},
		{Name: "vector", Cgroup: "/system.slice/vector.service"},
		{Name: "absent", Exe: "crio"},
		{Name: "agent", Exe: "agent"},
		{Name: "kthreadd", Exe: "kthreadd"},
	})
	want := map[string]Group{
		"containerd@v1:/system.slice/containerd.service@100.1100": {Path: "/system.slice/containerd.service", PIDs: []int{100}, Settled: true},
		"kubelet@rss@200.1200":                            {Path: "/", PIDs: []int{200}, Settled: true, RSS: true},
		"dockerd@rss@300.1300":                            {Path: "/system.slice/misc.service", PIDs: []int{300}, Settled: true, RSS: true},
		"long@v1:/system.slice/long.service@500.1500":     {Path: "/system.slice/long.service", PIDs: []int{500}, Settled: true},
		"vector@v1:/system.slice/vector.service@600.1600": {Path: "/system.slice/vector.service", PIDs: []int{600}, Settled: true},
	}
	got, err := d.Discover()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("groups (-want +got):\n%s", diff)
	}
	for key := range want {
		wantName, _, _ := strings.Cut(key, "@")
		name, target, sure := d.Identify(key, got[key])
		if name != wantName || !sure || target != (capture.Daemon{Node: "node-1", Name: wantName}) {
			t.Errorf("Identify(%q) = %q, %+v, %v", key, name, target, sure)
		}
	}

	// Both daemons restart: the shim is re-parented to init and stays in
	// the service's cgroup, still the daemon's own (configured); the
	// kubelet is back in the root. Each is a new group: a new baseline.
	h.remove(100)
	h.remove(110)
	h.remove(200)
	h.add(
		fixtureProc{pid: 110, ppid: 1, comm: "containerd-shim", exe: "/usr/bin/containerd-shim-runc-v2", cgroup: "/system.slice/containerd.service"},
		fixtureProc{pid: 120, ppid: 1, comm: "containerd", exe: "/usr/bin/containerd", cgroup: "/system.slice/containerd.service"},
		fixtureProc{pid: 210, ppid: 1, comm: "kubelet", exe: "/usr/bin/kubelet", cgroup: "/"},
	)
	got, err = d.Discover()
	if err != nil {
		t.Fatal(err)
	}
	for key, g := range map[string]Group{
		"containerd@v1:/system.slice/containerd.service@120.1120": {Path: "/system.slice/containerd.service", PIDs: []int{120}, Settled: true},
		"kubelet@rss@210.1210": {Path: "/", PIDs: []int{210}, Settled: true, RSS: true},
	} {
		if diff := cmp.Diff(g, got[key]); diff != "" {
			t.Errorf("%s after the restart (-want +got):\n%s", key, diff)
		}
	}
	// Without a configured cgroup, an orphaned shim makes the service's
	// cgroup shared: the daemon is read by RSS.
	d = NewHostDaemons(fsys, "node-1", []DaemonSpec{{Name: "containerd", Exe: "containerd"}})
	got, err = d.Discover()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got["containerd@rss@120.1120"]; !ok || len(got) != 1 {
		t.Errorf("containerd beside an orphaned shim: groups %v", got)
	}
}

// TestHostDaemonRSSRestart runs the watcher over the real /proc: a
// process sharing the test's cgroup is watched by its resident set, takes
// a baseline capture, and when it exits and another starts (a new PID)
// the new one is watched under the same name with a baseline of its own.
func TestHostDaemonRSSRestart(t *testing.T) {
	// A copy of sleep under a name no other process has.
	sleepPath, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	exe := fmt.Sprintf("hwd%d", os.Getpid())
	bin := filepath.Join(t.TempDir(), exe)
	copyFile(t, sleepPath, bin)
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	first := start()
	fsys, err := procfs.NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	gone := make(chan Container, 2)
	w := New(Options{Rescan: 50 * time.Millisecond, ReadOnly: true, NodeMemory: 1 << 40, OnGone: func(c Container) { gone <- c },
		Discover: NewHostDaemons(fsys, "n1", []DaemonSpec{{Name: "sleeper", Exe: exe}}),
		Trigger:  trigger.Options{StepRatio: 0.25, Interval: 20 * time.Millisecond}}, fsys, rec, testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	baselineOf := func(pid int) func() bool {
		return func() bool {
			caps, _ := rec.snapshot()
			for _, c := range caps {
				if c.ev.Kind == string(trigger.KindBaseline) && len(c.ev.Container.PIDs) == 1 && c.ev.Container.PIDs[0] == pid {
					return true
				}
			}
			return false
		}
	}
	waitFor(t, 10*time.Second, "baseline of the first process", baselineOf(first.Process.Pid))
	caps, _ := rec.snapshot()
	c := caps[0].ev
	if c.Container.Name != "sleeper" || c.Container.Target != (capture.Daemon{Node: "n1", Name: "sleeper"}) || c.Sample.Usage == 0 || c.Sample.Limit != 0 {
		t.Errorf("baseline %+v, sample %+v", c.Container, c.Sample)
	}
	_ = first.Process.Kill()
	_ = first.Wait()
	select {
	case c := <-gone:
		if c.Name != "sleeper" || c.PIDs[0] != first.Process.Pid {
			t.Errorf("gone: %+v", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no OnGone for the exited process")
	}
	second := start()
	waitFor(t, 10*time.Second, "baseline of the restarted process", baselineOf(second.Process.Pid))
	caps, _ = rec.snapshot()
	for _, c := range caps {
		if c.ev.Container.Name != "sleeper" {
			t.Errorf("capture under %q", c.ev.Container.Name)
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestHostDaemonV2ServiceCgroup runs the watcher over a host fixture on
// cgroup v2: containerd in system.slice/containerd.service is read from
// that cgroup under CgroupRoot, read-only (inotify on memory.events, no
// write), with no limit; its captures are a baseline, a growth step, and
// a prediction against node memory (NodeMemory standing in for the
// limit), while its samples keep the true limit, none.
func TestHostDaemonV2ServiceCgroup(t *testing.T) {
	h := newHostTree(t, 7)
	h.add(
		fixtureProc{pid: 7, ppid: 1, comm: "agent", exe: "/agent", cgroup: "/agent", v2: true},
		fixtureProc{pid: 100, ppid: 1, comm: "containerd", exe: "/usr/bin/containerd", cgroup: "/system.slice/containerd.service", v2: true},
	)
	croot := t.TempDir()
	svc := filepath.Join(croot, "system.slice", "containerd.service")
	if err := os.MkdirAll(svc, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(svc, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("memory.current", strconv.Itoa(40*mib))
	write("memory.max", "max\n")
	write("memory.stat", "anon 41943040\ninactive_file 0\n")
	write("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
	fsys, err := procfs.NewFS(h.root)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	w := New(Options{Rescan: 50 * time.Millisecond, ReadOnly: true, NoProbe: true, NodeMemory: 100 * mib, CgroupRoot: croot,
		Discover: NewHostDaemons(fsys, "n1", []DaemonSpec{{Name: "containerd", Exe: "containerd", Cgroup: "containerd.service"}}),
		Trigger:  trigger.Options{StepRatio: 0.25, Horizon: 10 * time.Second, Interval: 20 * time.Millisecond}}, fsys, rec, testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	kinds := func() []string {
		caps, _ := rec.snapshot()
		var out []string
		for _, c := range caps {
			out = append(out, c.ev.Kind)
		}
		return out
	}
	waitFor(t, 5*time.Second, "the baseline", func() bool { return len(kinds()) == 1 })
	caps, _ := rec.snapshot()
	c := caps[0].ev
	if c.Kind != "baseline" || c.Container.CgroupPath != svc || c.Container.Version != cgroup.V2 || c.Container.Notify != cgroup.ModeInotify ||
		c.Sample.Usage != 40*mib || c.Sample.Limit != 0 || c.Container.Target != (capture.Daemon{Node: "n1", Name: "containerd"}) {
		t.Fatalf("baseline %s of %+v, sample %+v", c.Kind, c.Container, c.Sample)
	}
	// Past 40+16 MiB, and fast toward node memory: the step comes first
	// (precedence), the prediction at the next sample.
	write("memory.current", strconv.Itoa(60*mib))
	waitFor(t, 10*time.Second, "a growth step and a prediction", func() bool { return len(kinds()) >= 3 })
	caps, _ = rec.snapshot()
	if diff := cmp.Diff([]string{"baseline", "step", "predictive"}, kinds()); diff != "" {
		t.Errorf("captures (-want +got):\n%s", diff)
	}
	if p := caps[2].ev; p.Sample.Limit != 0 || !strings.Contains(p.Reason, "of 100MiB") {
		t.Errorf("prediction %q with sample %+v", p.Reason, p.Sample)
	}
}
