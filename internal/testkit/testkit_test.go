package testkit

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	RunChild(map[string]func() int{
		"echo": func() int { fmt.Print("child ", os.Getenv("TESTKIT_WORD")); return 3 },
	})
	os.Exit(m.Run())
}

func TestChild(t *testing.T) {
	cmd := Child("echo")
	cmd.Env = append(cmd.Env, "TESTKIT_WORD=hello")
	out, err := cmd.Output()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 3 {
		t.Fatalf("child: %v, want exit code 3", err)
	}
	if string(out) != "child hello" {
		t.Errorf("child output %q, want %q: the role's code, not the tests, ran", out, "child hello")
	}
	cmd = Child("no-such-role")
	if out, err := cmd.CombinedOutput(); cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "unknown child role") {
		t.Errorf("unknown role: %v %q, want exit code 2 naming the role", err, out)
	}
}

// fatalTB records Fatalf instead of ending the test.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Fatalf(format string, args ...any) { f.msg = fmt.Sprintf(format, args...) }

func TestWaitFor(t *testing.T) {
	var n atomic.Int32
	WaitFor(t, 10*time.Second, "three polls", func() bool { return n.Add(1) == 3 })
	if n.Load() != 3 {
		t.Errorf("polled %d times, want 3", n.Load())
	}
	f := &fatalTB{TB: t}
	WaitFor(f, 20*time.Millisecond, "nothing", func() bool { return false })
	if f.msg != "timed out after 20ms waiting for nothing" {
		t.Errorf("timeout message %q", f.msg)
	}
}
