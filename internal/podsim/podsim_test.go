package podsim

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func requirePods(t *testing.T) {
	t.Helper()
	if err := Supported(); err != nil {
		t.Skipf("needs root and a memory cgroup hierarchy: %v", err)
	}
}

func startPod(t *testing.T, spec Spec) *Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	p, err := Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func waitExit(t *testing.T, c *Container) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, err := c.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func TestContainerView(t *testing.T) {
	requirePods(t)
	tests := []struct {
		name     string
		net      bool
		readOnly bool
	}{
		{"shared net, writable cgroup", false, false},
		{"own net, read-only cgroup", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			// The container reports what it sees: its own limit, its name,
			// whether its cgroup view is writable, the PIDs of the pod, and
			// on v2 its cgroup (the namespace root) and memory.oom.group.
			script := `cat /sys/fs/cgroup/memory/memory.limit_in_bytes
echo "$HEAPWATCH_CONTAINER_NAME"
if echo 1 > /sys/fs/cgroup/memory/memory.soft_limit_in_bytes 2>/dev/null; then echo rw; else echo ro; fi
ls /proc | grep -c '^[0-9]'
echo $$`
			if CgroupVersion() == 2 {
				script = `cat /sys/fs/cgroup/memory.max
echo "$HEAPWATCH_CONTAINER_NAME"
if echo max > /sys/fs/cgroup/memory.high 2>/dev/null; then echo rw; else echo ro; fi
ls /proc | grep -c '^[0-9]'
echo $$
cat /proc/self/cgroup
cat /sys/fs/cgroup/memory.oom.group`
			}
			p := startPod(t, Spec{Name: t.Name(), Net: tt.net, Containers: []ContainerSpec{
				{Name: "sleeper", Argv: []string{"sleep", "60"}},
				{Name: "app", Argv: []string{"sh", "-c", "{\n" + script + "\n} > " + out}, MemoryLimit: 64 << 20, ReadOnlyCgroup: tt.readOnly},
			}})
			if code := waitExit(t, p.Container("app")); code != 0 {
				t.Fatalf("app exit code %d", code)
			}
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Fields(string(b))
			if want := map[int]int{1: 5, 2: 7}[p.Version]; len(lines) != want {
				t.Fatalf("output %q: want %d lines (cgroup v%d)", b, want, p.Version)
			}
			if p.Version == 2 && (lines[5] != "0::/" || lines[6] != "1") {
				t.Errorf("v2 container sees cgroup %q and memory.oom.group %q; want its own namespace root 0::/ and 1", lines[5], lines[6])
			}
			mode := "rw"
			if tt.readOnly || p.Version == 2 {
				mode = "ro" // v2: always, as containerd mounts it
			}
			if lines[0] != strconv.Itoa(64<<20) || lines[1] != "app" || lines[2] != mode {
				t.Errorf("limit, name, mode = %q, %q, %q; want %d, app, %s", lines[0], lines[1], lines[2], 64<<20, mode)
			}
			// init, sleeper, and the script itself (plus ls/grep): a PID
			// namespace of its own, shared by both containers.
			if n, _ := strconv.Atoi(lines[3]); n < 3 || n > 8 {
				t.Errorf("pod sees %s processes, want a handful", lines[3])
			}
			if pid, _ := strconv.Atoi(lines[4]); pid <= 1 || pid > 20 {
				t.Errorf("container PID in the pod namespace = %s, want a small number", lines[4])
			}
		})
	}
}

