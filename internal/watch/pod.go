package watch

import (
	"fmt"
	"os"
	"strings"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/names"
)

// PodContainers discovers the other containers of the sidecar's pod in
// the shared PID namespace: every process but the sidecar's own group,
// kernel threads and the pause process, grouped by memory cgroup, each
// group named by HEAPWATCH_CONTAINER_NAME.
type PodContainers struct {
	fs  procfs.FS
	pod capture.PodContainer

	procs   map[int]procEntry
	unnamed map[string]bool // cgroup keys seen once without a readable name
}

var _ Discoverer = (*PodContainers)(nil)

// NewPodContainers discovers the containers of pod (its Container field is
// ignored) through fs.
func NewPodContainers(fs procfs.FS, pod capture.PodContainer) *PodContainers {
	return &PodContainers{fs: fs, pod: pod, procs: map[int]procEntry{}, unnamed: map[string]bool{}}
}

// procEntry caches a PID that is never watched: the sidecar itself, a
// kernel thread (PF_KTHREAD) or the pause process. Only such facts, which
// cannot change while the PID lives, are cached; every other verdict (an
// empty command line while the process is inside execve, a cgroup not
// joined yet, a name not readable yet) is taken again at the next scan.
type procEntry struct{ excluded bool }

// Discover re-reads the process list and groups processes by memory
// cgroup. The cgroup of every candidate process is re-read each time: a
// process may start in one cgroup and be moved into its container's just
// before exec.
func (d *PodContainers) Discover() (map[string]Group, error) {
	pids, err := d.fs.PIDs()
	if err != nil {
		return nil, err
	}
	self, selfKey := d.self()
	groups := map[string]Group{}
	live := make(map[int]bool, len(pids))
	for _, pid := range pids {
		live[pid] = true
		if e, ok := d.procs[pid]; ok && e.excluded {
			continue
		}
		p := d.fs.Proc(pid)
		excluded, final, err := d.excluded(p, self)
		if err != nil {
			continue // gone, or not readable yet: next scan
		}
		if final {
			d.procs[pid] = procEntry{excluded: true}
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
		g := groups[key]
		g.Path, g.PIDs = path, append(g.PIDs, pid)
		groups[key] = g
	}
	for pid := range d.procs {
		if !live[pid] {
			delete(d.procs, pid)
		}
	}
	for key := range d.unnamed {
		if _, ok := groups[key]; !ok {
			delete(d.unnamed, key)
		}
	}
	for key, g := range groups {
		_, g.Settled = d.envName(g.PIDs)
		groups[key] = g
	}
	return groups, nil
}

// self returns the sidecar's PID in this tree and its memory cgroup key.
// Both are empty when the tree is another PID namespace's.
func (d *PodContainers) self() (int, string) {
	pid, err := d.fs.Self()
	if err != nil {
		return 0, ""
	}
	cgs, err := d.fs.Proc(pid).Cgroups()
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
func (d *PodContainers) excluded(p procfs.Proc, self int) (excluded, final bool, err error) {
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

// Identify names a group by HEAPWATCH_CONTAINER_NAME of the first member
// that has it, else the container ID from the cgroup path. sure is false
// when no member has the variable and the group was not seen unnamed
// before: a process inside execve shows an empty environment for a moment,
// so the fallback name is only taken at the second sighting.
func (d *PodContainers) Identify(key string, g Group) (string, capture.Target, bool) {
	name, sure := d.name(key, g.PIDs, g.Path)
	t := d.pod
	t.Container = name
	return name, t, sure
}

func (d *PodContainers) name(key string, members []int, path string) (name string, sure bool) {
	if v, ok := d.envName(members); ok {
		delete(d.unnamed, key)
		return v, true
	}
	for _, pid := range members {
		// runc init ("runc:[2:INIT]") shows runc's environment, not the
		// container's, until it execs the entrypoint: on a real node that
		// can outlast two scans, so it never counts as a sighting.
		if comm, err := d.fs.Proc(pid).Comm(); err == nil && strings.HasPrefix(comm, "runc:") {
			return "", false
		}
	}
	if !d.unnamed[key] {
		d.unnamed[key] = true
		return "", false
	}
	return procfs.ContainerID(path), true
}

// envName is HEAPWATCH_CONTAINER_NAME of the first member that has it.
// Only the container's own program has it: the runtime's helper that
// comes first (runc init) keeps its own environment until it execs the
// entrypoint, after the container's mounts are done; so a group showing it
// is settled.
func (d *PodContainers) envName(members []int) (string, bool) {
	for _, pid := range members {
		if v, ok, err := d.fs.Proc(pid).Getenv(names.ContainerNameEnv); err == nil && ok && v != "" {
			return v, true
		}
	}
	return "", false
}

// serviceAccountNamespace is where Kubernetes mounts the pod's namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// PodFromEnv reads POD_NAME, POD_NAMESPACE, POD_UID and NODE_NAME (the
// downward API) into the pod's identity (without a container). Outside
// Kubernetes the pod and node fall back to the hostname and the namespace
// to the service account's, else "default".
func PodFromEnv(lookup func(string) (string, bool)) capture.PodContainer {
	get := func(k string) string {
		v, _ := lookup(k)
		return strings.TrimSpace(v)
	}
	p := capture.PodContainer{Namespace: get(names.EnvPodNamespace), Pod: get(names.EnvPodName), UID: get(names.EnvPodUID), Node: get(names.EnvNodeName)}
	host, _ := os.Hostname()
	if p.Pod == "" {
		p.Pod = host
	}
	if p.Node == "" {
		p.Node = host
	}
	if p.Namespace == "" {
		if b, err := os.ReadFile(serviceAccountNamespace); err == nil {
			p.Namespace = strings.TrimSpace(string(b))
		}
	}
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	return p
}
