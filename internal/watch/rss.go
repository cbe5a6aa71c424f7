package watch

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/procfs"
)

// memory is what a watched group's memory is read from: its cgroup
// (*cgroup.Memory), or the resident set of its processes (rssMemory).
type memory interface {
	Sample() (Sample, error)
	Stat() (map[string]uint64, error)
	Pressure() (cgroup.Pressure, bool, error)
	Close() error
}

var _ memory = (*cgroup.Memory)(nil)

// rssMemory reads a group's memory as the sum of its processes' VmRSS: for
// a process that has no cgroup of its own (the root cgroup, or one shared
// with unrelated processes), whose cgroup's figures would not be its own.
// It has no limit, no memory.stat and no PSI, and no kernel notification.
type rssMemory struct {
	fs procfs.FS

	mu   sync.Mutex
	pids func() []int // the group's current processes
}

// errNoCgroupOfItsOwn is why an RSS group is polled.
var errNoCgroupOfItsOwn = errors.New("no memory cgroup of its own: its processes' resident set is sampled")

func newRSSMemory(fs procfs.FS, pids []int) *rssMemory {
	return &rssMemory{fs: fs, pids: func() []int { return pids }}
}

// follow makes the reader follow the group's processes as they change.
func (r *rssMemory) follow(pids func() []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pids = pids
}

// Sample sums the resident set of the group's live processes; when none
// is left it fails with cgroup.ErrGone, which ends the group as a removed
// cgroup would.
func (r *rssMemory) Sample() (Sample, error) {
	r.mu.Lock()
	pids := r.pids()
	r.mu.Unlock()
	s := Sample{Time: time.Now()}
	live := 0
	var errs []error
	for _, pid := range pids {
		rss, err := r.fs.Proc(pid).RSS()
		if err != nil {
			if !procfs.IsNotExist(err) {
				errs = append(errs, err)
			}
			continue
		}
		live++
		s.Usage += uint64(rss)
	}
	if live == 0 {
		if len(errs) > 0 {
			return Sample{}, errors.Join(errs...)
		}
		return Sample{}, fmt.Errorf("processes %v: %w", pids, cgroup.ErrGone)
	}
	s.WorkingSet = s.Usage
	return s, nil
}

// Stat is empty: there is no memory.stat without a cgroup.
func (r *rssMemory) Stat() (map[string]uint64, error) { return nil, nil }

// Pressure is absent: PSI is per cgroup.
func (r *rssMemory) Pressure() (cgroup.Pressure, bool, error) { return cgroup.Pressure{}, false, nil }

func (r *rssMemory) Close() error { return nil }
