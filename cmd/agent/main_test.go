package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/metrics"
	"github.com/heapwatch/heapwatch/internal/nodemem"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/ship"
	"github.com/heapwatch/heapwatch/internal/spool"
	"github.com/heapwatch/heapwatch/internal/testkit"
	"github.com/heapwatch/heapwatch/internal/watch"
	"github.com/heapwatch/heapwatch/store"
)

// newTestDaemons builds the agent's daemons from the config file cfg (no
// built-in daemons, node n1) and extra flags, with a spool of spoolBytes
// under dir, this machine's /proc and cgroups for the accounting, and log.
func newTestDaemons(t *testing.T, dir, cfg string, spoolBytes int64, log *slog.Logger, flags ...string) (*daemons, *spool.Spool, *metrics.Metrics, *nodemem.Collector) {
	t.Helper()
	c, err := parseFlags(append([]string{"--config", cfg, "--builtin-daemons=false"}, flags...), env(map[string]string{"NODE_NAME": "n1"}))
	if err != nil {
		t.Fatal(err)
	}
	proc, err := procfs.NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	sp, err := spool.Open(filepath.Join(dir, "spool"), spool.Options{MaxBytes: spoolBytes, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	r, err := nodemem.NewReader("/proc", "/sys/fs/cgroup", "")
	if err != nil {
		t.Fatal(err)
	}
	acct := nodemem.NewCollector(r, slog.New(slog.DiscardHandler))
	d, err := newDaemons(c, proc, sp, m, acct, log)
	if err != nil {
		t.Fatal(err)
	}
	return d, sp, m, acct
}

// TestDaemonsRouting: a daemon with a pprof endpoint gets a collector of
// its own; one without is watched for memory only: its samples reach the
// metrics and the node accounting, its triggers are logged, and it is
// dropped from the accounting when gone.
func TestDaemonsRouting(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfg, []byte("daemons:\n- name: withpprof\n  exe: a\n  pprof: unix:///nonexistent/debug.sock\n- name: memonly\n  exe: b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	d, _, m, acct := newTestDaemons(t, dir, cfg, 1<<20, slog.New(slog.NewTextHandler(&logs, nil)))
	defer d.close(time.Second)
	if _, ok := d.handlers["withpprof"]; !ok || len(d.handlers) != 1 {
		t.Fatalf("handlers %v, want one for withpprof only", d.handlers)
	}
	mem := watch.Container{Name: "memonly", PIDs: []int{os.Getpid()}}
	d.sample(mem, watch.Sample{Time: time.Now(), Usage: 7 << 20, WorkingSet: 5 << 20})
	d.Capture(watch.Event{Container: mem, Kind: "baseline", Reason: "baseline usage 7MiB"})
	if !strings.Contains(logs.String(), "without a pprof endpoint") || !strings.Contains(logs.String(), "daemon=memonly") {
		t.Errorf("log %q: want the memory-only trigger", logs.String())
	}
	daemonBytes := func() float64 {
		_, daemons, _, err := acct.Read()
		if err != nil {
			t.Fatal(err)
		}
		return float64(daemons["memonly"])
	}
	if got := daemonBytes(); got != 5<<20 {
		t.Errorf("accounted %v bytes for memonly, want its working set", got)
	}
	if n := testutil.CollectAndCount(m.Registry, "heapwatch_container_memory_working_set_bytes"); n != 1 {
		t.Errorf("%d working-set series, want memonly's", n)
	}
	d.gone(mem)
	if got := daemonBytes(); got != 0 {
		t.Errorf("gone daemon still accounted: %v", got)
	}
}

// TestBaselineWaitsForTheEndpoint: a daemon found before its pprof socket
// listens (just restarted) still gets its baseline, first in its series:
// the skipped baseline is asked again ("retry"), or the first trigger
// after the miss is taken as the baseline ("step after a miss"); once a
// baseline is stored, steps are steps again.
func TestBaselineWaitsForTheEndpoint(t *testing.T) {
	t.Run("retry", func(t *testing.T) { testBaseline(t, false) })
	t.Run("step after a miss", func(t *testing.T) {
		defer func(d time.Duration) { baselineRetry = d }(baselineRetry)
		baselineRetry = time.Hour // only the step can bring the baseline
		testBaseline(t, true)
	})
}

func testBaseline(t *testing.T, stepAfterMiss bool) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "late.sock")
	cfg := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfg, []byte("daemons:\n- name: late\n  exe: late\n  pprof: unix://"+sock+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, sp, _, _ := newTestDaemons(t, dir, cfg, 64<<20, slog.New(slog.DiscardHandler), "--profiles", "heap")
	defer d.close(time.Second)
	storage := "file://" + filepath.Join(dir, "store")
	shipper := ship.Start(sp, ship.Options{Storage: storage, Log: slog.New(slog.DiscardHandler)})
	defer func() { _ = shipper.Stop(context.Background()) }()
	st, err := store.Open(context.Background(), storage)
	if err != nil {
		t.Fatal(err)
	}

	late := watch.Container{Name: "late", Target: capture.Daemon{Node: "n1", Name: "late"}, PIDs: []int{os.Getpid()}}
	event := func(kind string, usage uint64) watch.Event {
		return watch.Event{Container: late, Kind: kind, Reason: kind, DetectedAt: time.Now(), Sample: watch.Sample{Time: time.Now(), Usage: usage, WorkingSet: usage}}
	}
	missed := func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.baselines["late"] != nil && d.baselines["late"].missed
	}
	d.Capture(event("baseline", 10<<20)) // no socket yet
	testkit.WaitFor(t, 10*time.Second, "the baseline to miss", missed)
	if !stepAfterMiss {
		d.Capture(event("step", 30<<20)) // taken as the baseline, skipped too
		testkit.WaitFor(t, 10*time.Second, "the step to miss", missed)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", httppprof.Index)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	stored := func() []capture.Name {
		var out []capture.Name
		if err := st.List(context.Background(), "", func(o store.Object) error {
			if n, profile, err := capture.ParseKey(o.Key); err == nil && profile == "" {
				out = append(out, n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if stepAfterMiss {
		d.Capture(event("step", 30<<20)) // taken as the baseline
	}
	testkit.WaitFor(t, 20*time.Second, "the baseline once the socket listens", func() bool { return len(stored()) >= 1 })
	d.Capture(event("step", 50<<20))
	testkit.WaitFor(t, 20*time.Second, "the next step", func() bool { return len(stored()) >= 2 })
	if !stepAfterMiss {
		time.Sleep(2 * baselineRetry) // a stray retry would store a second baseline by now
	}
	var triggers []string
	for _, n := range stored() {
		triggers = append(triggers, n.Trigger)
	}
	if diff := cmp.Diff([]string{"baseline", "step"}, triggers); diff != "" {
		t.Errorf("stored (-want +got):\n%s", diff)
	}
	// The baseline is the retried one (its usage), or the step's.
	var meta *capture.Metadata
	rc, err := st.Get(context.Background(), stored()[0].MetadataKey())
	if err == nil {
		var buf bytes.Buffer
		_, err = buf.ReadFrom(rc)
		rc.Close()
		if err == nil {
			meta, err = capture.DecodeMetadata(buf.Bytes())
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(10 << 20)
	if stepAfterMiss {
		want = 30 << 20
		if !strings.Contains(meta.Reason, "taken as the baseline") {
			t.Errorf("baseline reason %q", meta.Reason)
		}
	}
	if meta.Memory.UsageBytes != want {
		t.Errorf("baseline usage %d, want %d", meta.Memory.UsageBytes, want)
	}
}
