// Package watch is the sidecar's observing loop: it finds what to watch
// through a Discoverer (the other containers of the pod in the shared PID
// namespace, PodContainers), follows each one's
// memory cgroup (kernel notifications plus adaptive sampling), feeds the
// trigger and tells a Handler when to capture and when a container was
// OOM-killed.
package watch

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/trigger"
	"github.com/heapwatch/heapwatch/settings"
)

// Container is one watched container: the processes sharing a memory
// cgroup.
type Container struct {
	// Name is HEAPWATCH_CONTAINER_NAME of its processes, else the short
	// container ID from the cgroup path.
	Name string
	// Target is the identity its captures take, from the Discoverer.
	Target capture.Target
	// CgroupPath is the directory being read, through a process's view
	// (/proc/<pid>/root/sys/fs/cgroup/...).
	CgroupPath string
	// PIDs are the container's processes, ascending.
	PIDs    []int
	Version cgroup.Version
	// Notify is how crossings are noticed: eventfd, inotify or poll.
	Notify cgroup.Mode
}

// Sample is one reading of a container's memory cgroup.
type Sample = cgroup.Sample

// Event asks for a capture.
type Event struct {
	Container Container
	Sample    Sample
	// Kind and Reason come from the trigger ("threshold-75", "predictive",
	// "growth", "absolute").
	Kind, Reason string
	// Hold: keep the capture locally; ship it only if an OOM kill follows.
	Hold bool
	// Suppressed is set when a shipped trigger was demoted to a held
	// capture by cooldown or the hourly cap.
	Suppressed string
	// DetectedAt is when the crossing was seen: the kernel notification,
	// or the sample that showed it.
	DetectedAt time.Time
	// Stat is the container's memory.stat at capture time.
	Stat map[string]uint64
	// Pressure is memory.pressure at capture time, nil without PSI (v1).
	Pressure *cgroup.Pressure
}

// Handler receives the watcher's decisions. Methods are called from the
// container's loop and must return quickly (queue the work).
type Handler interface {
	// Capture: a trigger fired.
	Capture(ev Event)
	// OOMKilled: the container was OOM-killed; at is when the kill was
	// seen and last the last sample before it.
	OOMKilled(c Container, at time.Time, last Sample)
	// Suppressed: a trigger wanted to fire but cooldown or a cap stopped it.
	Suppressed(c Container, kind, why string)
}

// Options configure a Watcher.
type Options struct {
	Trigger trigger.Options
	// Discover finds what is watched; nil discovers the containers of the
	// pod in fs (PodContainers), with an empty pod identity.
	Discover Discoverer
	// Containers limits watching to these names; empty watches all.
	Containers []string
	// Rescan is how often the whole process list is re-read when nothing
	// asks for it (default 10 s; at most 1 s without the discovery probe).
	// It is re-read at once, and then at every interval for a second, when
	// a new process appears (the probe, read at every interval) or a
	// container's processes vanish.
	Rescan time.Duration
	// IdleInterval is the sampling interval of a steady container far from
	// any level when kernel threshold notifications (v1 eventfd) are
	// registered at every level, so any crossing wakes the watcher at once
	// (default 2 s; it never applies in poll or inotify mode). Exits are
	// still seen within one Rescan.
	IdleInterval time.Duration
	// OnSample, if set, is called with every sample (for metrics); it
	// must be cheap. It is called from Container-by-Container sampling in
	// one goroutine (watched.tick): the one place a sample is produced.
	OnSample func(c Container, s Sample)
	// OnGone, if set, is called when a container stops being watched (its
	// processes are gone, or its cgroup), from the sampling goroutine.
	OnGone func(Container)
	// OnUnwatched, if set, is called with the containers not watched
	// whenever that list changes (for metrics).
	OnUnwatched func([]Unwatched)
	// NodeMemory, if set, is the limit the trigger compares a group
	// without one against (the agent: the node's MemTotal).
	NodeMemory uint64
	// ReadOnly: never write to a watched cgroup, so no v1 kernel
	// notification (they are registered by writing cgroup.event_control);
	// the agent never writes to a host daemon's cgroup.
	ReadOnly bool
	// CgroupRoot, if set, is where groups' cgroups are opened (the host's
	// cgroupfs as mounted for the agent: <root>/memory/<path> on v1,
	// <root>/<path> on v2) instead of through a member's /proc/<pid>/root,
	// which needs ptrace access to the member.
	CgroupRoot string
	// NoProbe: rescan only every Rescan, not also when a new process
	// appears. On a host processes come and go all the time; a daemon
	// that restarts is found when its old process is seen gone (within a
	// second), a new one within one Rescan.
	NoProbe bool
}

