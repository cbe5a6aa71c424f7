package watch

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/trigger"
	"github.com/heapwatch/heapwatch/settings"
)

// procEntry caches a PID that is never watched: the sidecar itself, a
// kernel thread (PF_KTHREAD) or the pause process. Only such facts, which
// cannot change while the PID lives, are cached; every other verdict (an
// empty command line while the process is inside execve, a cgroup not
// joined yet, a name not readable yet) is taken again at the next scan.
type procEntry struct{ excluded bool }

// scan re-reads the process list, groups processes by memory cgroup and
// starts or updates container loops. The cgroup of every candidate process
// is re-read each scan: a process may start in one cgroup and be moved
// into its container's just before exec.
//
// It returns young when a new group was left for later: see settleAge.
func (w *Watcher) scan(wg *sync.WaitGroup) (young bool) {
	pids, err := w.fs.PIDs()
	if err != nil {
		w.log.Warn("list processes", "err", err)
		return false
	}
	self, selfKey := w.self()
	groups := map[string][]int{}
	paths := map[string]string{}
	live := make(map[int]bool, len(pids))
	for _, pid := range pids {
		live[pid] = true
		if e, ok := w.procs[pid]; ok && e.excluded {
			continue
		}
		p := w.fs.Proc(pid)
		excluded, final, err := w.excluded(p, self)
		if err != nil {
			continue // gone, or not readable yet: next scan
		}
		if final {
			w.procs[pid] = procEntry{excluded: true}
		}
		if excluded {
			continue
		}
		cgs, err := p.Cgroups()
		if err != nil {
			continue
		}
		path, v, ok := procfs.MemoryCgroup(cgs)
		if !ok {
			continue
		}
		key := fmt.Sprintf("v%d:%s", v, path)
		if key == selfKey {
			continue
		}
		groups[key] = append(groups[key], pid)
		paths[key] = path
	}
	for pid := range w.procs {
		if !live[pid] {
			delete(w.procs, pid)
		}
	}
	for key := range w.unnamed {
		if _, ok := groups[key]; !ok {
			delete(w.unnamed, key)
		}
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
		if now.Sub(first) < settleAge {
			young = true
			continue
		}
		if u := w.start(wg, key, paths[key], members); u != nil {
			verdicts[key] = *u
		}
	}
	w.report(verdicts)
	return young
}

// settleAge is how long a memory cgroup must have had processes before the
// watcher opens it. A container runtime joins the container's first
// process to its cgroup, then finishes its mounts (a read-only cgroupfs,
// pivot_root) and execs: a sidecar that opened the cgroup view or
// registered a notification in that window could make a remount fail
// (EBUSY), harming the app, and would read a view that is about to change.
// Waiting costs a fifth of a second of discovery.
const settleAge = 200 * time.Millisecond

// self returns the sidecar's PID in this tree and its memory cgroup key.
// Both are empty when the tree is another PID namespace's.
func (w *Watcher) self() (int, string) {
	pid, err := w.fs.Self()
	if err != nil {
		return 0, ""
	}
	cgs, err := w.fs.Proc(pid).Cgroups()
	if err != nil {
		return pid, ""
	}
	path, v, ok := procfs.MemoryCgroup(cgs)
	if !ok {
		return pid, ""
	}
	return pid, fmt.Sprintf("v%d:%s", v, path)
}

// excluded reports whether a process is left out of this scan, and final
// when that cannot change while the PID lives: the sidecar, kernel threads
// and the pause process. A zombie is left out for this scan only. The
// command line is not looked at: it is empty while a live process is inside
// execve, which every container's first process does (runc init execs the
// entrypoint under the same PID).
func (w *Watcher) excluded(p procfs.Proc, self int) (excluded, final bool, err error) {
	if p.PID == self {
		return true, true, nil
	}
	st, err := p.Stat()
	if err != nil {
		return false, false, err
	}
	if st.KernelThread() {
		return true, true, nil
	}
	if st.State == 'Z' || st.State == 'X' {
		return true, false, nil
	}
	pause, err := p.IsPause()
	if err != nil {
		return false, false, err
	}
	return pause, pause, nil
}

