package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/podsim"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/spool"
	"github.com/heapwatch/heapwatch/internal/testkit"
	"github.com/heapwatch/heapwatch/store/s3test"
)

// Each benchmark does a fixed amount of work per b.N (at least minRuns pods
// per shape), so it stays bounded with the default -benchtime; run longer
// with e.g. -benchtime=30x (30 runs per shape).
const minRuns = 10

// BenchmarkCaptureRate runs each leak shape to its OOM kill repeatedly and
// reports the share of kills that left a usable final heap profile
// (capture-%), the lead time from that capture to the kill, and the
// detection latency (trigger seen → fetch started) of every capture.
func BenchmarkCaptureRate(b *testing.B) {
	requirePods(b)
	for _, tt := range shapes {
		b.Run(tt.shape, func(b *testing.B) {
			runs := max(minRuns, b.N)
			var ok int
			var lead, detect []time.Duration
			for i := range runs {
				m, all, err := oneKill(b, tt.shape, append(slices.Clone(tt.args), "-delay", "1s"))
				for _, c := range all {
					detect = append(detect, c.CapturedAt.Sub(c.DetectedAt))
				}
				if err == nil {
					err = testkit.FinalHeap(openStore(b, m.storage), m.meta, tt.fn)
				}
				if err != nil {
					b.Logf("run %d: no usable capture: %v", i, err)
					continue
				}
				ok++
				lead = append(lead, m.meta.OOMKilledAt.Sub(m.meta.CapturedAt))
			}
			b.ReportMetric(100*float64(ok)/float64(runs), "capture-%")
			b.ReportMetric(float64(runs), "runs")
			if len(lead) > 0 {
				b.ReportMetric(testkit.Millis(testkit.Percentile(lead, 50)), "lead-p50-ms")
				b.ReportMetric(testkit.Millis(slices.Min(lead)), "lead-min-ms")
			}
			if len(detect) > 0 {
				b.ReportMetric(testkit.Millis(testkit.Percentile(detect, 50)), "detect-p50-ms")
				b.ReportMetric(testkit.Millis(testkit.Percentile(detect, 99)), "detect-p99-ms")
			}
		})
	}
}

// BenchmarkAppStartsWithSidecar runs TestAppStartsWithSidecar's pod (the
// app started with the sidecar, leaking at once) to its OOM kill at least
// 20 times and reports the share of kills that left a usable final heap
// profile.
func BenchmarkAppStartsWithSidecar(b *testing.B) {
	requirePods(b)
	runs := max(20, b.N)
	ok := 0
	for i := range runs {
		m, _, err := oneKill(b, startWithSidecar.shape, startWithSidecar.appArgs)
		if err == nil {
			err = testkit.FinalHeap(openStore(b, m.storage), m.meta, "main.leakLinear")
		}
		if err != nil {
			b.Logf("run %d: no usable capture: %v", i, err)
			continue
		}
		ok++
	}
	b.ReportMetric(100*float64(ok)/float64(runs), "capture-%")
	b.ReportMetric(float64(runs), "runs")
	b.ReportMetric(0, "ns/op")
}

type killResult struct {
	storage string
	meta    *capture.Metadata
}

// oneKill runs one pod to the app's OOM kill and returns the final capture
// and every capture stored.
func oneKill(b *testing.B, shape string, args []string) (killResult, []*capture.Metadata, error) {
	var res killResult
	var all []*capture.Metadata
	err := func() error {
		r := startPod(b, podOptions{shape: shape, appArgs: args})
		defer r.pod.Close()
		res.storage = r.storage
		deadline := time.Now().Add(time.Minute)
		for {
			if n, _ := r.app.OOMKills(); n > 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("no OOM kill within a minute")
			}
			time.Sleep(20 * time.Millisecond)
		}
		st := openStore(b, r.storage)
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			all = captures(b, st)
			if i := slices.IndexFunc(all, func(m *capture.Metadata) bool { return m.Final }); i >= 0 {
				res.meta = all[i]
				return nil
			}
		}
		return fmt.Errorf("no final capture (%d captures); pod log:\n%s", len(all), lastLines(r.logs.String(), 60))
	}()
	return res, all, err
}

