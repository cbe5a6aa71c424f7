package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/internal/podsim"
	"github.com/heapwatch/heapwatch/internal/testkit"
)

func requireSupported(t *testing.T) {
	t.Helper()
	if err := podsim.Supported(); err != nil {
		t.Skipf("the demo needs root and a cgroup v1 memory hierarchy: %v", err)
	}
}

// demoCgroups lists the cgroups the demo's pods made that still exist.
func demoCgroups(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(podsim.MemoryRoot, "heapwatch-podsim-heapwatch-demo-*"))
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// TestDemo runs `make demo`'s path in full, with the doubling leak: the app is
// OOM-killed and the CLI's top of the final profile names the leak.
func TestDemo(t *testing.T) {
	requireSupported(t)
	before := len(demoCgroups(t))
	for _, storage := range []string{"file", "s3"} {
		t.Run(storage, func(t *testing.T) {
			var out strings.Builder
			dumps := t.TempDir()
			err := run(t.Context(), options{storage: storage, dumps: dumps, shape: "doubling", limit: 130 << 20, timeout: time.Minute}, &out)
			t.Logf("demo output:\n%s", out.String())
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{
				"the kernel OOM-killed the app: exit code 137",
				"the sidecar stored the last profile before the kill: demo/leaky-demo/app/",
				"FINAL (killed",
				"main.leakDoubling",
				"open it in the pprof web UI with:",
			} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("demo output lacks %q", want)
				}
			}
			// The top of the profile is the leaking function.
			_, top, _ := strings.Cut(out.String(), "flat  flat%")
			if lines := strings.SplitN(strings.TrimSpace(top), "\n", 3); len(lines) < 2 || !strings.Contains(lines[1], "main.leakDoubling") {
				t.Errorf("first row of top is not main.leakDoubling: %q", lines)
			}
			if storage == "file" {
				heaps, _ := filepath.Glob(filepath.Join(dumps, "demo", "leaky-demo", "app", "*-heap.pb.gz"))
				if len(heaps) == 0 {
					t.Errorf("no heap profile under %s", dumps)
				}
			}
		})
	}
	if after := demoCgroups(t); len(after) != before {
		t.Errorf("the demo left cgroups behind: %v", after)
	}
}

// TestDemoInterrupted sends Ctrl-C while the pod runs: the demo must remove
// its cgroups and processes before it exits.
func TestDemoInterrupted(t *testing.T) {
	requireSupported(t)
	bin := buildDemo(t)
	before := len(demoCgroups(t))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	// A slow linear leak keeps the pod alive long after the interrupt.
	cmd := exec.CommandContext(ctx, bin, "-dumps", t.TempDir(), "-shape", "linear")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started := false
	for sc := bufio.NewScanner(stdout); sc.Scan(); {
		if strings.Contains(sc.Text(), "pod started") {
			started = true
			break
		}
	}
	if !started {
		cmd.Wait()
		t.Fatal("the demo never started its pod")
	}
	if len(demoCgroups(t)) == before {
		t.Fatal("no demo cgroup while the pod runs: the test would prove nothing")
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("interrupted demo exited with %d (%v), want 1", code, err)
	}
	if after := demoCgroups(t); len(after) != before {
		t.Errorf("the interrupted demo left cgroups behind: %v", after)
	}
}

func buildDemo(t *testing.T) string {
	t.Helper()
	// Not t.TempDir: its parent is private, and TestDemoRefusesWithoutRoot
	// runs the binary as another user.
	dir, err := os.MkdirTemp("", "heapwatch-demo-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "demo")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestDemoRefusesWithoutRoot runs the demo as an unprivileged user: it must
// say why it cannot run and exit non-zero.
func TestDemoRefusesWithoutRoot(t *testing.T) {
	testkit.NeedsRoot(t, "to start the demo as another user")
	bin := buildDemo(t)
	cmd := exec.Command(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit code %d (%v), want 1; output:\n%s", code, err, out)
	}
	for _, want := range []string{"must run as root", "run it as root on Linux with a cgroup v1 memory hierarchy"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
