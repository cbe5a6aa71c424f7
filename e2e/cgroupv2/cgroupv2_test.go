// Package cgroupv2 runs the sidecar's real-kernel suites (internal/podsim,
// the real-kernel tests of internal/cgroup, and e2e) on a cgroup v2
// kernel: it builds them as static test binaries, boots a VM with
// internal/vm, runs them inside and asserts on what they report. On the
// host the same suites run on cgroup v1; podsim picks the version from the
// kernel it runs on.
//
// HEAPWATCH_V2_RUN restricts every suite to the tests matching it (as
// -test.run); HEAPWATCH_V2_SUMMARY names a file that receives the line
// "cgroup v2: N OOM kills, M captured".
package cgroupv2

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/internal/vm"
)

// suite is one test binary run in the VM.
type suite struct {
	pkg string
	// run selects the tests that need the real kernel; fixture tests
	// stay on the host.
	run string
	// skip leaves out tests that need more than the VM holds.
	skip string
}

var suites = []suite{
	{"./internal/podsim", "", ""},
	{"./internal/cgroup", "^TestReal", ""},
	// The controller's test needs kube-apiserver and etcd, which stay on the
	// host: what the controller reads (pod status, storage) does not depend
	// on the cgroup version.
	// The agent's host-daemon test makes its service cgroup in the host's
	// v1 memory hierarchy. Its containerd test runs containerd built on the
	// host into ./bin/node (internal/node), which the VM does not hold.
	{"./e2e", "", "^(TestControllerRealOOMKill|TestAgentLeakingHostDaemon|TestAgentContainerd)$"},
}

// guestDir holds the binaries in the VM.
const guestDir = "/opt/heapwatch"

// lineWriter sends complete lines to t.Log as they arrive.
type lineWriter struct {
	t   testing.TB
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.WriteString(line)
			return len(p), nil
		}
		w.t.Log(strings.TrimRight(line, "\n"))
	}
}

// vgwMeta is where versitygw keeps object metadata in the guest: its /tmp
// is tmpfs, which on 6.1 has no user xattrs for the posix backend.
const vgwMeta = "/tmp/versitygw-meta"

// bootSuiteVM builds the suites' test binaries, the sidecar, the leaky app,
// the CLI and a static versitygw, and boots a VM holding them.
func bootSuiteVM(tb testing.TB, log *lineWriter) (*vm.VM, time.Duration) {
	tb.Helper()
	ctx := tb.Context()
	bins := tb.TempDir()
	start := time.Now()
	files := map[string]string{}
	var builds []func() error
	for _, s := range suites {
		name := filepath.Base(s.pkg) + ".test"
		files[guestDir+"/"+name] = filepath.Join(bins, name)
		builds = append(builds, func() error { return vm.GoBuild(ctx, filepath.Join(bins, name), s.pkg, true) })
		if err := addTestdata(files, s); err != nil {
			tb.Fatal(err)
		}
	}
	for name, pkg := range map[string]string{"sidecar": "./cmd/sidecar", "leaky": "./examples/leaky", "heapwatch": "./cmd/heapwatch"} {
		files[guestDir+"/"+name] = filepath.Join(bins, name)
		builds = append(builds, func() error { return vm.GoBuild(ctx, filepath.Join(bins, name), pkg, false) })
	}
	files[guestDir+"/versitygw"] = filepath.Join(bins, "versitygw")
	builds = append(builds, func() error { return buildVersitygw(ctx, filepath.Join(bins, "versitygw")) })
	for _, b := range builds {
		if err := b(); err != nil {
			tb.Fatal(err)
		}
	}
	buildTime := time.Since(start)
	v, err := vm.Boot(ctx, vm.Config{Files: files, MemoryMiB: 2048, CPUs: 2, Log: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := v.Close(); err != nil {
			tb.Error(err)
		}
	})
	mkdir := []string{"mkdir", "-p", vgwMeta}
	for _, s := range suites {
		mkdir = append(mkdir, suiteDir(s))
	}
	if res, err := v.Run(ctx, vm.Command{Argv: mkdir}); err != nil || res.ExitCode != 0 {
		tb.Fatalf("mkdir in the VM: %v", err)
	}
	return v, buildTime
}