const (
	defaultRescan   = 10 * time.Second
	defaultInterval = 100 * time.Millisecond // trigger.Options' default
)

// Watcher discovers and watches containers.
type Watcher struct {
	o   Options
	fs  procfs.FS
	d   Discoverer
	h   Handler
	log *slog.Logger

	rescan   chan struct{}
	interval time.Duration // the trigger's base sampling interval
	sampler  *sampler

	mu         sync.Mutex
	containers map[string]*watched // by cgroup key
	pollLogged bool

	// Owned by the Run goroutine.
	firstSeen map[string]time.Time // when each not yet watched cgroup key was first seen
	pending   map[string]Unwatched // the last scan's verdicts, by cgroup key

	reported map[string]Unwatched // under mu
}

// New returns a Watcher reading processes from fs.
func New(o Options, fs procfs.FS, h Handler, log *slog.Logger) *Watcher {
	if o.Rescan <= 0 {
		o.Rescan = defaultRescan
	}
	if o.IdleInterval <= 0 {
		o.IdleInterval = 2 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	interval := o.Trigger.Interval
	if interval <= 0 {
		interval = defaultInterval
	}
	d := o.Discover
	if d == nil {
		d = NewPodContainers(fs, capture.PodContainer{})
	}
	return &Watcher{o: o, fs: fs, d: d, h: h, log: log, rescan: make(chan struct{}, 1), interval: interval,
		containers: map[string]*watched{}, firstSeen: map[string]time.Time{}, reported: map[string]Unwatched{}}
}

// Run watches until ctx is done. It fails only if the process list cannot
// be read at all at start.
func (w *Watcher) Run(ctx context.Context) error {
	if _, err := w.fs.PIDs(); err != nil {
		return err
	}
	s, err := newSampler(w)
	if err != nil {
		return err
	}
	w.sampler = s
	probe := &probe{}
	if !w.o.NoProbe {
		probe = newProbe(w.fs.Root())
	}
	defer probe.close()
	rescan := w.o.Rescan
	if !probe.ok() && !w.o.NoProbe {
		rescan = min(rescan, time.Second)
	}
	var wg sync.WaitGroup
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		s.run(probe)
	}()
	defer func() {
		s.close()
		<-sampled
		wg.Wait()
	}()
	t := time.NewTimer(rescan)
	defer t.Stop()
	// After a new process shows up, scan at every interval for a while: it
	// may join its cgroup, or finish its exec, a moment after it is seen.
	var settleUntil time.Time
	for ctx.Err() == nil {
		if w.scan(&wg) {
			settleUntil = time.Now().Add(settleFor)
		}
		next := rescan
		if time.Now().Before(settleUntil) {
			next = w.interval
		}
		t.Reset(next)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-w.rescan:
			settleUntil = time.Now().Add(settleFor)
		}
	}
	return nil
}

// settleFor is how long the watcher keeps scanning at every interval after
// a new process or a lost container.
const settleFor = time.Second

func (w *Watcher) requestRescan() {
	select {
	case w.rescan <- struct{}{}:
	default:
	}
}

// wanted applies the name filter, by the containers setting's rule.
func (w *Watcher) wanted(name string) bool { return settings.Watches(w.o.Containers, name) }

// logPollOnce logs the fallback to polling once per sidecar, at info; the
// mode of each container is in its Container and at debug level.
func (w *Watcher) logPollOnce(c Container, reason error) {
	w.mu.Lock()
	first := !w.pollLogged
	w.pollLogged = true
	w.mu.Unlock()
	if first {
		w.log.Info("kernel memory notifications unavailable, sampling only", "container", c.Name, "cgroup", c.CgroupPath, "reason", reason)
		return
	}
	w.log.Debug("kernel memory notifications unavailable", "container", c.Name, "reason", reason)
}

// idleInterval is the sampling interval of a steady container notified in
// mode: stretched only when a crossing of any level wakes the watcher.
// The mode is passed at every sample, so a change never touches the
// trigger's state.
func (w *Watcher) idleInterval(mode cgroup.Mode) time.Duration {
	if mode == cgroup.ModeEventfd {
		return w.o.IdleInterval
	}
	return 0
}
