package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/containerdtest"
	"github.com/heapwatch/heapwatch/internal/testkit"
)

// TestAgentContainerd runs the built agent against two real containerds on
// the host, found by executable name (a name unique to this test, so that
// another test's containerd is not taken for it): one with its debug
// socket enabled, whose baseline capture holds a parseable heap profile of
// containerd's own functions, fetched over the socket, and which
// `heapwatch ls --node` lists; one as containerd ships, without a debug
// socket, for which the agent logs the configuration line that enables it
// while its memory is still exported.
func TestAgentContainerd(t *testing.T) {
	requirePods(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	tag := hex.EncodeToString(b)
	debug := containerdtest.Start(t, containerdtest.Options{Exe: "ctrd-" + tag})
	plain := containerdtest.Start(t, containerdtest.Options{Exe: "ctrp-" + tag, NoDebug: true})

	dir := t.TempDir()
	storage := "file://" + filepath.Join(dir, "store")
	config := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(config, fmt.Appendf(nil, "daemons:\n- name: containerd\n  exe: ctrd-%s\n  pprof: unix://%s\n- name: containerd-plain\n  exe: ctrp-%s\n  pprof: unix://%s\n",
		tag, debug.DebugSocket, tag, plain.DebugSocket), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testkit.Buffer{}
	agent := exec.Command(agentBin, "--node-name", "e2e-ctrd", "--config", config, "--builtin-daemons=false",
		"--storage", storage, "--spool-dir", filepath.Join(dir, "spool"), "--metrics-bind-address", "127.0.0.1:0",
		"--interval", "100ms", "--rescan", "500ms", "--profiles", "heap")
	agent.Stdout, agent.Stderr = logs, logs
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = agent.Process.Signal(syscall.SIGTERM)
		_ = agent.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	})

	st := openStore(t, storage)
	var baseline *capture.Metadata
	testkit.WaitFor(t, time.Minute, "containerd's baseline capture", func() bool {
		for _, m := range captures(t, st) {
			if m.TargetKind == capture.DaemonKind && m.Daemon == "containerd" && m.Node == "e2e-ctrd" {
				baseline = m
				return true
			}
		}
		return false
	})
	if baseline.PID != debug.PID() || baseline.Trigger != "baseline" {
		t.Errorf("capture %s: pid %d, trigger %q; want containerd's pid %d and a baseline", baseline.ID, baseline.PID, baseline.Trigger, debug.PID())
	}
	if len(baseline.Profiles) != 1 || baseline.Profiles[0].Name != "heap" {
		t.Fatalf("capture %s holds %+v, want the heap profile", baseline.ID, baseline.Profiles)
	}
	data, err := testkit.ReadObject(st, baseline.Profiles[0].Key)
	if err != nil {
		t.Fatal(err)
	}
	p, err := profile.Parse(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("containerd's heap profile %s does not parse: %v", baseline.Profiles[0].Key, err)
	}
	var own []string
	for _, f := range p.Function {
		if strings.HasPrefix(f.Name, "github.com/containerd/containerd/v2/") {
			own = append(own, f.Name)
		}
	}
	if len(p.Sample) == 0 || len(own) == 0 {
		t.Errorf("heap profile: %d samples, no containerd function among %d", len(p.Sample), len(p.Function))
	}

	ls := string(runHeapwatch(t, storage, "ls", "--node", "e2e-ctrd", "--daemon", "containerd"))
	if !strings.Contains(ls, baseline.ID) || !strings.Contains(ls, "baseline") {
		t.Errorf("heapwatch ls --node e2e-ctrd --daemon containerd does not list %s:\n%s", baseline.ID, ls)
	}

	// Without a debug socket: the fix in the log, the memory in the metrics.
	want := `[debug] address = \"` + plain.DebugSocket + `\"`
	testkit.WaitFor(t, 30*time.Second, "the log line saying how to enable the debug socket", func() bool {
		return strings.Contains(logs.String(), want)
	})
	series := `heapwatch_daemon_memory_bytes{daemon="containerd-plain"}`
	testkit.WaitFor(t, 30*time.Second, "containerd-plain's memory in the metrics", func() bool {
		v := scrape(t, logs.String(), "heapwatch_daemon_memory_bytes")[series]
		return v != "" && v != "0"
	})
	for _, m := range captures(t, st) {
		if m.Daemon == "containerd-plain" {
			t.Errorf("capture %s of a daemon without a debug socket", m.ID)
		}
	}
}
