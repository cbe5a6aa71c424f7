package watch

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/cgroup/cgrouptest"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/trigger"
)

type nopHandler struct{}

func (nopHandler) Capture(Event)                          {}
func (nopHandler) OOMKilled(Container, time.Time, Sample) {}
func (nopHandler) Suppressed(Container, string, string)   {}

// selfCgroup is the real /proc and this process's own memory cgroup.
func selfCgroup(b *testing.B) (procfs.FS, string) {
	fsys, err := procfs.NewFS("/proc")
	if err != nil {
		b.Fatal(err)
	}
	dir, _, err := cgroup.Locate(fsys.Proc(os.Getpid()))
	if err != nil {
		b.Skipf("no memory cgroup: %v", err)
	}
	return fsys, dir
}

// BenchmarkTick is the cost of one sampling tick of a watched container:
// sample the cgroup (raw preads of usage, limit and oom_control; memory.stat
// and max_usage at most once a second), run the trigger, check the processes are alive. The cgroup is
// this process's own real v1 memory cgroup.
func BenchmarkTick(b *testing.B) {
	fsys, dir := selfCgroup(b)
	mem, err := cgroup.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	mem.SetStatRefresh(time.Second, 1<<20) // as the watcher does
	n := mem.Notify()
	w := New(Options{Trigger: trigger.Options{Thresholds: []float64{90}, Absolute: 1 << 50}}, fsys, nopHandler{}, nil)
	c := &watched{w: w, mem: mem, notifier: n, trig: trigger.New(w.o.Trigger),
		c: Container{Name: "self", PIDs: []int{os.Getpid()}}, stop: make(chan struct{})}
	defer c.close()
	b.ReportAllocs()
	for b.Loop() {
		if err := c.tick(time.Time{}); err != nil {
			b.Fatal(err)
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuOver returns this process's CPU time over d of sleeping, in percent
// of one core.
func cpuOver(d time.Duration) float64 {
	c0, t0 := cpuTime(), time.Now()
	time.Sleep(d)
	return 100 * (cpuTime() - c0).Seconds() / time.Since(t0).Seconds()
}

// cpuPercent averages cpuOver 3 s per benchmark iteration.
func cpuPercent(b *testing.B) float64 {
	var sum float64
	n := 0
	for b.Loop() {
		sum += cpuOver(3 * time.Second)
		n++
	}
	b.ReportMetric(0, "ns/op")
	return sum / float64(n)
}

// watchOne starts w and waits until it watches a container.
func watchOne(b *testing.B, w *Watcher) Status {
	startWatcher(b, w)
	deadline := time.Now().Add(5 * time.Second)
	for len(snapshot(w)) == 0 {
		if time.Now().After(deadline) {
			b.Fatal("container not watched")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return snapshot(w)[0]
}

// podView is the /proc of an emulated pod's PID namespace: what a sidecar
// in that pod sees (its own processes only, PID 1 the pause-like init).
func podView(b *testing.B, app *cgrouptest.App) procfs.FS {
	fsys, err := procfs.NewFS("/proc/" + strconv.Itoa(app.Pod.InitPID()) + "/root/proc")
	if err != nil {
		b.Fatal(err)
	}
	return fsys
}

// BenchmarkWatcherCPU runs the whole watcher (rescans every second, one
// watched idle container, in the pod's own /proc view) and reports the CPU
// time of this process per wall-clock second as a percentage of one core,
// beside the same process's CPU without a watcher (idle-%cpu). "eventfd":
// a writable cgroup view, thresholds registered, steady samples stretched
// to IdleInterval; "poll": a read-only view, sampling at the interval.
func BenchmarkWatcherCPU(b *testing.B) {
	for _, iv := range []time.Duration{100 * time.Millisecond, 10 * time.Millisecond} {
		for _, readOnly := range []bool{false, true} {
			mode := "eventfd"
			if readOnly {
				mode = "poll"
			}
			b.Run("interval="+iv.String()+"/"+mode, func(b *testing.B) {
				app := cgrouptest.Start(b, uniqueName("cpu"), 256*mib, readOnly, cgrouptest.Alloc{StepMiB: 1, Every: time.Second, TotalMiB: 1})
				fsys := podView(b, app)
				idle := cpuOver(2 * time.Second)
				w := New(Options{Trigger: trigger.Options{Thresholds: []float64{60, 75, 90}, Interval: iv, MinInterval: iv}}, fsys, nopHandler{}, nil)
				if got := watchOne(b, w).Container.Notify; string(got) != mode {
					b.Fatalf("mode %s, want %s", got, mode)
				}
				time.Sleep(2 * time.Second) // past start-up: first samples, registration, rate known
				b.ReportMetric(cpuPercent(b), "%cpu")
				b.ReportMetric(idle, "idle-%cpu")
			})
		}
	}
}

// BenchmarkTickerFloor is the reference for BenchmarkWatcherCPU: the CPU
// cost of an empty Go ticker, i.e. of the runtime waking up at that
// interval and doing nothing, on this machine.
func BenchmarkTickerFloor(b *testing.B) {
	for _, iv := range []time.Duration{time.Second, 100 * time.Millisecond, 10 * time.Millisecond} {
		b.Run("interval="+iv.String(), func(b *testing.B) {
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				t := time.NewTicker(iv)
				defer t.Stop()
				for {
					select {
					case <-t.C:
					case <-stop:
						return
					}
				}
			}()
			b.ReportMetric(cpuPercent(b), "%cpu")
		})
	}
}

// latencyRecorder timestamps Capture calls.
type latencyRecorder struct {
	nopHandler
	c chan captured
}

func (r latencyRecorder) Capture(ev Event) {
	r.c <- captured{ev: ev, at: time.Now()}
}

// BenchmarkDetectionLatency measures, over repeated real crossings of a
// 10 % threshold (51 MiB of 512 MiB) by a process allocating 4 MiB steps
// up to 80 MiB (then freeing it all so the rung re-arms), the time from
// the kernel notification being read to the handler being called
// (notify-p50/p99), and from just before the crossing 4 MiB step started
// to the handler call (alloc-p50/p99: an upper bound on crossed->handler
// that includes faulting in the step's pages).
func BenchmarkDetectionLatency(b *testing.B) {
	const limit = 512 * mib
	name := uniqueName("lat")
	app := cgrouptest.Start(b, name, limit, false, cgrouptest.Alloc{StepMiB: 4, Every: 20 * time.Millisecond, TotalMiB: 80, Cycle: true})
	rec := latencyRecorder{c: make(chan captured, 64)}
	w := New(Options{Trigger: trigger.Options{Thresholds: []float64{10}, GrowthFloor: 99, Interval: 100 * time.Millisecond}},
		podView(b, app), rec, nil)
	if m := watchOne(b, w).Container.Notify; m != cgroup.ModeEventfd {
		b.Fatalf("notification mode %s, want eventfd", m)
	}
	app.Go(b)
	var notify, alloc []time.Duration
	var lastMark time.Time
	n := max(b.N, 20)
	for len(notify) < n {
		select {
		case c := <-rec.c:
			// The crossing step is the last one started before the call;
			// give its mark time to come through the pipe.
			time.Sleep(10 * time.Millisecond)
			for drained := false; !drained; {
				select {
				case m := <-app.Marks:
					if !m.After(c.at) {
						lastMark = m
					}
				default:
					drained = true
				}
			}
			notify = append(notify, c.at.Sub(c.ev.DetectedAt))
			alloc = append(alloc, c.at.Sub(lastMark))
		case <-time.After(10 * time.Second):
			b.Fatalf("no capture after %d crossings", len(notify))
		}
	}
	b.ReportMetric(pct(notify, 50), "notify-p50-µs")
	b.ReportMetric(pct(notify, 99), "notify-p99-µs")
	b.ReportMetric(pct(alloc, 50), "alloc-p50-µs")
	b.ReportMetric(pct(alloc, 99), "alloc-p99-µs")
	b.ReportMetric(0, "ns/op")
}

func pct(d []time.Duration, p int) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return float64(s[max(i-1, 0)].Microseconds())
}

// BenchmarkDiscoveryProbe compares ways to notice a new process at every
// tick: the probe (/proc/loadavg's last PID), /proc/sys/kernel/ns_last_pid,
// a cgroup.procs file (the pod cgroup's would do, where it is visible) and
// listing /proc (what the periodic rescan does, without reading any
// process's files).
func BenchmarkDiscoveryProbe(b *testing.B) {
	fsys, dir := selfCgroup(b)
	for _, path := range []string{"/proc/loadavg", "/proc/sys/kernel/ns_last_pid", dir + "/cgroup.procs"} {
		b.Run(filepath.Base(path), func(b *testing.B) {
			f, err := cgroup.OpenRaw(path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			buf := make([]byte, 64<<10)
			for b.Loop() {
				if _, err := f.Pread(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("list /proc", func(b *testing.B) {
		for b.Loop() {
			if _, err := fsys.PIDs(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
