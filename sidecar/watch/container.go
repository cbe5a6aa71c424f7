package watch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/heapwatch/heapwatch/sidecar/cgroup"
	"github.com/heapwatch/heapwatch/sidecar/trigger"
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

// watched is one container's loop and state.
type watched struct {
	w           *Watcher
	mem         *cgroup.Memory
	notifier    *cgroup.Notifier
	trig        *trigger.Trigger
	key         string
	pidsChanged chan struct{}

	mu   sync.Mutex
	c    Container
	last Sample

	// Owned by the loop.
	prev        Sample
	oomKills    uint64
	lastKill    time.Time
	levelsFor   uint64
	haveLevels  bool
	urgentUntil time.Time
	errLogged   string
}

func (c *watched) container() Container { return c.status().Container }

func (c *watched) status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	ct := c.c
	ct.PIDs = slices.Clone(ct.PIDs)
	return Status{Container: ct, Last: c.last}
}

func (c *watched) setPIDs(pids []int) {
	c.mu.Lock()
	changed := !slices.Equal(c.c.PIDs, pids)
	c.c.PIDs = pids
	c.mu.Unlock()
	if changed {
		c.poke()
	}
}

// poke makes the loop sample and check its processes at once.
func (c *watched) poke() {
	select {
	case c.pidsChanged <- struct{}{}:
	default:
	}
}

func (c *watched) close() {
	c.notifier.Close()
	c.mem.Close()
}

// run samples at the trigger's adaptive interval and at every kernel
// notice until the container's processes or cgroup are gone.
func (c *watched) run(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		var detected time.Time
		select {
		case <-ctx.Done():
			return ctx.Err()
		case n := <-c.notifier.C():
			detected = n.At
			if n.Kind == cgroup.NoticeOOM || n.Kind == cgroup.NoticeEvents {
				c.urgentUntil = n.At.Add(urgentFor)
			}
		case <-timer.C:
		case <-c.pidsChanged:
		}
		if err := c.tick(detected); err != nil {
			return err
		}
		iv := c.trig.NextInterval()
		if time.Now().Before(c.urgentUntil) {
			iv = min(iv, urgentInterval)
		}
		timer.Reset(iv)
	}
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
		c.oomKills = s.OOMKills
		c.lastKill = s.Time
		c.w.log.Warn("container OOM-killed", "container", ct.Name, "oomKills", s.OOMKills, "lastUsage", c.prev.Usage, "limit", c.prev.Limit)
		h.OOMKilled(ct, s.Time, c.prev)
	}
	if !c.haveLevels || s.Limit != c.levelsFor {
		c.haveLevels, c.levelsFor = true, s.Limit
		if err := c.notifier.SetThresholds(c.w.o.Trigger.Levels(s.Limit)); err != nil {
			c.w.log.Warn("register memory thresholds", "container", ct.Name, "err", err)
		}
		if mode := c.notifier.Mode(); mode != ct.Notify {
			c.mu.Lock()
			c.c.Notify = mode
			c.mu.Unlock()
			ct.Notify = mode
			c.trig = trigger.New(c.w.triggerFor(mode)) // no idle stretching without notifications
			c.w.logPollOnce(ct, c.notifier.Reason())
		}
	}
	// The working set, not raw usage, is compared: page cache near the
	// limit is reclaimed before any OOM kill and is no leak.
	d := c.trig.Observe(s.Time, s.WorkingSet, s.Limit)
	if d.Suppressed != "" {
		h.Suppressed(ct, d.Kind, d.Suppressed)
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
		h.Capture(Event{Container: ct, Sample: s, Kind: d.Kind, Reason: d.Reason, Hold: d.Hold,
			Suppressed: d.Suppressed, DetectedAt: detected, Stat: stat, Pressure: pressure})
	}
	if !c.alive(ct.PIDs) {
		c.processesGone(time.Now())
		return errNoProcesses
	}
	return nil
}

// alive reports whether any of the container's processes still exists.
func (c *watched) alive(pids []int) bool {
	for _, pid := range pids {
		if c.w.fs.Proc(pid).Exists() {
			return true
		}
	}
	return false
}

// processesGone ends the container: a kill the counter shows now is
// reported; without one, processes vanishing while usage was near the
// limit are reported as an OOM kill too (the counter is missing on old
// kernels, and the group may be removed before it is read again).
func (c *watched) processesGone(at time.Time) {
	if s, err := c.mem.Sample(); err == nil && s.OOMKills > c.oomKills {
		c.oomKills = s.OOMKills
		c.mu.Lock()
		c.prev, c.last = c.last, s
		c.mu.Unlock()
		c.w.h.OOMKilled(c.container(), at, c.prev)
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
