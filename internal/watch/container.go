package watch

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/trigger"
)

const (
	// urgentInterval is the sampling interval right after a kernel OOM
	// notice, until the kill shows in the counters.
	urgentInterval = 10 * time.Millisecond
	urgentFor      = 500 * time.Millisecond
	// nearLimit is the usage ratio at which processes vanishing without a
	// counted kill are taken for an OOM kill (kernels without oom_kill
	// counters; kills the counter has not shown yet).
	nearLimit = 0.9
)

// errNoProcesses ends a container's loop when its processes are gone.
var errNoProcesses = errors.New("no processes left in the container")

// aliveEvery is how often an idle container's processes are checked
// for exits (its sampling interval otherwise; a rescan that misses them,
// or a poke, checks at once).
const aliveEvery = time.Second

// watched is one container's state, sampled by the sampler.
type watched struct {
	w        *Watcher
	s        *sampler
	mem      memory
	notifier *cgroup.Notifier
	trig     *trigger.Trigger
	key      string
	// due makes the sampler take a sample at its next pass (a poke, a
	// kernel notice); stop ends the notice forwarder.
	due  atomic.Bool
	stop chan struct{}

	mu   sync.Mutex
	c    Container // c.PIDs is replaced, never modified in place
	last Sample
	// notice is the earliest unhandled kernel notice, if any; urgentUntil
	// follows an OOM notice.
	notice      time.Time
	urgentUntil time.Time

	// Owned by the sampler.
	next       time.Time
	prev       Sample
	oomKills   uint64
	lastKill   time.Time
	levelsFor  uint64
	haveLevels bool
	aliveAt    time.Time
	checkAlive bool
	errLogged  string
}

// container is the current state; its PIDs must not be modified.
func (c *watched) container() Container {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.c
}

func (c *watched) setPIDs(pids []int) {
	c.mu.Lock()
	changed := !slices.Equal(c.c.PIDs, pids)
	if changed {
		c.c.PIDs = pids
	}
	c.mu.Unlock()
	if changed {
		c.poke()
	}
}

// poke makes the sampler sample the container and check its processes at
// once.
func (c *watched) poke() {
	c.mu.Lock()
	c.checkAlive = true
	c.mu.Unlock()
	c.due.Store(true)
	c.s.kick()
}

// forward turns the notifier's notices into immediate samples. It runs only
// when a notice comes, never per sample.
func (c *watched) forward() {
	for {
		select {
		case <-c.stop:
			return
		case n := <-c.notifier.C():
			c.mu.Lock()
			if c.notice.IsZero() {
				c.notice = n.At
			}
			if n.Kind == cgroup.NoticeOOM || n.Kind == cgroup.NoticeEvents {
				c.urgentUntil = n.At.Add(urgentFor)
			}
			c.mu.Unlock()
			c.due.Store(true)
			c.s.kick()
		}
	}
}

// takeNotice returns and clears the time of the pending kernel notice (zero
// when the sample is a timed one).
func (c *watched) takeNotice() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	at := c.notice
	c.notice = time.Time{}
	return at
}

// interval is the time to the container's next sample.
func (c *watched) interval() time.Duration {
	c.mu.Lock()
	urgent := time.Now().Before(c.urgentUntil)
	mode := c.c.Notify
	c.mu.Unlock()
	iv := c.trig.NextInterval(c.w.idleInterval(mode))
	if urgent {
		iv = min(iv, urgentInterval)
	}
	return iv
}

func (c *watched) close() {
	close(c.stop)
	c.notifier.Close()
	c.mem.Close()
}