// lastLines keeps the end of a log for a failure message.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// BenchmarkDetectionLatency reports how long the sidecar takes from seeing
// a threshold crossed to starting the fetch, over a ladder of nine
// thresholds per run, with kernel notifications (writable cgroup view) and
// without them (read-only view: polling only).
func BenchmarkDetectionLatency(b *testing.B) {
	requirePods(b)
	for _, mode := range []struct {
		name     string
		readOnly bool
	}{{"notify", false}, {"polling", true}} {
		b.Run(mode.name, func(b *testing.B) {
			var detect []time.Duration
			for range max(3, b.N) {
				r := startPod(b, podOptions{shape: "linear", appArgs: []string{"-rate", "20", "-delay", "1s"}, readOnlyCG: mode.readOnly,
					env: []string{"HEAPWATCH_THRESHOLDS=10,20,30,40,50,60,70,80,90", "HEAPWATCH_COOLDOWN=0s",
						"HEAPWATCH_MAX_PER_HOUR=1000", "HEAPWATCH_HORIZON=0s"}})
				r.waitOOMKill(b, time.Minute)
				time.Sleep(time.Second) // the last uploads
				for _, m := range captures(b, openStore(b, r.storage)) {
					if strings.HasPrefix(m.Trigger, "threshold") {
						detect = append(detect, m.CapturedAt.Sub(m.DetectedAt))
					}
				}
				r.pod.Close()
			}
			if len(detect) == 0 {
				b.Fatal("no threshold captures")
			}
			b.ReportMetric(float64(len(detect)), "captures")
			b.ReportMetric(testkit.Millis(testkit.Percentile(detect, 50)), "p50-ms")
			b.ReportMetric(testkit.Millis(testkit.Percentile(detect, 99)), "p99-ms")
		})
	}
}

