// Package cgrouptest runs a real allocating process in its own memory
// cgroup (v1 or v2, as podsim picks) inside an emulated pod, for tests of the
// cgroup and watch packages against the real kernel.
//
// The test binary itself is the allocating process: its TestMain calls
// RunIfChild, which takes over when the allocation spec is in the
// environment.
package cgrouptest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/heapwatch/heapwatch/internal/podsim"
)

const allocEnv = "HEAPWATCH_CGROUPTEST_ALLOC"

// Alloc describes what the child allocates once started: StepMiB every
// Every up to TotalMiB. With Cycle it then frees everything, waits Every×4
// and starts again, forever. Before each step it prints the wall-clock
// time in nanoseconds on stdout.
//
// With HeldInExec the child first stands for a process inside execve: it
// zeroes its argument vector, so /proc/<pid>/cmdline reads empty while it
// is alive (as between the old and the new image of an execve), and waits
// for Go; then it really execs itself under the same PID and allocates.
type Alloc struct {
	StepMiB    int
	Every      time.Duration
	TotalMiB   int
	Cycle      bool
	HeldInExec bool
}

func (a Alloc) String() string {
	return fmt.Sprintf("%d,%v,%d,%v,%v", a.StepMiB, a.Every, a.TotalMiB, a.Cycle, a.HeldInExec)
}

func parseAlloc(s string) (Alloc, string, error) {
	f := strings.Split(s, ",")
	if len(f) != 6 {
		return Alloc{}, "", fmt.Errorf("alloc spec %q: want 6 fields", s)
	}
	var a Alloc
	var errs [5]error
	a.StepMiB, errs[0] = strconv.Atoi(f[0])
	a.Every, errs[1] = time.ParseDuration(f[1])
	a.TotalMiB, errs[2] = strconv.Atoi(f[2])
	a.Cycle, errs[3] = strconv.ParseBool(f[3])
	a.HeldInExec, errs[4] = strconv.ParseBool(f[4])
	return a, f[5], errors.Join(errs[:]...)
}

// blankArgv zeroes the process's argument vector in place: the kernel reads
// /proc/<pid>/cmdline from that memory (arg_start..arg_end), and os.Args
// point into it. The arguments are copied first.
func blankArgv() []string {
	args := make([]string, len(os.Args))
	for i, a := range os.Args {
		args[i] = strings.Clone(a)
	}
	for _, a := range os.Args {
		if len(a) > 0 {
			clear(unsafe.Slice(unsafe.StringData(a), len(a)))
		}
	}
	return args
}

var hold [][]byte

// RunIfChild runs the allocator and exits when this process was started
// as one; otherwise it returns at once.
func RunIfChild() {
	spec := os.Getenv(allocEnv)
	if spec == "" {
		return
	}
	a, goFile, err := parseAlloc(spec)
	if err != nil || a.StepMiB <= 0 {
		fmt.Fprintln(os.Stderr, "cgrouptest:", spec, err)
		os.Exit(2)
	}
	var args []string
	if a.HeldInExec {
		args = blankArgv()
	}
	for {
		if _, err := os.Stat(goFile); err == nil {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if a.HeldInExec {
		a.HeldInExec = false
		env := []string{allocEnv + "=" + a.String() + "," + goFile}
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, allocEnv+"=") {
				env = append(env, kv)
			}
		}
		err := syscall.Exec(args[0], args, env)
		fmt.Fprintln(os.Stderr, "cgrouptest: exec:", err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	for {
		for done := 0; done < a.TotalMiB; done += a.StepMiB {
			fmt.Fprintln(out, time.Now().UnixNano())
			out.Flush()
			b := make([]byte, a.StepMiB<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1 // touch every page so it is charged now
			}
			hold = append(hold, b)
			time.Sleep(a.Every)
		}
		if !a.Cycle {
			select {}
		}
		hold = nil
		debug.FreeOSMemory() // returns the pages: cgroup usage falls
		time.Sleep(4 * a.Every)
	}
}

// App is an allocating process in its own container of an emulated pod.
type App struct {
	Pod       *podsim.Pod
	Container *podsim.Container
	// PID is the host PID of the allocating process.
	PID int
	// Marks receives the time printed before each allocation step.
	Marks  <-chan time.Time
	goFile string
}

// Start starts a pod with one container, name, running the test binary as
// an allocator under limit bytes. It waits until the process has exec'd
// (its cgroup view is complete) and registers cleanup of everything.
func Start(t testing.TB, name string, limit int64, readOnly bool, a Alloc) *App {
	t.Helper()
	if err := podsim.Supported(); err != nil {
		t.Skipf("needs root and a writable memory cgroup hierarchy: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	goFile := filepath.Join(t.TempDir(), "go")
	pr, pw := io.Pipe()
	marks := make(chan time.Time, 1024)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if ns, err := strconv.ParseInt(sc.Text(), 10, 64); err == nil {
				select {
				case marks <- time.Unix(0, ns):
				default:
				}
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := podsim.Start(ctx, podsim.Spec{Name: name, Containers: []podsim.ContainerSpec{{
		Name: name, Argv: []string{exe, "-test.run=^$"}, MemoryLimit: limit, ReadOnlyCgroup: readOnly,
		Env:    []string{allocEnv + "=" + a.String() + "," + goFile},
		Stdout: pw, Stderr: os.Stderr,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
		pw.Close()
	})
	c := p.Container(name)
	pid, err := c.PID()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if target, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); target == exe {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container process %d did not exec %s", pid, exe)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return &App{Pod: p, Container: c, PID: pid, Marks: marks, goFile: goFile}
}

// Go starts the allocation.
func (a *App) Go(t testing.TB) {
	t.Helper()
	if err := os.WriteFile(a.goFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}
