// Package testkit holds the helpers the test suites share: waiting for a
// condition, skipping what needs root, and re-executing the test binary as
// a child process. Cgroup helpers are in internal/cgroup/cgrouptest, the S3
// server in store/s3test.
package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

// WaitFor polls cond until it holds, and fails the test when timeout
// passes first. Polling starts at 5 ms (a condition that is about to hold
// is seen at once) and backs off to 50 ms (an expensive one, such as
// listing a store, does not load the machine).
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for sleep := 5 * time.Millisecond; !cond(); sleep = min(2*sleep, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
			return
		}
		time.Sleep(sleep)
	}
}

// NeedsRoot skips t unless it runs as root; why says what root is for.
func NeedsRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root " + why)
	}
}

// childEnv names the role a re-executed test binary plays.
const childEnv = "HEAPWATCH_TESTKIT_CHILD"

// Child returns a command that re-executes the test binary as the child
// role: a process of its own (its own memory, limits, exit) running code
// of the test package. The package's TestMain calls [RunChild] first.
// Callers may append to Env and set the other fields.
func Child(role string) *exec.Cmd {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+role)
	return cmd
}

// RunChild, called first in TestMain, runs the role this process was
// started as by [Child] and exits with its code; otherwise it returns.
func RunChild(roles map[string]func() int) {
	role := os.Getenv(childEnv)
	if role == "" {
		return
	}
	run, ok := roles[role]
	if !ok {
		fmt.Fprintf(os.Stderr, "testkit: unknown child role %q\n", role)
		os.Exit(2)
	}
	os.Exit(run())
}
