package collect

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // the test process serves pprof on DefaultServeMux
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/pprof"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/spool"
	"github.com/heapwatch/heapwatch/internal/testkit"
	"github.com/heapwatch/heapwatch/store"
)

// The test process itself is the watched app: it serves pprof on one port
// and holds a silent port beside it; the collector finds both through the
// real /proc.
var pprofPort, silentPort int

// childLateApp runs the test binary as an app that opens its pprof port only
// when told to (a line on stdin), then says so on stdout.
const childLateApp = "late-app"

func TestMain(m *testing.M) {
	testkit.RunChild(map[string]func() int{childLateApp: func() int { lateApp(); return 0 }})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go http.Serve(ln, nil)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() {
		// Held open, never answered, until the listener closes.
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	pprofPort = ln.Addr().(*net.TCPAddr).Port
	silentPort = silent.Addr().(*net.TCPAddr).Port
	os.Exit(m.Run())
}

type fixture struct {
	c     *Collector
	spool *spool.Spool
	store store.Store
}

// pod is the fixture's pod; its container "app" is the test process.
var pod = capture.PodContainer{Namespace: "ns", Pod: "pod-1", UID: "uid-1", Node: "node-1"}

// container is the identity of the fixture pod's container name.
func container(name string) capture.PodContainer {
	c := pod
	c.Container = name
	return c
}

// newFixture returns a collector of the test's pod through the pprof
// source on ports, logging to log (nil: discarded).
func newFixture(t *testing.T, ports []int, log *slog.Logger) *fixture {
	t.Helper()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fs, err := procfs.NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	sp, st := spoolAndStore(t)
	c := New(Options{
		Profiles: []string{"heap", "goroutine", "allocs"},
		Source: pprof.NewPorts(pprof.PortsOptions{Client: pprof.NewClient(pprof.Options{ProbeTimeout: 300 * time.Millisecond}),
			Proc: fs, Ports: ports, Log: log}),
		Spool:     sp,
		Log:       log,
		Observers: []Observer{LogObserver{Log: log}},
	})
	t.Cleanup(func() { c.Close(5 * time.Second) })
	return &fixture{c: c, spool: sp, store: st}
}

// spoolAndStore opens a spool and a file:// store in temp dirs.
func spoolAndStore(t *testing.T) (*spool.Spool, store.Store) {
	t.Helper()
	sp, err := spool.Open(t.TempDir(), spool.Options{MaxBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), "file://"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return sp, st
}

func request(kind string, hold bool) Request {
	return Request{Container: "app", Target: container("app"), PIDs: []int{os.Getpid()}, Kind: kind, Reason: "test", Hold: hold,
		DetectedAt: time.Now(), Memory: capture.Memory{UsageBytes: 100, WorkingSetBytes: 90, LimitBytes: 200},
		Stat: map[string]uint64{"rss": 80}}
}

// settle waits until the collector's workers are idle and returns the spool
// entries.
func (f *fixture) settle(t *testing.T, want int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ids, _ := f.spool.Pending()
		if len(ids) >= want {
			return ids
		}
		if time.Now().After(deadline) {
			t.Fatalf("spool has %d entries, want %d", len(ids), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (f *fixture) stored(t *testing.T) []*capture.Metadata {
	t.Helper()
	if err := f.spool.Flush(context.Background(), f.store); err != nil {
		t.Fatal(err)
	}
	var out []*capture.Metadata
	err := f.store.List(context.Background(), "", func(o store.Object) error {
		if !strings.HasSuffix(o.Key, capture.MetadataSuffix) {
			return nil
		}
		rc, err := f.store.Get(context.Background(), o.Key)
		if err != nil {
			return err
		}
		defer rc.Close()
		b, _ := io.ReadAll(rc)
		m, err := capture.DecodeMetadata(b)
		if err != nil {
			return err
		}
		out = append(out, m)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestCaptureFindsPprofBesideSilentPort(t *testing.T) {
	f := newFixture(t, nil, nil)
	f.c.Enqueue(request("threshold-60", false))
	f.settle(t, 1)
	metas := f.stored(t)
	if len(metas) != 1 {
		t.Fatalf("%d captures stored", len(metas))
	}
	m := metas[0]
	if m.PID != os.Getpid() || m.Port != pprofPort || m.Trigger != "threshold-60" || m.Pod != "pod-1" ||
		m.PodUID != "uid-1" || m.Node != "node-1" || m.Namespace != "ns" || m.Memory.LimitBytes != 200 ||
		m.MemoryStat["rss"] != 80 || m.Final {
		t.Errorf("metadata %+v", m)
	}
	if m.DetectedAt.After(m.CapturedAt) || m.CapturedAt.After(m.CompletedAt) || m.ID != m.Name().ID() {
		t.Errorf("times detected %v captured %v completed %v, id %s", m.DetectedAt, m.CapturedAt, m.CompletedAt, m.ID)
	}
	if names := profileNames(m); !slices.Equal(names, []string{"heap", "goroutine", "allocs"}) {
		t.Errorf("profiles %v", names)
	}
	rc, err := f.store.Get(context.Background(), m.Profiles[0].Key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	p, err := profile.Parse(rc)
	if err != nil {
		t.Fatalf("stored heap profile: %v", err)
	}
	if len(p.Sample) == 0 || m.Profiles[0].Bytes == 0 {
		t.Errorf("heap profile has %d samples, %d bytes", len(p.Sample), m.Profiles[0].Bytes)
	}
}

func profileNames(m *capture.Metadata) []string {
	var out []string
	for _, p := range m.Profiles {
		out = append(out, p.Name)
	}
	return out
}

func TestPortsSettingExcludesPprof(t *testing.T) {
	f := newFixture(t, []int{silentPort}, nil)
	f.c.Enqueue(request("threshold-60", false))
	f.c.Close(5 * time.Second)
	if ids, _ := f.spool.Pending(); len(ids) != 0 {
		t.Errorf("captured although only the silent port may be probed: %v", ids)
	}
}

func TestHeldCaptureShippedFinalOnKill(t *testing.T) {
	f := newFixture(t, []int{pprofPort}, nil)
	f.c.Enqueue(request("growth", true))
	first := f.settle(t, 1)[0]
	f.c.Enqueue(request("growth", true))
	// The second held capture replaces the first.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ids, held := f.spool.Pending()
		if len(ids) == 1 && held[0] && ids[0] != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pending %v held %v, want one held entry replacing %s", ids, held, first)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(f.stored(t)) != 0 {
		t.Fatal("held capture uploaded before any kill")
	}
	killed := time.Now()
	f.c.Killed("app", killed)
	f.c.Close(5 * time.Second)
	metas := f.stored(t)
	if len(metas) != 1 || !metas[0].Final || metas[0].OOMKilledAt == nil || !metas[0].OOMKilledAt.Equal(killed.UTC()) {
		t.Fatalf("stored %+v, want one final capture killed at %v", metas, killed)
	}
}

func TestStoredCaptureAmendedFinalOnKill(t *testing.T) {
	f := newFixture(t, nil, nil)
	f.c.Enqueue(request("growth", true))
	f.settle(t, 1)
	f.c.Enqueue(request("threshold-90", false))
	f.settle(t, 2)
	killed := time.Now()
	f.c.Killed("app", killed)
	f.c.Killed("app", killed.Add(time.Second)) // a second kill with no capture in between
	f.c.Close(5 * time.Second)
	metas := f.stored(t)
	if len(metas) != 1 {
		t.Fatalf("%d captures stored, want the threshold one (the older held one discarded)", len(metas))
	}
	if m := metas[0]; m.Trigger != "threshold-90" || !m.Final || !m.OOMKilledAt.Equal(killed.UTC()) {
		t.Errorf("stored %+v", m)
	}
}

func TestCoalescedCapturesHaveDistinctKeys(t *testing.T) {
	f := newFixture(t, nil, nil)
	for range 20 {
		f.c.Enqueue(request("threshold-60", false))
	}
	f.c.Close(10 * time.Second)
	metas := f.stored(t)
	if len(metas) == 0 || len(metas) >= 20 {
		t.Errorf("%d captures for 20 requests queued at once, want coalescing", len(metas))
	}
	seen := map[string]bool{}
	for _, m := range metas {
		if seen[m.ID] {
			t.Errorf("duplicate capture id %s", m.ID)
		}
		seen[m.ID] = true
	}
}

// logBuffer collects the collector's JSON log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), `"msg":"`+msg+`"`)
}

func TestSeenDiscoversAheadAndLogsMissingPprofOnce(t *testing.T) {
	logs := &logBuffer{}
	f := newFixture(t, nil, slog.New(slog.NewJSONHandler(logs, nil)))

	// The test process serves pprof: found from the samples alone.
	f.c.Seen("app", []int{os.Getpid()})
	waitLog(t, logs, "pprof endpoint found", 1)
	if ids, _ := f.spool.Pending(); len(ids) != 0 {
		t.Errorf("discovery captured: %v", ids)
	}

	// A process without any listening port: logged once, however often
	// it is seen or triggered.
	sleeper := exec.Command("sleep", "30")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() }()
	pids := []int{sleeper.Process.Pid}
	f.c.Seen("quiet", pids)
	waitLog(t, logs, "no pprof endpoint found in container; captures will be skipped until one appears", 1)
	for range 3 {
		f.c.Seen("quiet", pids)
		f.c.Enqueue(Request{Container: "quiet", Target: container("quiet"), PIDs: pids, Kind: "threshold-60"})
	}
	f.c.Close(5 * time.Second)
	if n := logs.count("no pprof endpoint found in container; captures will be skipped until one appears"); n != 1 {
		t.Errorf("missing pprof logged %d times, want once", n)
	}
	if ids, _ := f.spool.Pending(); len(ids) != 0 {
		t.Errorf("captured from a container without pprof: %v", ids)
	}
}

func lateApp() {
	bufio.NewReader(os.Stdin).ReadString('\n')
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println("listening")
	http.Serve(ln, nil)
}

// TestCaptureRechecksAppThatListenedLate: a process first seen before it
// opened its pprof port (during exec, or while the app starts) is captured
// as soon as a trigger fires, not after the rediscovery interval.
func TestCaptureRechecksAppThatListenedLate(t *testing.T) {
	logs := &logBuffer{}
	f := newFixture(t, nil, slog.New(slog.NewJSONHandler(logs, nil)))

	app := testkit.Child(childLateApp)
	stdin, err := app.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := app.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Process.Kill(); _ = app.Wait() })
	pids := []int{app.Process.Pid}

	f.c.Seen("late", pids)
	waitLog(t, logs, "no pprof endpoint found in container; captures will be skipped until one appears", 1)
	fmt.Fprintln(stdin, "listen")
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "listening\n" {
		t.Fatalf("late app said %q", line)
	}
	// One trigger, well within rediscoverAfter of the first look, and no
	// further samples: only a fresh look at the process can find the port.
	f.c.Enqueue(Request{Container: "late", Target: container("late"), PIDs: pids, Kind: "threshold-60", DetectedAt: time.Now()})
	f.settle(t, 1)
}

func waitLog(t *testing.T, logs *logBuffer, msg string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for logs.count(msg) < n {
		if time.Now().After(deadline) {
			t.Fatalf("no %q log within 10s", msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCoalesce(t *testing.T) {
	shipped := func(kind string) *Request { return &Request{Kind: kind} }
	held := func(kind string) *Request { return &Request{Kind: kind, Hold: true} }
	tests := []struct {
		name               string
		queued, r          *Request
		wantKeep, wantDrop string
	}{
		{"nothing queued", nil, shipped("predictive"), "predictive", ""},
		{"newer shipped replaces shipped", shipped("threshold-60"), shipped("predictive"), "predictive", "threshold-60"},
		{"shipped replaces held", held("growth"), shipped("predictive"), "predictive", "growth"},
		{"held does not displace shipped", shipped("predictive"), held("growth"), "predictive", "growth"},
		{"newer held replaces held", held("growth"), held("threshold-60"), "threshold-60", "growth"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keep, dropped := coalesce(tt.queued, tt.r)
			dropKind := ""
			if dropped != nil {
				dropKind = dropped.Kind
			}
			if keep.Kind != tt.wantKeep || dropKind != tt.wantDrop {
				t.Errorf("coalesce = keep %q drop %q, want keep %q drop %q", keep.Kind, dropKind, tt.wantKeep, tt.wantDrop)
			}
		})
	}
}