// TestCgroupSeenFromAnotherContainer checks what the sidecar sees of the
// app: on v2 each container has its own cgroup namespace, so the app's
// group lies outside the reader's namespace root.
func TestCgroupSeenFromAnotherContainer(t *testing.T) {
	requirePods(t)
	out := filepath.Join(t.TempDir(), "out")
	p := startPod(t, Spec{Name: t.Name(), Containers: []ContainerSpec{
		{Name: "app", Argv: []string{"sleep", "60"}, MemoryLimit: 32 << 20},
		// Until the app has exec'd sleep 60 (the pod's init is a sleep
		// too), look again.
		{Name: "reader", Argv: []string{"sh", "-c", `for i in $(seq 200); do
  for p in /proc/[0-9]*; do if [ "$(tr '\0' ' ' < $p/cmdline)" = "sleep 60 " ]; then cat $p/cgroup > ` + out + `; exit 0; fi; done
  sleep 0.05
done; exit 1`}},
	}})
	if code := waitExit(t, p.Container("reader")); code != 0 {
		t.Fatalf("reader exit code %d", code)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want := ":memory:/" + p.Name + "/app\n"
	if p.Version == 2 {
		want = "0::/../app\n"
	}
	if !strings.Contains(string(b), want) {
		t.Errorf("the app's /proc/<pid>/cgroup seen from another container:\n%s\nwant a line ending in %q (cgroup v%d)", b, want, p.Version)
	}
}

func TestOOMKill(t *testing.T) {
	requirePods(t)
	// dd reads into one buffer of bs bytes, touching every page (GNU and
	// busybox alike; busybox's tail, unlike GNU's, does not hold its input).
	p := startPod(t, Spec{Name: t.Name(), Containers: []ContainerSpec{
		{Name: "hog", Argv: []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=512M", "count=1"}, MemoryLimit: 32 << 20},
	}})
	c := p.Container("hog")
	if code := waitExit(t, c); code != 137 {
		t.Errorf("exit code %d, want 137", code)
	}
	n, err := c.OOMKills()
	if p.Version == 1 && (err != nil || n != 1) {
		t.Errorf("oom_kill = %d, %v; want 1", n, err)
	}
	if p.Version == 2 {
		// With memory.oom.group=1 the kernel counts the victim in oom_kill
		// and again when it kills the whole group: one event, oom_kill 2.
		b, err := os.ReadFile(filepath.Join(c.CgroupDir, "memory.events"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "oom_group_kill 1\n") || n < 1 {
			t.Errorf("v2 memory.events after one OOM kill of the group:\n%s(oom_kill %d); want oom_group_kill 1", b, n)
		}
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	requirePods(t)
	p, err := Start(context.Background(), Spec{Name: "close", Containers: []ContainerSpec{
		{Name: "a", Argv: []string{"sleep", "600"}, MemoryLimit: 16 << 20},
		{Name: "b", Argv: []string{"sh", "-c", "sleep 600 & sleep 600; wait"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	pids := []int{p.InitPID()}
	for _, name := range []string{"a", "b"} {
		pid, err := p.Container(name).PID()
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := os.Stat(p.CgroupDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pod cgroup %s still there: %v", p.CgroupDir, err)
	}
	for _, pid := range pids {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
			t.Errorf("process %d still running after Close: %s", pid, b)
		}
	}
	if _, err := p.Add(ContainerSpec{Name: "late", Argv: []string{"true"}}); err == nil {
		t.Error("Add after Close succeeded")
	}
}

func TestBadContainer(t *testing.T) {
	requirePods(t)
	_, err := Start(context.Background(), Spec{Name: "bad", Containers: []ContainerSpec{{Name: "Bad Name", Argv: []string{"true"}}}})
	if err == nil {
		t.Fatal("Start accepted a container name with spaces")
	}
}

func TestStartRemovesStaleEmptyPods(t *testing.T) {
	requirePods(t)
	stale := filepath.Join(root(CgroupVersion()), namePrefix+"stale-test")
	busy := filepath.Join(root(CgroupVersion()), namePrefix+"busy-test")
	for _, d := range []string{stale, busy} {
		if err := os.MkdirAll(filepath.Join(d, "app"), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = removeCgroup(filepath.Join(d, "app")); _ = removeCgroup(d) })
	}
	// A process still in the busy pod's group keeps it.
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() })
	if err := os.WriteFile(filepath.Join(busy, "app", "cgroup.procs"), []byte(strconv.Itoa(sleeper.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * staleAge)
	for _, d := range []string{stale, busy} {
		if err := os.Chtimes(d, old, old); err != nil {
			t.Fatal(err)
		}
	}
	startPod(t, Spec{Name: "fresh", Containers: []ContainerSpec{{Name: "a", Argv: []string{"true"}}}})
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale empty pod cgroup kept: %v", err)
	}
	if _, err := os.Stat(busy); err != nil {
		t.Errorf("pod cgroup with a live process removed: %v", err)
	}
	_ = sleeper.Process.Kill()
	_ = sleeper.Wait()
}

// TestUser: a container with User runs as that uid and gid with every
// capability set empty and no_new_privs, in its own cgroup, whose files it
// can still read.
func TestUser(t *testing.T) {
	requirePods(t)
	// Read only after the container exited: cmd.Wait, which closes Done,
	// returns once the output is copied.
	var out bytes.Buffer
	limitFile := "/sys/fs/cgroup/memory/memory.limit_in_bytes"
	if CgroupVersion() == 2 {
		limitFile = "/sys/fs/cgroup/memory.max"
	}
	p := startPod(t, Spec{Name: t.Name(), Containers: []ContainerSpec{
		{Name: "app", User: &User{UID: 1234, GID: 2345}, MemoryLimit: 64 << 20,
			Argv:   []string{"sh", "-c", "grep -E '^(Uid|Gid|Groups|Cap[A-Za-z]+|NoNewPrivs):' /proc/self/status; cat " + limitFile},
			Stdout: &out},
	}})
	if code := waitExit(t, p.Container("app")); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	b := out.Bytes()
	got := map[string]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			got["limit"] = line
			continue
		}
		got[k] = strings.Join(strings.Fields(v), " ")
	}
	want := map[string]string{
		"Uid": "1234 1234 1234 1234", "Gid": "2345 2345 2345 2345", "Groups": "",
		"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
		"CapBnd": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1",
		"limit": strconv.Itoa(64 << 20),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q (output %q)", k, got[k], v, b)
		}
	}
}
