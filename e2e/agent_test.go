package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/podsim"
	"github.com/heapwatch/heapwatch/internal/testkit"
)

// TestAgentLeakingHostDaemon runs the built agent against a leaking host
// daemon: examples/leaky as a host process in a memory cgroup standing for
// a systemd service (<unique>/system.slice/leaky.service), serving pprof
// on a unix socket only, leaking slowly. The agent takes a baseline and a
// series of growth-step captures that list in order, and `heapwatch diff`
// of the first and the latest names the leaking function. The daemon is
// then killed and started again (a new PID): the series continues under
// the same daemon name, from a new baseline.
func TestAgentLeakingHostDaemon(t *testing.T) {
	requirePods(t)
	if podsim.CgroupVersion() != 1 {
		t.Skip("the host daemon's service cgroup is made in the host's v1 memory hierarchy")
	}
	svc := serviceCgroup(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "leaky-debug.sock")
	storage := "file://" + filepath.Join(dir, "store")
	config := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(config, fmt.Appendf(nil, "daemons:\n- name: leaky\n  cgroup: %s\n  pprof: unix://%s\n", svc.path, sock), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testkit.Buffer{}
	agent := exec.Command(agentBin, "--node-name", "e2e-node", "--config", config, "--builtin-daemons=false",
		"--storage", storage, "--spool-dir", filepath.Join(dir, "spool"), "--metrics-bind-address", "",
		"--interval", "100ms", "--rescan", "500ms", "--growth-step", "25%", "--cooldown", "0s", "--horizon", "0s", "--max-per-hour", "0",
		"--profiles", "heap", "--log-level", "debug")
	agent.Stdout, agent.Stderr = logs, logs
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = agent.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = agent.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			t.Error("the agent did not stop on SIGTERM within 20 s")
			_ = agent.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	})

	first := svc.start(t, sock)
	st := openStore(t, storage)
	series := func() []*capture.Metadata {
		var out []*capture.Metadata
		for _, m := range captures(t, st) {
			if strings.HasPrefix(m.Name().MetadataKey(), capture.Prefix(capture.NodeSegment, "e2e-node", "leaky")) {
				out = append(out, m)
			}
		}
		return out
	}
	ofPID := func(pid int) []*capture.Metadata {
		var out []*capture.Metadata
		for _, m := range series() {
			if m.PID == pid {
				out = append(out, m)
			}
		}
		return out
	}
	testkit.WaitFor(t, 60*time.Second, "a baseline and three growth steps", func() bool { return len(ofPID(first)) >= 4 })
	got := ofPID(first)
	for i, m := range got {
		if m.TargetKind != capture.DaemonKind || m.Daemon != "leaky" || m.Node != "e2e-node" || m.Namespace != "" {
			t.Errorf("capture %s names %q/%q/%q (kind %q)", m.ID, m.Node, m.Daemon, m.Namespace, m.TargetKind)
		}
		want := "step"
		if i == 0 {
			want = "baseline"
		}
		if m.Trigger != want {
			t.Errorf("capture %d %s: trigger %q, want %q (%s)", i, m.ID, m.Trigger, want, m.Reason)
		}
		if i > 0 && (!m.CapturedAt.After(got[i-1].CapturedAt) || m.Memory.UsageBytes <= got[i-1].Memory.UsageBytes) {
			t.Errorf("capture %d %s (usage %d) does not follow %s (usage %d)", i, m.ID, m.Memory.UsageBytes, got[i-1].ID, got[i-1].Memory.UsageBytes)
		}
		if m.Memory.LimitBytes != 0 || len(m.MemoryStat) == 0 {
			t.Errorf("capture %s: memory %+v, %d memory.stat keys; want the service cgroup's, without a limit", m.ID, m.Memory, len(m.MemoryStat))
		}
	}
	// The post-mortem's method: diff the first and the latest capture.
	last := got[len(got)-1]
	diff := string(runHeapwatch(t, storage, "diff", "--native", got[0].ID, last.ID, "-o", t.TempDir()))
	if !strings.Contains(diff, "main.leakLinear") {
		t.Errorf("heapwatch diff %s %s does not name main.leakLinear:\n%s", got[0].ID, last.ID, diff)
	}

	t.Logf("heapwatch diff %s %s:\n%s", got[0].ID, last.ID, diff)

	// The daemon dies and its supervisor starts it again: a new PID.
	svc.kill(t)
	second := svc.start(t, sock)
	if second == first {
		t.Fatalf("restarted daemon has the same PID %d", first)
	}
	testkit.WaitFor(t, 60*time.Second, "a new baseline and a step of the restarted daemon", func() bool { return len(ofPID(second)) >= 2 })
	after := ofPID(second)
	if after[0].Trigger != "baseline" || after[1].Trigger != "step" || !after[0].CapturedAt.After(last.CapturedAt) {
		t.Errorf("after the restart: %s (%s), %s (%s); want a baseline then a step after %s",
			after[0].ID, after[0].Trigger, after[1].ID, after[1].Trigger, last.ID)
	}
	all := series()
	if !slices.IsSortedFunc(all, func(a, b *capture.Metadata) int { return a.CapturedAt.Compare(b.CapturedAt) }) {
		t.Error("the daemon's captures do not list in time order")
	}
	for _, m := range all {
		if m.Daemon != "leaky" {
			t.Errorf("capture %s under daemon %q", m.ID, m.Daemon)
		}
	}
	t.Logf("%d captures of leaky: %d before the restart, %d after", len(all), len(ofPID(first)), len(ofPID(second)))
}

// service is a memory cgroup standing for a systemd service, and the
// daemon process running in it.
type service struct {
	dir  string // the leaf's directory in the v1 hierarchy
	path string // its cgroup path, as /proc/<pid>/cgroup shows it
	cmd  *exec.Cmd
	logs *testkit.Buffer
}

// serviceCgroup makes <MemoryRoot>/heapwatch-e2e-<random>/system.slice/
// leaky.service, removed with its processes at cleanup.
func serviceCgroup(t *testing.T) *service {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	top := "heapwatch-e2e-" + hex.EncodeToString(b)
	rel := filepath.Join(top, "system.slice", "leaky.service")
	s := &service{dir: filepath.Join(podsim.MemoryRoot, rel), path: "/" + rel, logs: &testkit.Buffer{}}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s.cmd != nil {
			s.kill(t)
		}
		// Leaf first; a group with tasks cannot be removed, so wait for
		// the kernel to empty it.
		for _, d := range []string{s.dir, filepath.Dir(s.dir), filepath.Join(podsim.MemoryRoot, top)} {
			var err error
			for range 50 {
				if err = os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("remove cgroup %s: %v", d, err)
			}
		}
		if t.Failed() {
			t.Logf("leaky log:\n%s", s.logs.String())
		}
	})
	return s
}

// start runs leaky in the service's cgroup, joined before it execs (as
// systemd does), serving pprof on sock only and leaking 8 MiB/s; it
// returns its PID.
func (s *service) start(t *testing.T, sock string) int {
	t.Helper()
	s.cmd = exec.Command("sh", "-c", `echo $$ > "$1/cgroup.procs" && exec "$2" --addr "" --pprof-socket "$3" --shape linear --rate 8 --delay 500ms`,
		"sh", s.dir, leakyBin, sock)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return s.cmd.Process.Pid
}

// kill ends the daemon with SIGKILL, as an OOM kill or a crash would.
func (s *service) kill(t *testing.T) {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}
