// Package e2e runs the built sidecar beside the leaky example app in an
// emulated pod (real PID namespace, real memory cgroups, real OOM kills)
// and checks what reaches storage.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/podsim"
	"github.com/heapwatch/heapwatch/internal/testkit"
	"github.com/heapwatch/heapwatch/store"
)

const (
	mib = 1 << 20
	// appLimit is the leaky app's memory limit, as in the issue.
	appLimit = 130 * mib
	// sidecarLimit is the sidecar container's limit: the injected default.
	sidecarLimit = 128 * mib
)

// Binaries built once per test binary.
var sidecarBin, leakyBin, heapwatchBin, agentBin string

// unsupported says why pods cannot be emulated here; empty when they can.
var unsupported string

// binDirEnv names a directory holding prebuilt sidecar, leaky and heapwatch binaries:
// the cgroup v2 run in a VM (e2e/v2) has no Go toolchain inside.
const binDirEnv = "HEAPWATCH_E2E_BIN"

// summaryEnv names a file to which every OOM kill and every usable final
// capture is appended as a line "oom_kill <test>" or "captured <test>", for
// the totals of the cgroup v2 run.
const summaryEnv = "HEAPWATCH_E2E_SUMMARY"

// record appends one event line to the summary file, if one is set.
func record(t testing.TB, event string) {
	path := os.Getenv(summaryEnv)
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err == nil {
		_, err = fmt.Fprintf(f, "%s %s\n", event, t.Name())
		err = errors.Join(err, f.Close())
	}
	if err != nil {
		t.Errorf("summary: %v", err)
	}
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if err := podsim.Supported(); err != nil {
		unsupported = err.Error()
		return m.Run()
	}
	if dir := os.Getenv(binDirEnv); dir != "" {
		sidecarBin, leakyBin, heapwatchBin = filepath.Join(dir, "sidecar"), filepath.Join(dir, "leaky"), filepath.Join(dir, "heapwatch")
		agentBin = filepath.Join(dir, "agent")
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "heapwatch-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Containers running as a non-root uid must be able to exec them.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sidecarBin, leakyBin, heapwatchBin = filepath.Join(dir, "sidecar"), filepath.Join(dir, "leaky"), filepath.Join(dir, "heapwatch")
	agentBin = filepath.Join(dir, "agent")
	for bin, pkg := range map[string]string{sidecarBin: "../cmd/sidecar", leakyBin: "../examples/leaky", heapwatchBin: "../cmd/heapwatch", agentBin: "../cmd/agent"} {
		out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	return m.Run()
}

func requirePods(t testing.TB) {
	t.Helper()
	if unsupported != "" {
		t.Skipf("needs root and a memory cgroup hierarchy: %s", unsupported)
	}
}

// podRun is one emulated pod with the leaky app and the sidecar.
type podRun struct {
	pod      *podsim.Pod
	app      *podsim.Container
	sidecar  *podsim.Container
	storage  string // storage URL
	spoolDir string
	logs     *testkit.Buffer
}

type podOptions struct {
	shape   string
	appArgs []string
	// appArgv replaces the app's command (e.g. a shell running two processes).
	appArgv    []string
	storage    string
	env        []string // sidecar environment, beside HEAPWATCH_STORAGE
	sharedNet  bool
	readOnlyCG bool
	// user runs app and sidecar as this uid and gid without capabilities,
	// as the webhook's same-uid mode does; the spool and storage are then
	// world-writable directories, as the kubelet creates emptyDirs.
	user *podsim.User
	// before are containers started ahead of the sidecar; startPod starts
	// the sidecar and the app once ready returns true for them (within
	// 30 s), so the sidecar never sees them half started.
	before []podsim.ContainerSpec
	ready  func(*podsim.Pod) bool
}

// leakyArgs is the leaky command line for a shape; every shape waits 3 s
// before leaking so the sidecar has seen the app once.
func leakyArgs(shape string, extra ...string) []string {
	return append([]string{leakyBin, "-addr", "127.0.0.1:0", "-shape", shape, "-delay", "3s"}, extra...)
}

func startPod(t testing.TB, o podOptions) *podRun {
	t.Helper()
	requirePods(t)
	dir := t.TempDir
	if o.user != nil {
		dir = func() string { return emptyDir(t) }
	}
	r := &podRun{storage: o.storage, spoolDir: dir(), logs: &testkit.Buffer{}}
	if r.storage == "" {
		r.storage = "file://" + dir()
	}
	appArgv := o.appArgv
	if appArgv == nil {
		appArgv = leakyArgs(o.shape, o.appArgs...)
	}
	env := append([]string{"HEAPWATCH_STORAGE=" + r.storage, "POD_NAME=leaky-0", "POD_NAMESPACE=e2e",
		"POD_UID=0000-1111", "NODE_NAME=node-e2e"}, o.env...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pod, err := podsim.Start(ctx, podsim.Spec{Name: "e2e", Net: !o.sharedNet, Containers: o.before})
	if err != nil {
		t.Fatal(err)
	}
	r.pod = pod
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("HEAPWATCH_E2E_LOGS") != "" {
			t.Logf("pod logs:\n%s", r.logs.String())
		}
		if err := pod.Close(); err != nil {
			t.Error(err)
		}
	})
	if o.ready != nil {
		waitUntil(t, 30*time.Second, "the containers started before the sidecar", func() bool { return o.ready(pod) })
	}
	for _, spec := range []podsim.ContainerSpec{
		// The sidecar first, as a native sidecar starts before the app.
		{Name: "heapwatch", Argv: []string{sidecarBin, "--spool-dir", r.spoolDir, "--metrics-addr", "127.0.0.1:0"},
			Env: env, MemoryLimit: sidecarLimit, User: o.user, Stdout: r.logs, Stderr: r.logs},
		{Name: "app", Argv: appArgv, MemoryLimit: appLimit, ReadOnlyCgroup: o.readOnlyCG, User: o.user, Stdout: io.Discard, Stderr: r.logs},
	} {
		if _, err := pod.Add(spec); err != nil {
			t.Fatal(err)
		}
	}
	r.app, r.sidecar = pod.Container("app"), pod.Container("heapwatch")
	return r
}

// emptyDir makes a directory any uid may write, as the kubelet makes an
// emptyDir volume (mode 0777), under a world-searchable parent: t.TempDir's
// are root's only.
func emptyDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "heapwatch-e2e-emptydir-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// waitOOMKill waits for the kernel to OOM-kill the app.
func (r *podRun) waitOOMKill(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n, err := r.app.OOMKills()
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			record(t, "oom_kill")
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("app not OOM-killed within %v (exit code %d)", timeout, r.app.ExitCode())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// finalCapture waits for the metadata marked final to appear in storage.
func finalCapture(t testing.TB, st store.Store, timeout time.Duration) *capture.Metadata {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, m := range captures(t, st) {
			if m.Final {
				return m
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no capture marked final in %s within %v", st, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// captures lists every capture's metadata in storage.
func captures(t testing.TB, st store.Store) []*capture.Metadata {
	t.Helper()
	var out []*capture.Metadata
	err := st.List(context.Background(), "", func(o store.Object) error {
		if !strings.HasSuffix(o.Key, capture.MetadataSuffix) {
			return nil
		}
		b, err := testkit.ReadObject(st, o.Key)
		if err != nil {
			return err
		}
		m, err := capture.DecodeMetadata(b)
		if err != nil {
			return fmt.Errorf("%s: %w", o.Key, err)
		}
		out = append(out, m)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func openStore(t testing.TB, rawURL string) store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// checkFinalHeap asserts the final capture holds a parseable heap profile
// taken before the kill whose top in-use function is want.
func checkFinalHeap(t testing.TB, st store.Store, m *capture.Metadata, want string) {
	t.Helper()
	if m.Container != "app" || m.Pod != "leaky-0" || m.Namespace != "e2e" || m.Memory.LimitBytes != appLimit || m.PID <= 1 || m.Port == 0 {
		t.Errorf("final capture metadata: container %q pod %q ns %q limit %d pid %d port %d",
			m.Container, m.Pod, m.Namespace, m.Memory.LimitBytes, m.PID, m.Port)
	}
	if podsim.CgroupVersion() == 2 && m.Pressure == nil {
		t.Errorf("final capture %s on cgroup v2 without memory.pressure", m.ID)
	}
	if err := testkit.FinalHeap(st, m, want); err != nil {
		t.Error(err)
	} else if m.Pressure != nil {
		record(t, fmt.Sprintf("captured psi_some_avg10=%.2f psi_full_avg10=%.2f", m.Pressure.SomeAvg10, m.Pressure.FullAvg10))
	} else {
		record(t, "captured")
	}
}
