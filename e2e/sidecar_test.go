package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/internal/podsim"
	"github.com/heapwatch/heapwatch/internal/testkit"
)

// startSidecar runs the sidecar alone in a pod.
func startSidecar(t *testing.T, spoolDir string, env ...string) (*podsim.Container, *testkit.Buffer) {
	t.Helper()
	requirePods(t)
	logs := &testkit.Buffer{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pod, err := podsim.Start(ctx, podsim.Spec{Name: "sidecar", Net: true, Containers: []podsim.ContainerSpec{{
		Name: "heapwatch", Argv: []string{sidecarBin, "--spool-dir", spoolDir, "--metrics-addr", "127.0.0.1:0", "--shutdown-grace", "2s"},
		Env: env, MemoryLimit: sidecarLimit, Stdout: logs, Stderr: logs,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sidecar logs:\n%s", logs.String())
		}
		if err := pod.Close(); err != nil {
			t.Error(err)
		}
	})
	return pod.Container("heapwatch"), logs
}

func TestInvalidSettingsWarnAndKeepRunning(t *testing.T) {
	c, logs := startSidecar(t, t.TempDir(), "HEAPWATCH_STORAGE=file://"+t.TempDir(),
		"HEAPWATCH_INTERVAL=fast", "HEAPWATCH_THRESHOLDS=60,abc", "HEAPWATCH_STORAGE=ftp://nowhere")
	waitUntil(t, 10*time.Second, "a warning for each invalid variable", func() bool {
		n := 0
		for _, rec := range logRecords(logs.String()) {
			if rec.Msg == "invalid setting; using the default for it" {
				n++
			}
		}
		return n == 3
	})
	for _, name := range []string{"HEAPWATCH_INTERVAL", "HEAPWATCH_THRESHOLDS", "HEAPWATCH_STORAGE"} {
		if !strings.Contains(logs.String(), `"variable":"`+name+`"`) {
			t.Errorf("no warning naming %s", name)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if code := c.ExitCode(); code != -1 {
		t.Fatalf("sidecar exited (%d) on invalid settings", code)
	}
}

func TestShutdownKeepsSpoolAndRestartDrainsIt(t *testing.T) {
	spoolDir := t.TempDir()
	meta := bigCapture(t, spoolDir, 1<<20)
	// A regular file where the storage directory should be: uploads fail.
	blocked := filepath.Join(t.TempDir(), "captures")
	if err := os.WriteFile(blocked, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	c, logs := startSidecar(t, spoolDir, "HEAPWATCH_STORAGE=file://"+blocked)
	waitUntil(t, 10*time.Second, "an upload failure", func() bool {
		return strings.Contains(logs.String(), "storing captures failed")
	})
	pid, err := c.PID()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if code, err := c.Wait(ctx); err != nil || code != 0 {
		t.Fatalf("sidecar exit on SIGTERM: %d, %v; want 0 within the grace period", code, err)
	}
	if n := spooled(t, spoolDir); n != 1 {
		t.Fatalf("%d captures in the spool after shutdown, want the 1 not stored", n)
	}

	// Started again with a working storage, it drains the spool.
	if err := os.Remove(blocked); err != nil {
		t.Fatal(err)
	}
	startSidecar(t, spoolDir, "HEAPWATCH_STORAGE=file://"+blocked)
	waitUntil(t, 10*time.Second, "the spool drained at start-up", func() bool { return spooled(t, spoolDir) == 0 })
	b, err := testkit.ReadObject(openStore(t, "file://"+blocked), meta.Profiles[0].Key)
	if err != nil || len(b) != 1<<20 {
		t.Errorf("spooled profile after restart: %d bytes, %v", len(b), err)
	}
}
