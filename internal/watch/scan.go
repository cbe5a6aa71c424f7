package watch

import (
	"path/filepath"
	"sync"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/trigger"
)

// scan re-reads the process list, groups processes by memory cgroup and
// starts or updates container loops. The cgroup of every candidate process
// is re-read each scan: a process may start in one cgroup and be moved
// into its container's just before exec.
//
// It returns young when a new group was left for later: see settleAge.
func (w *Watcher) scan(wg *sync.WaitGroup) (young bool) {
	found, err := w.d.Discover()
	if err != nil {
		w.log.Warn("list processes", "err", err)
		return false
	}
	groups := make(map[string][]int, len(found))
	for key, g := range found {
		groups[key] = g.PIDs
	}
	for key := range w.firstSeen {
		if _, ok := groups[key]; !ok {
			delete(w.firstSeen, key)
		}
	}
	now := time.Now()
	// A watched container missing from the list may have exited: its loop
	// checks its processes now rather than at its next (idle) sample.
	w.mu.Lock()
	for key, c := range w.containers {
		if _, ok := groups[key]; !ok {
			c.poke()
		}
	}
	w.mu.Unlock()
	verdicts := map[string]Unwatched{}
	for key, members := range groups {
		w.mu.Lock()
		c := w.containers[key]
		w.mu.Unlock()
		if c != nil {
			delete(w.firstSeen, key) // a restart in the same group settles again
			c.setPIDs(members)
			continue
		}
		first, seen := w.firstSeen[key]
		if !seen {
			w.firstSeen[key] = now
			first = now
		}
		if now.Sub(first) < settleAge && !found[key].Settled {
			young = true
			continue
		}
		if u := w.start(wg, key, found[key]); u != nil {
			verdicts[key] = *u
		}
	}
	w.report(verdicts)
	return young
}

// settleAge is how long a memory cgroup must have had processes before the
// watcher opens it, unless its discoverer tells it is settled (Group). A
// container runtime joins the container's first process to its cgroup,
// then finishes its mounts (a read-only cgroupfs, pivot_root) and execs: a
// sidecar that opened the cgroup view or registered a notification in that
// window could make a remount fail (EBUSY), harming the app, and would
// read a view that is about to change.
const settleAge = 200 * time.Millisecond

// start opens a new container's cgroup and starts watching it, or returns
// why it is not watched (nil while that is not known yet). Nothing is
// cached: a container not watched is looked at again at every scan, so a
// limit set later, a process that joins its cgroup late or a view that
// becomes readable is picked up.
func (w *Watcher) start(wg *sync.WaitGroup, key string, g Group) *Unwatched {
	members := g.PIDs
	name, target, sure := w.d.Identify(key, g)
	if !sure {
		w.requestRescan() // looked at again at once
		return nil
	}
	if !w.wanted(name) {
		return &Unwatched{Container: name, Reason: ReasonNotInWatchList, PIDs: members}
	}
	mem, dir, version, err := w.open(g)
	if err != nil {
		return w.unreadable(name, members, err)
	}
	s, err := mem.Sample()
	if err != nil {
		mem.Close()
		return w.unreadable(name, members, err)
	}
	if !w.o.Trigger.Watches(w.limitOf(s)) {
		mem.Close()
		return &Unwatched{Container: name, Reason: ReasonNoLimit, PIDs: members,
			Detail: "no memory limit and no absolute threshold (heapwatch.io/threshold-bytes) is set"}
	}
	w.watch(wg, key, name, target, dir, version, members, mem, s)
	return nil
}

// open opens what a group's memory is read from: its cgroup, found
// through a member's view, or its members' resident set (Group.RSS).
func (w *Watcher) open(g Group) (mem memory, dir string, version cgroup.Version, err error) {
	if g.RSS {
		return newRSSMemory(w.fs, g.PIDs), "", 0, nil
	}
	if w.o.CgroupRoot != "" {
		return openUnder(w.o.CgroupRoot, g.Path)
	}
	for _, pid := range g.PIDs {
		if dir, version, err = cgroup.Locate(w.fs.Proc(pid)); err == nil {
			break
		}
	}
	if err != nil {
		return nil, "", 0, err
	}
	m, err := cgroup.Open(dir)
	if err != nil {
		return nil, "", 0, err
	}
	return m, dir, version, nil
}

// limitOf is the limit the trigger compares s against: the group's own,
// else Options.NodeMemory.
func (w *Watcher) limitOf(s Sample) uint64 {
	if s.Limit == 0 {
		return w.o.NodeMemory
	}
	return s.Limit
}

// watch starts sampling an opened group whose first sample is s.
func (w *Watcher) watch(wg *sync.WaitGroup, key, name string, target capture.Target, dir string, version cgroup.Version, members []int, mem memory, s Sample) {
	var n *cgroup.Notifier
	switch m := mem.(type) {
	case *cgroup.Memory:
		// Idle samples reuse memory.stat for a second; a move of 1 % of the
		// limit (1 MiB without one) re-reads it.
		m.SetStatRefresh(time.Second, max(s.Limit/100, 1<<20))
		if w.o.ReadOnly {
			n = m.NotifyReadOnly()
		} else {
			n = m.Notify()
		}
	default:
		n = cgroup.Polling(errNoCgroupOfItsOwn)
	}
	c := &watched{w: w, s: w.sampler, mem: mem, notifier: n, trig: trigger.New(w.o.Trigger), key: key,
		c:    Container{Name: name, Target: target, CgroupPath: dir, PIDs: members, Version: version, Notify: n.Mode()},
		last: s, oomKills: s.OOMKills, stop: make(chan struct{}), aliveAt: s.Time}
	if r, ok := mem.(*rssMemory); ok {
		r.follow(func() []int { return c.container().PIDs })
	}
	if n.Mode() == cgroup.ModePoll {
		w.logPollOnce(c.c, n.Reason())
	}
	w.log.Info("watching container", "container", name, "pids", members, "cgroup", dir,
		"cgroupVersion", int(version), "notify", string(n.Mode()), "limit", s.Limit, "usage", s.Usage, "triggers", w.o.Trigger.Kinds())
	w.mu.Lock()
	w.containers[key] = c
	w.mu.Unlock()
	wg.Go(c.forward)
	w.sampler.add(c)
}

// openUnder opens the memory cgroup at path under a cgroupfs mounted at
// root: the v1 memory hierarchy when root has one, else v2.
func openUnder(root, path string) (memory, string, cgroup.Version, error) {
	hierarchy, err := cgroup.MemoryHierarchy(root)
	if err != nil {
		return nil, "", 0, err
	}
	dir := filepath.Join(hierarchy, path)
	m, err := cgroup.Open(dir)
	if err != nil {
		return nil, "", 0, err
	}
	return m, dir, m.Version(), nil
}