// name is HEAPWATCH_CONTAINER_NAME of the first member that has it, else
// the container ID from the cgroup path. sure is false when no member has
// the variable and the group was not seen unnamed before: a process inside
// execve shows an empty environment for a moment, so the fallback name is
// only taken at the second sighting.
func (w *Watcher) name(key string, members []int, path string) (name string, sure bool) {
	for _, pid := range members {
		if v, ok, err := w.fs.Proc(pid).Getenv(settings.ContainerNameEnv); err == nil && ok && v != "" {
			delete(w.unnamed, key)
			return v, true
		}
	}
	for _, pid := range members {
		// runc init ("runc:[2:INIT]") shows runc's environment, not the
		// container's, until it execs the entrypoint: on a real node that
		// can outlast two scans, so it never counts as a sighting.
		if comm, err := w.fs.Proc(pid).Comm(); err == nil && strings.HasPrefix(comm, "runc:") {
			return "", false
		}
	}
	if !w.unnamed[key] {
		w.unnamed[key] = true
		return "", false
	}
	return procfs.ContainerID(path), true
}

// start opens a new container's cgroup and starts watching it, or returns
// why it is not watched (nil while that is not known yet). Nothing is
// cached: a container not watched is looked at again at every scan, so a
// limit set later, a process that joins its cgroup late or a view that
// becomes readable is picked up.
func (w *Watcher) start(wg *sync.WaitGroup, key, path string, members []int) *Unwatched {
	name, sure := w.name(key, members, path)
	if !sure {
		w.requestRescan() // looked at again at once
		return nil
	}
	if !w.wanted(name) {
		return &Unwatched{Container: name, Reason: ReasonNotInWatchList, PIDs: members}
	}
	var dir string
	var version cgroup.Version
	var err error
	for _, pid := range members {
		if dir, version, err = cgroup.Locate(w.fs.Proc(pid)); err == nil {
			break
		}
	}
	var mem *cgroup.Memory
	if err == nil {
		mem, err = cgroup.Open(dir)
	}
	if err != nil {
		return w.unreadable(name, members, err)
	}
	s, err := mem.Sample()
	if err != nil {
		mem.Close()
		return w.unreadable(name, members, err)
	}
	if !w.o.Trigger.Watches(s.Limit) {
		mem.Close()
		return &Unwatched{Container: name, Reason: ReasonNoLimit, PIDs: members,
			Detail: "no memory limit and no absolute threshold (heapwatch.io/threshold-bytes) is set"}
	}
	w.watch(wg, key, name, dir, version, members, mem, s)
	return nil
}

// watch starts sampling an opened cgroup whose first sample is s.
func (w *Watcher) watch(wg *sync.WaitGroup, key, name, dir string, version cgroup.Version, members []int, mem *cgroup.Memory, s Sample) {
	// Idle samples reuse memory.stat for a second; a move of 1 % of the
	// limit (1 MiB without one) re-reads it.
	mem.SetStatRefresh(time.Second, max(s.Limit/100, 1<<20))
	n := mem.Notify()
	c := &watched{w: w, s: w.sampler, mem: mem, notifier: n, trig: trigger.New(w.triggerFor(n.Mode())), key: key,
		c:    Container{Name: name, CgroupPath: dir, PIDs: members, Version: version, Notify: n.Mode()},
		last: s, oomKills: s.OOMKills, stop: make(chan struct{}), aliveAt: s.Time}
	if n.Mode() == cgroup.ModePoll {
		w.logPollOnce(c.c, n.Reason())
	}
	w.log.Info("watching container", "container", name, "pids", members, "cgroup", dir,
		"cgroupVersion", int(version), "notify", string(n.Mode()), "limit", s.Limit, "usage", s.Usage)
	w.mu.Lock()
	w.containers[key] = c
	w.mu.Unlock()
	wg.Go(c.forward)
	w.sampler.add(c)
}