// suiteDir is where a suite runs in the guest: a directory holding its
// package's testdata, as go test runs a package in its source directory.
func suiteDir(s suite) string { return guestDir + "/" + filepath.Base(s.pkg) }

// addTestdata adds the files of the suite's testdata directory, if it has
// one, under its suiteDir.
func addTestdata(files map[string]string, s suite) error {
	src := filepath.Join(vm.ModuleRoot(), s.pkg, "testdata")
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		files[suiteDir(s)+"/testdata/"+filepath.ToSlash(rel)] = path
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// suiteEnv is the environment of the test binaries in the guest.
func suiteEnv(summary string) []string {
	return []string{"HEAPWATCH_E2E_BIN=" + guestDir, "HEAPWATCH_E2E_SUMMARY=" + summary,
		"HEAPWATCH_VERSITYGW=" + guestDir + "/versitygw", "VGW_META_SIDECAR=" + vgwMeta}
}

func TestCgroupV2Suite(t *testing.T) {
	ctx := t.Context()
	v, buildTime := bootSuiteVM(t, &lineWriter{t: t})

	filter := os.Getenv("HEAPWATCH_V2_RUN")
	var outputs bytes.Buffer
	var timings []string
	const summary = "/tmp/heapwatch-e2e-summary"
	var summaryFile []byte
	for _, s := range suites {
		argv := []string{guestDir + "/" + filepath.Base(s.pkg) + ".test", "-test.v", "-test.count=1", "-test.timeout=15m"}
		if run := firstOf(filter, s.run); run != "" {
			argv = append(argv, "-test.run="+run)
		}
		if s.skip != "" {
			argv = append(argv, "-test.skip="+s.skip)
		}
		runCtx, cancel := context.WithTimeout(ctx, 16*time.Minute)
		res, err := v.Run(runCtx, vm.Command{Argv: argv, Dir: suiteDir(s), Output: &lineWriter{t: t},
			Env: suiteEnv(summary), Collect: []string{summary}})
		cancel()
		if err != nil && res == nil {
			t.Fatal(err)
		}
		outputs.Write(res.Output)
		if b, ok := res.Files[summary]; ok {
			summaryFile = b
		}
		timings = append(timings, fmt.Sprintf("%s %v", s.pkg, res.Duration.Round(time.Second)))
		if res.ExitCode != 0 {
			t.Errorf("%s in the VM: exit code %d", s.pkg, res.ExitCode)
		}
	}
	checkResults(t, outputs.String(), filter == "")

	t.Logf("e2e summary (kills, and captures with their PSI):\n%s", summaryFile)
	kills, captured := countSummary(summaryFile)
	line := fmt.Sprintf("cgroup v2: %d OOM kills, %d captured", kills, captured)
	t.Logf("time: build %v, %s; %s", buildTime.Round(time.Second), v.Timings, strings.Join(timings, ", "))
	t.Log(line)
	if path := os.Getenv("HEAPWATCH_V2_SUMMARY"); path != "" {
		if err := os.WriteFile(path, []byte(line+"\n"), 0o644); err != nil {
			t.Error(err)
		}
	}
	if filter == "" && (kills == 0 || captured == 0) {
		t.Errorf("%s: the suite must OOM-kill and capture", line)
	}
}

func firstOf(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

var resultRE = regexp.MustCompile(`(?m)^\s*--- (PASS|FAIL|SKIP): (\S+)`)

// checkResults fails on any failed or skipped test in the VM (a skip there
// means the v2 path was not exercised) and, for a full run, checks that
// every leak shape passed.
func checkResults(t *testing.T, out string, full bool) {
	t.Helper()
	passed := map[string]bool{}
	for _, m := range resultRE.FindAllStringSubmatch(out, -1) {
		switch m[1] {
		case "PASS":
			passed[m[2]] = true
		default:
			t.Errorf("%s in the cgroup v2 VM: %s", m[1], m[2])
		}
	}
	if !full {
		return
	}
	for _, name := range []string{
		"TestOOMKillLeavesFinalHeapProfile/notify/linear", "TestOOMKillLeavesFinalHeapProfile/notify/doubling",
		"TestOOMKillLeavesFinalHeapProfile/notify/burst", "TestOOMKillLeavesFinalHeapProfile/notify/jump",
		"TestOOMKillLeavesFinalHeapProfile/polling/linear", "TestOOMKillLeavesFinalHeapProfile/polling/doubling",
		"TestOOMKillLeavesFinalHeapProfile/polling/burst", "TestOOMKillLeavesFinalHeapProfile/polling/jump",
		"TestExplainRealOOMKill/linear", "TestExplainRealOOMKill/shmem",
		"TestS3DownMidRunLosesNothing", "TestRealOOMKill", "TestCgroupSeenFromAnotherContainer",
	} {
		if !passed[name] {
			t.Errorf("%s did not pass in the cgroup v2 VM", name)
		}
	}
}

// countSummary counts the e2e suite's "oom_kill" and "captured" lines.
func countSummary(b []byte) (kills, captured int) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		switch strings.Fields(sc.Text() + " ")[0] {
		case "oom_kill":
			kills++
		case "captured":
			captured++
		}
	}
	return kills, captured
}

