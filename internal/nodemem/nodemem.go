// Package nodemem accounts for a node's memory: how much the kernel says is
// used, how much of it the pods (the kubepods cgroup), the watched host
// daemons and the kernel itself hold, and what is left that nobody
// accounts for — where a leak in containerd or the kubelet shows first.
//
// A Reader reads /proc/meminfo and the kubepods cgroup below roots it is
// given (the host's /proc and cgroupfs, mounted into the agent); Compute is
// the pure arithmetic; Collector exports both as Prometheus metrics.
package nodemem

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/heapwatch/heapwatch/internal/cgroup"
)

// Part names: the values of the part label of heapwatch_node_memory_bytes.
const (
	PartTotal       = "total"       // MemTotal
	PartUsed        = "used"        // MemTotal - MemAvailable
	PartPods        = "pods"        // working set of the kubepods cgroup
	PartDaemons     = "daemons"     // sum of the watched daemons' bytes
	PartKernel      = "kernel"      // unreclaimable slab + kernel stacks + page tables
	PartUnaccounted = "unaccounted" // used - pods - daemons - kernel, floored at 0
)

// Parts is one accounting of a node's memory, in bytes.
type Parts struct {
	Total, Used, Pods, Daemons, Kernel, Unaccounted uint64
}

// Map returns the parts by part name.
func (p Parts) Map() map[string]uint64 {
	return map[string]uint64{
		PartTotal: p.Total, PartUsed: p.Used, PartPods: p.Pods,
		PartDaemons: p.Daemons, PartKernel: p.Kernel, PartUnaccounted: p.Unaccounted,
	}
}

// Compute splits the used memory. The kernel part counts only what
// MemAvailable does not already treat as free: reclaimable slab is part of
// MemAvailable, so only SUnreclaim is subtracted, with kernel stacks and
// page tables. The pods part is the kubelet's working set (usage minus
// inactive file pages), which still holds active page cache that
// MemAvailable counts as available, so unaccounted is a lower bound: it
// never hides memory held outside pods, daemons and the kernel. It is
// floored at 0.
func Compute(m Meminfo, pods uint64, daemons map[string]uint64) Parts {
	p := Parts{Total: m.MemTotal, Used: m.MemTotal - m.MemAvailable, Pods: pods,
		Kernel: m.SUnreclaim + m.KernelStack + m.PageTables}
	for _, b := range daemons {
		p.Daemons += b
	}
	if accounted := p.Pods + p.Daemons + p.Kernel; accounted < p.Used {
		p.Unaccounted = p.Used - accounted
	}
	return p
}

// PodsCgroups are the names the kubelet gives the cgroup of all pods,
// below the root of the memory hierarchy: the cgroupfs driver's and the
// systemd driver's.
var PodsCgroups = []string{"kubepods", "kubepods.slice"}

// ErrNoPodsCgroup is returned when no kubepods cgroup exists (no kubelet
// has started on the node yet, or it uses a --cgroup-root the reader was
// not told about).
var ErrNoPodsCgroup = errors.New("no kubepods cgroup")

// Reader reads a node's memory figures below a /proc root and a cgroupfs
// root.
type Reader struct {
	proc       string
	memoryRoot string
	pods       []string
}

// NewReader returns a Reader of procRoot/meminfo and of the kubepods cgroup
// below cgroupRoot: the cgroupfs mount (its memory/ child on cgroup v1 or a
// hybrid host, itself on v2), or directly a memory hierarchy directory.
// podsCgroup, when set, is the path of the pods' cgroup below the memory
// hierarchy (the kubelet's --cgroup-root); otherwise PodsCgroups are tried
// in order at every read, since the kubelet may create its group after the
// agent starts.
func NewReader(procRoot, cgroupRoot, podsCgroup string) (*Reader, error) {
	for _, dir := range []string{procRoot, cgroupRoot} {
		st, err := os.Stat(dir)
		if err != nil {
			return nil, fmt.Errorf("nodemem: %w", err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("nodemem: %s is not a directory", dir)
		}
	}
	memoryRoot, err := cgroup.MemoryHierarchy(cgroupRoot)
	if err != nil {
		return nil, fmt.Errorf("nodemem: %w", err)
	}
	r := &Reader{proc: procRoot, memoryRoot: memoryRoot, pods: PodsCgroups}
	if podsCgroup != "" {
		r.pods = []string{podsCgroup}
	}
	return r, nil
}

// MemoryRoot is the memory hierarchy the reader found.
func (r *Reader) MemoryRoot() string { return r.memoryRoot }

// Meminfo reads and parses meminfo.
func (r *Reader) Meminfo() (Meminfo, error) {
	f, err := os.Open(filepath.Join(r.proc, "meminfo"))
	if err != nil {
		return Meminfo{}, fmt.Errorf("nodemem: %w", err)
	}
	defer f.Close()
	m, err := ParseMeminfo(f)
	if err != nil {
		return Meminfo{}, fmt.Errorf("nodemem: %s: %w", f.Name(), err)
	}
	return m, nil
}

// Pods returns the working set of the pods' cgroup and its directory, or
// ErrNoPodsCgroup.
func (r *Reader) Pods() (uint64, string, error) {
	for _, name := range r.pods {
		dir := filepath.Join(r.memoryRoot, name)
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		m, err := cgroup.Open(dir)
		if err != nil {
			return 0, dir, fmt.Errorf("nodemem: pods: %w", err)
		}
		s, err := m.Sample()
		m.Close()
		if err != nil {
			return 0, dir, fmt.Errorf("nodemem: pods: %w", err)
		}
		return s.WorkingSet, dir, nil
	}
	return 0, "", fmt.Errorf("nodemem: %w below %s (tried %v)", ErrNoPodsCgroup, r.memoryRoot, r.pods)
}
