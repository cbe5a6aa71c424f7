package collect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/source"
)

// funcSource is a second Source: profiles made by an in-process function,
// for PIDs that are not processes at all (the pprof source would find no
// port for them).
type funcSource struct {
	serves map[int]bool
	mu     sync.Mutex
	forgot []source.Endpoint
}

func (s *funcSource) Endpoints(_ context.Context, pids []int, _ bool) []source.Endpoint {
	var out []source.Endpoint
	for _, pid := range pids {
		if s.serves[pid] {
			out = append(out, source.Endpoint{PID: pid, Addr: fmt.Sprintf("func:%d", pid)})
		}
	}
	return out
}

func (s *funcSource) Fetch(_ context.Context, ep source.Endpoint, profile string, w io.Writer) (int64, error) {
	if profile == "goroutine" {
		return 0, errors.New("no goroutine profile here")
	}
	n, err := io.WriteString(w, profile+" of "+ep.Addr)
	return int64(n), err
}

func (s *funcSource) Forget(ep source.Endpoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forgot = append(s.forgot, ep)
}

func (s *funcSource) LogValue() slog.Value { return slog.StringValue("func") }

// recorder is a second Observer: it keeps every event.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) Observe(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func (r *recorder) outcomes() []Outcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Outcome
	for _, ev := range r.events {
		out = append(out, ev.Outcome)
	}
	return out
}

// daemon is a target that is not a pod's container.
type daemon struct{ node, name string }

func (d daemon) Segments() [3]string { return [3]string{"_node", d.node, d.name} }
func (d daemon) Describe(m *capture.Metadata) {
	m.TargetKind, m.Node, m.Container = "test-daemon", d.node, d.name
}

func init() {
	capture.RegisterTarget("test-daemon", func(m *capture.Metadata) capture.Target { return daemon{m.Node, m.Container} })
}

// TestSeamsSourceObserverTarget: a collector given another Source, an
// Observer and a non-pod Target fetches through that source only, stores
// under the target's keys, and tells the observer every outcome.
func TestSeamsSourceObserverTarget(t *testing.T) {
	sp, st := spoolAndStore(t)
	src := &funcSource{serves: map[int]bool{4242: true}}
	rec := &recorder{}
	c := New(Options{Profiles: []string{"heap", "goroutine"}, Source: src, Spool: sp, Observers: []Observer{rec}})
	target := daemon{node: "node-1", name: "containerd"}
	c.Enqueue(Request{Container: "containerd", Target: target, PIDs: []int{4242}, Kind: "growth", DetectedAt: time.Now()})
	c.Enqueue(Request{Container: "quiet", Target: daemon{"node-1", "quiet"}, PIDs: []int{4343}, Kind: "growth"})
	c.Enqueue(Request{Container: "quiet", Target: daemon{"node-1", "quiet"}, PIDs: []int{4343}, Kind: "growth"})
	waitFor(t, "the capture and two skips", func() bool {
		o := rec.outcomes()
		return slices.Contains(o, Stored) && countOf(o, NoEndpoint)+countOf(o, Coalesced) == 2
	})
	c.Killed("containerd", time.Now())
	c.Close(5 * time.Second)

	o := rec.outcomes()
	if countOf(o, Stored) != 1 || countOf(o, Final) != 1 || countOf(o, Missing) != 1 || countOf(o, Failed) != 0 {
		t.Fatalf("outcomes %v, want one stored, one final, quiet missing once and no failure", o)
	}
	var stored *capture.Metadata
	for _, ev := range rec.events {
		if ev.Outcome == Stored {
			stored = ev.Meta
			if ev.Target != "containerd" || ev.Endpoint.Addr != "func:4242" || ev.DetectionLatency <= 0 {
				t.Errorf("stored event %+v", ev)
			}
		}
		if ev.Outcome == Missing && (ev.Target != "quiet" || !slices.Equal(ev.PIDs, []int{4343}) || ev.Source != source.Source(src)) {
			t.Errorf("missing event %+v", ev)
		}
	}
	if !strings.HasPrefix(stored.ID, "_node/node-1/containerd/") || stored.TargetKind != "test-daemon" {
		t.Fatalf("capture stored as %q (kind %q), want under the daemon's segments", stored.ID, stored.TargetKind)
	}

	if err := sp.Flush(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	rc, err := st.Get(context.Background(), stored.Name().ProfileKey("heap"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "heap of func:4242" {
		t.Errorf("heap profile %q, want the source's bytes", b)
	}
	rc, err = st.Get(context.Background(), stored.Name().MetadataKey())
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(rc)
	rc.Close()
	m, err := capture.DecodeMetadata(mb)
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.Target()
	if err != nil || got != target || !m.Final {
		t.Errorf("stored metadata names %+v (%v), final %v; want %+v, final", got, err, m.Final, target)
	}
	if m.Profiles[1].Error == "" {
		t.Errorf("goroutine profile %+v, want its fetch error", m.Profiles[1])
	}
}

// TestFailedFetchTellsObserverAndSource: a heap fetch that fails is a
// Failed event, and the source forgets the endpoint.
func TestFailedFetchTellsObserverAndSource(t *testing.T) {
	sp, _ := spoolAndStore(t)
	src := &funcSource{serves: map[int]bool{4242: true}}
	rec := &recorder{}
	c := New(Options{Profiles: []string{"heap"}, Source: failSource{src}, Spool: sp, Observers: []Observer{rec}})
	c.Enqueue(Request{Container: "d", Target: daemon{"n", "d"}, PIDs: []int{4242}, Kind: "growth"})
	c.Close(5 * time.Second)
	if o := rec.outcomes(); !slices.Equal(o, []Outcome{Failed}) {
		t.Fatalf("outcomes %v, want one failure", o)
	}
	if len(src.forgot) != 1 || src.forgot[0].PID != 4242 || rec.events[0].Err == nil {
		t.Errorf("forgot %+v, event %+v", src.forgot, rec.events[0])
	}
}

// failSource fails every fetch.
type failSource struct{ *funcSource }

func (failSource) Fetch(context.Context, source.Endpoint, string, io.Writer) (int64, error) {
	return 0, errors.New("connection reset")
}

func countOf(list []Outcome, o Outcome) int {
	n := 0
	for _, x := range list {
		if x == o {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