// tick takes one sample and acts on it.
func (c *watched) tick(detected time.Time) error {
	h := c.w.h
	s, err := c.mem.Sample()
	if err != nil {
		if errors.Is(err, cgroup.ErrGone) {
			c.processesGone(time.Now())
			return err
		}
		if msg := err.Error(); msg != c.errLogged {
			c.errLogged = msg
			c.w.log.Warn("sample memory cgroup", "container", c.c.Name, "err", err)
		}
		return nil
	}
	if detected.IsZero() {
		detected = s.Time
	}
	c.mu.Lock()
	c.prev, c.last = c.last, s
	c.mu.Unlock()
	ct := c.container()
	if c.w.o.OnSample != nil {
		c.w.o.OnSample(ct, s)
	}
	if s.OOMKills > c.oomKills {
		c.oomKilled(ct, s, s.Time)
	}
	registered := !c.haveLevels || s.Limit != c.levelsFor
	if registered {
		c.haveLevels, c.levelsFor = true, s.Limit
		if err := c.notifier.SetThresholds(c.w.o.Trigger.Levels(s.Limit)); err != nil {
			c.w.log.Warn("register memory thresholds", "container", ct.Name, "err", err)
		}
	}
	// A notifier that could not register, or stopped (NoticeFailed), is in
	// poll mode: sample at the normal interval from now on, never stretched.
	if mode := c.notifier.Mode(); mode != ct.Notify {
		c.mu.Lock()
		c.c.Notify = mode
		c.mu.Unlock()
		was := ct.Notify
		ct.Notify = mode
		if registered { // the registration was refused: a read-only view
			c.w.logPollOnce(ct, c.notifier.Reason())
		} else {
			c.w.log.Warn("kernel memory notifications stopped; sampling at the normal interval", "container", ct.Name,
				"was", string(was), "reason", c.notifier.Reason())
		}
	}
	// The working set, not raw usage, is compared: page cache near the
	// limit is reclaimed before any OOM kill and is no leak.
	d := c.trig.Observe(trigger.Sample{Time: s.Time, Usage: s.WorkingSet, Limit: c.w.limitOf(s)})
	if d.Suppressed != "" {
		h.Suppressed(ct, string(d.Kind), d.Suppressed)
	}
	if d.Fire {
		stat, err := c.mem.Stat()
		if err != nil {
			c.w.log.Debug("read memory.stat", "container", ct.Name, "err", err)
		}
		var pressure *cgroup.Pressure
		if p, ok, err := c.mem.Pressure(); err != nil {
			c.w.log.Debug("read memory.pressure", "container", ct.Name, "err", err)
		} else if ok {
			pressure = &p
		}
		c.w.log.Info("trigger fired", "container", ct.Name, "kind", d.Kind, "reason", d.Reason, "hold", d.Hold)
		h.Capture(Event{Container: ct, Sample: s, Kind: string(d.Kind), Reason: d.Reason, Hold: d.Hold,
			Suppressed: d.Suppressed, DetectedAt: detected, Stat: stat, Pressure: pressure})
	}
	c.mu.Lock()
	check := c.checkAlive || s.Time.Sub(c.aliveAt) >= aliveEvery
	c.checkAlive = false
	c.mu.Unlock()
	if check {
		c.aliveAt = s.Time
		if !c.alive(ct.PIDs) {
			c.processesGone(time.Now())
			return errNoProcesses
		}
	}
	return nil
}

// alive reports whether any of the container's processes still exists.
func (c *watched) alive(pids []int) bool {
	for _, pid := range pids {
		if exists(c.w.fs.Proc(pid).Path()) {
			return true
		}
	}
	return false
}

// exists is a raw access(2) F_OK: see cgroup.RawFile for why raw.
func exists(path string) bool {
	var buf [256]byte
	if len(path) >= len(buf) {
		_, err := os.Stat(path)
		return err == nil
	}
	copy(buf[:], path)
	cwd := unix.AT_FDCWD
	_, _, e := syscall.RawSyscall6(syscall.SYS_FACCESSAT, uintptr(cwd), uintptr(unsafe.Pointer(&buf[0])), unix.F_OK, 0, 0, 0)
	return e == 0
}

// oomKilled reports the kill the counter shows in s, seen at at: the one
// place a counted kill is logged and handed on, whether a tick or the
// container's end saw it first.
func (c *watched) oomKilled(ct Container, s Sample, at time.Time) {
	c.oomKills = s.OOMKills
	c.lastKill = at
	c.w.log.Warn("container OOM-killed", "container", ct.Name, "oomKills", s.OOMKills, "lastUsage", c.prev.Usage, "limit", c.prev.Limit)
	c.w.h.OOMKilled(ct, at, c.prev)
}

// processesGone ends the container: a kill the counter shows now is
// reported; without one, processes vanishing while usage was near the
// limit are reported as an OOM kill too (the counter is missing on old
// kernels, and the group may be removed before it is read again).
func (c *watched) processesGone(at time.Time) {
	if s, err := c.mem.Sample(); err == nil && s.OOMKills > c.oomKills {
		c.mu.Lock()
		c.prev, c.last = c.last, s
		c.mu.Unlock()
		c.oomKilled(c.container(), s, at)
		return
	}
	c.mu.Lock()
	last := c.last
	c.mu.Unlock()
	recentKill := !c.lastKill.IsZero() && at.Sub(c.lastKill) < 5*time.Second
	if !recentKill && last.Limit > 0 && last.Ratio() >= nearLimit {
		c.w.log.Warn("container processes vanished near the memory limit: taken for an OOM kill",
			"container", c.c.Name, "usage", last.Usage, "limit", last.Limit, "ratio", fmt.Sprintf("%.2f", last.Ratio()))
		c.w.h.OOMKilled(c.container(), at, last)
	}
}
