package watch

import "github.com/heapwatch/heapwatch/capture"

// Discoverer finds what a Watcher watches: processes grouped by memory
// cgroup, and the identity of each group. The containers of the sidecar's
// pod (PodContainers) are one strategy; host daemons are another type
// behind the same interface. It is called from the Watcher's scan loop
// only, so it needs no locking of its own.
type Discoverer interface {
	// Discover lists the candidates, by a key that stays the same for the
	// life of the group (the cgroup's version and path). It fails only
	// when the process list cannot be read at all.
	Discover() (map[string]Group, error)
	// Identify names a group the Watcher is about to watch: its name (the
	// container's, for the name filter, logs and metrics) and the identity
	// its captures take. sure is false when it is not known yet: the
	// Watcher asks again at once.
	Identify(key string, g Group) (name string, target capture.Target, sure bool)
}

// Group is the processes of one memory cgroup.
type Group struct {
	// Path is the cgroup's path as /proc/<pid>/cgroup shows it.
	Path string
	// PIDs are its processes, ascending.
	PIDs []int
	// Settled: the group's processes already run the target's own
	// program, so its set-up is over and it is opened at once, within one
	// interval of appearing; else only after settleAge.
	Settled bool
	// RSS: the group has no memory cgroup of its own (the root cgroup, or
	// one shared with unrelated processes), so its memory is its members'
	// resident set from /proc/<pid>/status, not Path's figures.
	RSS bool
}
