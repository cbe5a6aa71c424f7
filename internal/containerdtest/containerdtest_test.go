package containerdtest

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/pprof/profile"

	"github.com/heapwatch/heapwatch/internal/pprof"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/testkit"
)

func source(t *testing.T, sock string) (*pprof.URL, *testkit.Buffer) {
	t.Helper()
	fs, err := procfs.NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var logs testkit.Buffer
	s, err := pprof.NewURL("unix://"+sock, pprof.URLOptions{Proc: fs, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return s, &logs
}

// heapOf fetches containerd's heap profile through its debug socket and
// returns the names of the functions in it.
func heapOf(t *testing.T, s *pprof.URL, pid int) []string {
	t.Helper()
	ctx := context.Background()
	eps := s.Endpoints(ctx, []int{pid}, true)
	if len(eps) != 1 || eps[0].PID != pid {
		t.Fatalf("Endpoints(%d) = %+v (source %v)", pid, eps, s.LogValue())
	}
	var b bytes.Buffer
	if _, err := s.Fetch(ctx, eps[0], "heap", &b); err != nil {
		t.Fatalf("Fetch heap: %v", err)
	}
	p, err := profile.Parse(&b)
	if err != nil {
		t.Fatalf("containerd's heap profile does not parse: %v", err)
	}
	if len(p.Sample) == 0 {
		t.Fatal("containerd's heap profile has no samples")
	}
	var names []string
	for _, f := range p.Function {
		names = append(names, f.Name)
	}
	return names
}

func firstContainerd(names []string) string {
	for _, n := range names {
		if strings.HasPrefix(n, "github.com/containerd/containerd/v2/") {
			return n
		}
	}
	return ""
}

func hasContainerd(names []string) bool { return firstContainerd(names) != "" }

// TestDebugSocketServesHeap: a real containerd with its debug socket: the
// unix-socket source fetches a parseable heap profile naming containerd's
// own functions; after a restart (a new PID on the same socket) it
// fetches from the new process.
func TestDebugSocketServesHeap(t *testing.T) {
	c := Start(t, Options{})
	s, logs := source(t, c.DebugSocket)
	first := c.PID()
	names := heapOf(t, s, first)
	if !hasContainerd(names) {
		t.Fatalf("no containerd function among the heap profile's %d: %v", len(names), names)
	}
	t.Logf("containerd %d (%s): heap profile with %d functions, e.g. %s", first, c.Bin, len(names), firstContainerd(names))
	c.Restart()
	if c.PID() == first {
		t.Fatalf("restart kept PID %d", first)
	}
	if names := heapOf(t, s, c.PID()); !hasContainerd(names) {
		t.Fatalf("after restart: no containerd function in %v", names)
	}
	if n := strings.Count(logs.String(), "pprof endpoint found"); n != 2 {
		t.Errorf("%d 'found' lines, want one per containerd process:\n%s", n, logs)
	}
}

// TestNoDebugSocket: containerd as it ships, without [debug] address: no
// endpoint, and the log line says what to add to its config.
func TestNoDebugSocket(t *testing.T) {
	c := Start(t, Options{NoDebug: true})
	s, logs := source(t, c.DebugSocket)
	if eps := s.Endpoints(context.Background(), []int{c.PID()}, true); len(eps) != 0 {
		t.Fatalf("Endpoints = %+v without a debug socket", eps)
	}
	want := `[debug] address = \"` + c.DebugSocket + `\"`
	if !strings.Contains(logs.String(), want) || !strings.Contains(logs.String(), "memory is still watched") {
		t.Errorf("log lacks %s:\n%s", want, logs)
	}
}