// BenchmarkSidecarCPU reports the sidecar's CPU use, in % of one core, while
// it watches one idle container with a limit, beside the floor of that
// work: testdata/pollfloor.c (built here with the machine's cc), which
// sleeps one interval and preads the files the sidecar reads per idle
// sample (cgroup.SampleFiles) of the same cgroup, and nothing else, and
// testdata/gofloor, the same loop in Go (what the Go runtime alone costs
// per wakeup). All run at the same time, so the ratios are side by side:
// ratio-schedstat is sidecar / C floor, gofloor-ratio-schedstat Go floor /
// C floor, ratio-to-gofloor-schedstat sidecar / Go floor. CPU is
// utime+stime from /proc/<pid>/stat (10 ms ticks; cpu-%) and the summed
// per-thread schedstat run time (ns; cpu-%-schedstat) over the same
// window; ratio-schedstat = sidecar / floor. "polling": a read-only cgroup
// view (every real pod); "notify": a writable one (v1 eventfd). The 10 ms
// sampling case has no floor (the sidecar's sampling then runs at its
// fastest only near a level).
func BenchmarkSidecarCPU(b *testing.B) {
	requirePods(b)
	floor, gofloor := buildFloor(b), buildGoFloor(b)
	window := 40 * time.Second
	if v := os.Getenv("HEAPWATCH_CPU_WINDOW"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			window = d
		}
	}
	for _, tc := range []struct {
		name, interval string
		readOnly       bool
	}{{"100ms/polling", "100ms", true}, {"100ms/notify", "100ms", false}, {"10ms/polling", "10ms", true}} {
		b.Run(tc.name, func(b *testing.B) {
			r := startPod(b, podOptions{shape: "none", readOnlyCG: tc.readOnly, env: []string{"HEAPWATCH_INTERVAL=" + tc.interval}})
			pid, err := r.sidecar.PID()
			if err != nil {
				b.Fatal(err)
			}
			fpid, gpid := 0, 0
			if tc.interval == "100ms" {
				var files []string
				for _, f := range cgroup.SampleFiles(cgroup.V1) {
					files = append(files, filepath.Join(r.app.CgroupDir, f))
				}
				fpid = startFloor(b, floor, files)
				gpid = startFloor(b, gofloor, files)
			}
			waitUntil(b, 10*time.Second, "the app to be watched", func() bool {
				return strings.Contains(r.logs.String(), `"msg":"watching container","container":"app"`)
			})
			time.Sleep(2 * time.Second) // past start-up: first samples, registration, rate known
			s0, err := cpuTime(pid)
			if err != nil {
				b.Fatal(err)
			}
			f0, _ := cpuTime(fpid)
			g0, _ := cpuTime(gpid)
			start := time.Now()
			time.Sleep(window)
			s1, err := cpuTime(pid)
			if err != nil {
				b.Fatal(err)
			}
			f1, _ := cpuTime(fpid)
			g1, _ := cpuTime(gpid)
			elapsed := time.Since(start)
			b.ReportMetric(s1.sub(s0).tickPct(elapsed), "cpu-%")
			b.ReportMetric(s1.sub(s0).runPct(elapsed), "cpu-%-schedstat")
			if fpid != 0 {
				if f1.runNS == 0 {
					b.Fatalf("floor program %d not measured", fpid)
				}
				b.ReportMetric(f1.sub(f0).tickPct(elapsed), "floor-cpu-%")
				b.ReportMetric(f1.sub(f0).runPct(elapsed), "floor-cpu-%-schedstat")
				b.ReportMetric(float64(s1.runNS-s0.runNS)/float64(f1.runNS-f0.runNS), "ratio-schedstat")
				if g1.runNS == 0 {
					b.Fatalf("Go floor program %d not measured", gpid)
				}
				b.ReportMetric(g1.sub(g0).runPct(elapsed), "gofloor-cpu-%-schedstat")
				b.ReportMetric(float64(g1.runNS-g0.runNS)/float64(f1.runNS-f0.runNS), "gofloor-ratio-schedstat")
				b.ReportMetric(float64(s1.runNS-s0.runNS)/float64(g1.runNS-g0.runNS), "ratio-to-gofloor-schedstat")
				if ft := f1.ticks - f0.ticks; ft > 0 {
					b.ReportMetric(float64(s1.ticks-s0.ticks)/float64(ft), "ratio-ticks")
				}
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// buildFloor compiles testdata/pollfloor.c with the machine's C compiler.
func buildFloor(b *testing.B) string {
	b.Helper()
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	out := filepath.Join(b.TempDir(), "pollfloor")
	if msg, err := exec.Command(cc, "-O2", "-o", out, "testdata/pollfloor.c").CombinedOutput(); err != nil {
		b.Fatalf("building the floor program with %s: %v\n%s", cc, err, msg)
	}
	return out
}

// buildGoFloor builds testdata/gofloor, the same floor written in Go.
func buildGoFloor(b *testing.B) string {
	b.Helper()
	out := filepath.Join(b.TempDir(), "gofloor")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/gofloor")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("building the Go floor program: %v\n%s", err, msg)
	}
	return out
}

// startFloor runs a floor program at 100 ms over files until the benchmark
// ends, and returns its PID.
func startFloor(b *testing.B, bin string, files []string) int {
	b.Helper()
	return startFloorAt(b, bin, 100, files)
}

// startFloorAt runs a floor program at intervalMS over files.
func startFloorAt(b *testing.B, bin string, intervalMS int, files []string) int {
	b.Helper()
	cmd := exec.Command(bin, append([]string{strconv.Itoa(intervalMS)}, files...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

// cpuUse is a process's CPU time so far.
type cpuUse struct {
	ticks uint64 // utime+stime, USER_HZ ticks
	runNS uint64 // summed schedstat run time of every thread
}

func (a cpuUse) sub(b cpuUse) cpuUse { return cpuUse{a.ticks - b.ticks, a.runNS - b.runNS} }

func (a cpuUse) tickPct(d time.Duration) float64 {
	const clkTck = 100 // USER_HZ on Linux
	return 100 * float64(a.ticks) / clkTck / d.Seconds()
}

func (a cpuUse) runPct(d time.Duration) float64 { return 100 * float64(a.runNS) / float64(d) }

// cpuTime returns utime+stime in clock ticks and the summed on-CPU time of
// every thread in ns.
func cpuTime(pid int) (cpuUse, error) {
	var u cpuUse
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	// Fields after comm start at field 3; utime and stime are 14 and 15.
	for _, f := range fields[11:13] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return u, err
		}
		u.ticks += v
	}
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil {
		return u, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // thread exited
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			v, _ := strconv.ParseUint(f[0], 10, 64)
			u.runNS += v
		}
	}
	return u, nil
}

// BenchmarkSidecarPeakRSSUpload reports the sidecar's peak RSS (VmHWM) while
// it stores a 100 MB profile left in its spool to the S3 server, as after a
// restart with the storage unreachable before.
func BenchmarkSidecarPeakRSSUpload(b *testing.B) {
	requirePods(b)
	srv := s3test.Start(b)
	srv.Setenv(b)
	for range b.N {
		spoolDir := b.TempDir()
		meta := bigCapture(b, spoolDir, 100<<20)
		logs := &testkit.Buffer{}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		pod, err := podsim.Start(ctx, podsim.Spec{Name: "rss", Containers: []podsim.ContainerSpec{{
			Name: "heapwatch", Argv: []string{sidecarBin, "--spool-dir", spoolDir, "--metrics-addr", ""},
			Env: append(srv.Env(), "HEAPWATCH_STORAGE="+srv.URL("rss")), MemoryLimit: sidecarLimit, Stdout: logs, Stderr: logs,
		}}})
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		pid, err := pod.Container("heapwatch").PID()
		if err != nil {
			b.Fatal(err)
		}
		st := openStore(b, srv.URL("rss"))
		deadline := time.Now().Add(2 * time.Minute)
		for len(captures(b, st)) == 0 || spooled(b, spoolDir) > 0 {
			if time.Now().After(deadline) {
				b.Fatalf("100 MB capture not stored within 2 minutes:\n%s", logs.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		fsys, err := procfs.NewFS("/proc")
		if err != nil {
			b.Fatal(err)
		}
		hwm, err := fsys.Proc(pid).PeakRSS()
		if err != nil {
			b.Fatal(err)
		}
		_ = pod.Close()
		if _, err := testkit.ReadObject(st, meta.Profiles[0].Key); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(hwm)/(1<<20), "peak-rss-MiB")
	}
}

// bigCapture commits a capture with a heap profile of n bytes into a spool.
func bigCapture(b testing.TB, dir string, n int64) *capture.Metadata {
	sp, err := spool.Open(dir, spool.Options{MaxBytes: 2 * n})
	if err != nil {
		b.Fatal(err)
	}
	w, err := sp.Begin()
	if err != nil {
		b.Fatal(err)
	}
	f, err := w.Create("heap")
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Truncate(n); err != nil { // sparse: the content does not matter
		b.Fatal(err)
	}
	f.Close()
	meta := &capture.Metadata{SchemaVersion: capture.SchemaVersion, Namespace: "bench", Pod: "rss", Container: "app",
		Trigger: "threshold-90", CapturedAt: time.Now()}
	meta.ID = meta.Name().ID()
	meta.Profiles = []capture.Profile{{Name: "heap", Key: meta.Name().ProfileKey("heap"), Bytes: n}}
	if _, err := w.Commit(meta, false); err != nil {
		b.Fatal(err)
	}
	return meta
}
