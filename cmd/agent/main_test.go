package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/heapwatch/heapwatch/internal/metrics"
	"github.com/heapwatch/heapwatch/internal/nodemem"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/spool"
	"github.com/heapwatch/heapwatch/internal/watch"
)

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
	c, err := parseFlags([]string{"--config", cfg, "--builtin-daemons=false"}, env(map[string]string{"NODE_NAME": "n1"}))
	if err != nil {
		t.Fatal(err)
	}
	proc, err := procfs.NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	sp, err := spool.Open(filepath.Join(dir, "spool"), spool.Options{MaxBytes: 1 << 20, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	r, err := nodemem.NewReader("/proc", "/sys/fs/cgroup", "")
	if err != nil {
		t.Fatal(err)
	}
	acct := nodemem.NewCollector(r, slog.New(slog.DiscardHandler))
	var logs strings.Builder
	d, err := newDaemons(c, proc, sp, m, acct, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
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