// buildVersitygw builds the S3-compatible server statically from its tools
// module (the host's ./bin/versitygw links libc; the VM has none).
func buildVersitygw(ctx context.Context, out string) error {
	cmd := exec.CommandContext(ctx, "go", "-C", filepath.Join(vm.ModuleRoot(), ".ci", "tools", "versitygw"),
		"build", "-trimpath", "-o", out, "github.com/versity/versitygw/cmd/versitygw")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build versitygw: %w\n%s", err, b)
	}
	return nil
}

// BenchmarkCgroupV2 runs the e2e suite's capture-rate and CPU benchmarks in
// the cgroup v2 VM and prints their result lines prefixed with "v2/", beside
// the same benchmarks' v1 lines from e2e in the same `make bench`,
// and every miss with its pod log. HEAPWATCH_V2_BENCH replaces the
// benchmark pattern (e.g. BenchmarkCaptureRate/burst).
func BenchmarkCgroupV2(b *testing.B) {
	v, _ := bootSuiteVM(b, &lineWriter{t: b})
	pattern := firstOf(os.Getenv("HEAPWATCH_V2_BENCH"), "BenchmarkCaptureRate|BenchmarkSidecarCPU/100ms")
	res, err := v.Run(b.Context(), vm.Command{
		Argv: []string{guestDir + "/e2e.test", "-test.run=^$", "-test.bench=" + pattern,
			"-test.benchtime=1x", "-test.timeout=60m"},
		Dir: "/tmp", Env: suiteEnv("/tmp/heapwatch-e2e-summary")})
	if err != nil {
		b.Fatal(err)
	}
	if res.ExitCode != 0 {
		b.Fatalf("benchmarks in the VM: exit code %d\n%s", res.ExitCode, res.Output)
	}
	n, miss := 0, false
	for line := range strings.SplitSeq(string(res.Output), "\n") {
		switch {
		case strings.HasPrefix(line, "Benchmark") && strings.Contains(line, "\t"):
			fmt.Println("v2/" + line)
			n++
			miss = false
		case strings.Contains(line, "no usable capture"):
			miss = true
		}
		if miss {
			fmt.Println("v2: " + line)
		}
	}
	if n == 0 {
		b.Fatalf("no benchmark results from the VM:\n%s", res.Output)
	}
}
