package nodemem

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestParseMeminfo(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		want     Meminfo
		err      string
	}{
		{"full", "MemTotal: 100 kB\nMemFree: 1 kB\nMemAvailable: 40 kB\nSlab: 12 kB\nSReclaimable: 8 kB\nSUnreclaim: 4 kB\nKernelStack: 2 kB\nPageTables: 3 kB\nHugePages_Total: 0\n",
			Meminfo{MemTotal: 102400, MemAvailable: 40960, Slab: 12288, SUnreclaim: 4096, KernelStack: 2048, PageTables: 3072}, ""},
		{"kernel fields optional", "MemTotal: 10 kB\nMemAvailable: 5 kB\n", Meminfo{MemTotal: 10240, MemAvailable: 5120}, ""},
		{"no MemAvailable (before Linux 3.14)", "MemTotal: 10 kB\nMemFree: 5 kB\n", Meminfo{}, "no MemAvailable"},
		{"no MemTotal", "MemAvailable: 5 kB\n", Meminfo{}, "no MemTotal"},
		{"empty", "", Meminfo{}, "no MemTotal"},
		{"not a number", "MemTotal: lots kB\nMemAvailable: 5 kB\n", Meminfo{}, "MemTotal"},
		{"negative", "MemTotal: -1 kB\nMemAvailable: 5 kB\n", Meminfo{}, "MemTotal"},
		{"unit", "MemTotal: 10 MB\nMemAvailable: 5 kB\n", Meminfo{}, "MemTotal: value"},
		{"no colon", "MemTotal 10 kB\n", Meminfo{}, "no colon"},
		{"overflow", "MemTotal: 18446744073709551615 kB\nMemAvailable: 5 kB\n", Meminfo{}, "overflows"},
		{"available above total", "MemTotal: 1 kB\nMemAvailable: 5 kB\n", Meminfo{}, "MemAvailable 5120 > MemTotal 1024"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMeminfo(strings.NewReader(tt.in))
			if tt.err != "" {
				if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want ErrMalformed naming %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestCompute(t *testing.T) {
	const gib = 1 << 30
	m := Meminfo{MemTotal: 64 * gib, MemAvailable: 10 * gib, Slab: 3 * gib, SUnreclaim: 1 * gib, KernelStack: gib / 4, PageTables: gib / 4}
	for _, tt := range []struct {
		name    string
		m       Meminfo
		pods    uint64
		daemons map[string]uint64
		want    Parts
	}{
		{"reference post-mortem: containerd holds most of the node", m, 8 * gib, map[string]uint64{"containerd": 40 * gib, "kubelet": gib / 2},
			Parts{Total: 64 * gib, Used: 54 * gib, Pods: 8 * gib, Daemons: 40*gib + gib/2, Kernel: 1*gib + gib/2, Unaccounted: 4 * gib}},
		{"the same leak with containerd not watched is unaccounted", m, 8 * gib, map[string]uint64{"kubelet": gib / 2},
			Parts{Total: 64 * gib, Used: 54 * gib, Pods: 8 * gib, Daemons: gib / 2, Kernel: 1*gib + gib/2, Unaccounted: 44 * gib}},
		{"reclaimable slab is not kernel: MemAvailable counts it", Meminfo{MemTotal: 10 * gib, MemAvailable: 2 * gib, Slab: 5 * gib, SUnreclaim: gib}, 0, nil,
			Parts{Total: 10 * gib, Used: 8 * gib, Kernel: gib, Unaccounted: 7 * gib}},
		{"more accounted than used: unaccounted is 0, not negative", m, 60 * gib, nil,
			Parts{Total: 64 * gib, Used: 54 * gib, Pods: 60 * gib, Kernel: 1*gib + gib/2}},
		{"exactly accounted", Meminfo{MemTotal: 4 * gib, MemAvailable: gib}, 2 * gib, map[string]uint64{"d": gib},
			Parts{Total: 4 * gib, Used: 3 * gib, Pods: 2 * gib, Daemons: gib}},
		{"idle node", Meminfo{MemTotal: 4 * gib, MemAvailable: 4 * gib}, 0, nil, Parts{Total: 4 * gib}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Compute(tt.m, tt.pods, tt.daemons)); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

// TestCollectorGolden reads fixture trees of real nodes' layouts (cgroup v1
// with the cgroupfs driver, v2 with the systemd driver, no kubelet yet)
// and compares the exported series with testdata/<case>/metrics.golden.
func TestCollectorGolden(t *testing.T) {
	const gib = 1 << 30
	for _, tt := range []struct {
		name    string
		daemons map[string]uint64
		root    string // the memory hierarchy the reader must find
	}{
		{"v1-cgroupfs", map[string]uint64{"containerd": 40 * gib, "kubelet": 300 << 20}, "cgroup/memory"},
		{"v2-systemd", map[string]uint64{"containerd": 40 * gib}, "cgroup"},
		{"no-kubepods", map[string]uint64{"containerd": 40 * gib}, "cgroup"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join("testdata", tt.name)
			r, err := NewReader(filepath.Join(dir, "proc"), filepath.Join(dir, "cgroup"), "")
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(dir, tt.root); r.MemoryRoot() != want {
				t.Errorf("memory hierarchy %s, want %s", r.MemoryRoot(), want)
			}
			c := NewCollector(r, slog.New(slog.NewTextHandler(io.Discard, nil)))
			for name, b := range tt.daemons {
				c.SetDaemon(name, b)
			}
			got, err := testutil.CollectAndFormat(c, expfmt.TypeTextPlain, MetricNode, MetricDaemon)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join(dir, "metrics.golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("series differ from %s (-want +got; rerun with -update if intended)\n%s", golden, diff)
			}
		})
	}
}

// TestCollectorDaemons: a removed daemon's series ends and it leaves the
// daemons part.
func TestCollectorDaemons(t *testing.T) {
	r, err := NewReader("testdata/v2-systemd/proc", "testdata/v2-systemd/cgroup", "")
	if err != nil {
		t.Fatal(err)
	}
	c := NewCollector(r, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c.SetDaemon("containerd", 100)
	c.SetDaemon("kubelet", 20)
	c.SetDaemon("containerd", 300) // a later sample replaces the first
	p, d, ok, err := c.Read()
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if p.Daemons != 320 || len(d) != 2 {
		t.Errorf("daemons part %d from %v, want 320 from two daemons", p.Daemons, d)
	}
	c.RemoveDaemon("containerd")
	if p, _, _, _ = c.Read(); p.Daemons != 20 {
		t.Errorf("daemons part %d after removing containerd, want 20", p.Daemons)
	}
	if n := testutil.CollectAndCount(c, MetricDaemon); n != 1 {
		t.Errorf("%d daemon series, want 1", n)
	}
}

// TestReaderErrors: what is missing or broken is an error naming it; a
// missing kubepods cgroup is ErrNoPodsCgroup (a value the collector
// reports by leaving out the pods part).
func TestReaderErrors(t *testing.T) {
	if _, err := NewReader("testdata/nonexistent", "testdata/v2-systemd/cgroup", ""); err == nil {
		t.Error("NewReader with a missing proc root: no error")
	}
	if _, err := NewReader("testdata/v2-systemd/proc", "testdata/v2-systemd/proc/meminfo", ""); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("NewReader with a file as cgroup root: %v", err)
	}
	r, err := NewReader("testdata/no-kubepods/proc", "testdata/no-kubepods/cgroup", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Pods(); !errors.Is(err, ErrNoPodsCgroup) || !strings.Contains(err.Error(), "kubepods.slice") {
		t.Errorf("Pods without kubepods: %v, want ErrNoPodsCgroup naming the candidates", err)
	}
	// An explicit --cgroup-root of the kubelet.
	r, err = NewReader("testdata/v2-systemd/proc", "testdata/v2-systemd/cgroup", "kubepods.slice")
	if err != nil {
		t.Fatal(err)
	}
	if pods, dir, err := r.Pods(); err != nil || pods != 9<<30 || filepath.Base(dir) != "kubepods.slice" {
		t.Errorf("Pods = %d, %s, %v; want the working set 9 GiB of kubepods.slice", pods, dir, err)
	}
	// A kubepods directory that is not a memory cgroup, and a broken meminfo.
	bad := t.TempDir()
	for _, d := range []string{"proc", "cgroup/kubepods"} {
		if err := os.MkdirAll(filepath.Join(bad, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(bad, "proc", "meminfo"), []byte("MemTotal: 1 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err = NewReader(filepath.Join(bad, "proc"), filepath.Join(bad, "cgroup"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Pods(); err == nil || errors.Is(err, ErrNoPodsCgroup) {
		t.Errorf("Pods on a non-cgroup kubepods dir: %v, want an error other than ErrNoPodsCgroup", err)
	}
	if _, err := r.Meminfo(); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "meminfo") {
		t.Errorf("Meminfo on a truncated file: %v", err)
	}
	c := NewCollector(r, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c.SetDaemon("containerd", 1)
	if _, err := testutil.CollectAndFormat(c, expfmt.TypeTextPlain, MetricNode, MetricDaemon); err == nil || !strings.Contains(err.Error(), "MemAvailable") {
		t.Errorf("scrape with a broken meminfo: %v, want an error naming it", err)
	}
}

// TestCollectorPodsAppear: a node whose kubelet has not made its cgroup
// yet exports no pods part and says so once; the part comes back as soon
// as the cgroup exists (nothing is cached).
func TestCollectorPodsAppear(t *testing.T) {
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS("testdata/no-kubepods")); err != nil {
		t.Fatal(err)
	}
	r, err := NewReader(filepath.Join(dir, "proc"), filepath.Join(dir, "cgroup"), "")
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	c := NewCollector(r, slog.New(slog.NewTextHandler(&logs, nil)))
	for range 3 {
		if _, _, ok, err := c.Read(); ok || err != nil {
			t.Fatalf("Read without kubepods: pods found %v, %v", ok, err)
		}
	}
	if n := strings.Count(logs.String(), "the pods part of node memory is not exported"); n != 1 {
		t.Errorf("%d warnings in three scrapes, want 1:\n%s", n, logs.String())
	}
	pods := filepath.Join(dir, "cgroup", "kubepods.slice")
	if err := os.Mkdir(pods, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"memory.current": "4096\n", "memory.stat": "inactive_file 0\n"} {
		if err := os.WriteFile(filepath.Join(pods, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, _, ok, err := c.Read()
	if !ok || err != nil || p.Pods != 4096 {
		t.Fatalf("Read after kubepods.slice appeared: pods %d, found %v, %v", p.Pods, ok, err)
	}
	if !strings.Contains(logs.String(), "kubepods cgroup found") {
		t.Errorf("no log line when the pods part comes back:\n%s", logs.String())
	}
}
