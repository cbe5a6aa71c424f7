package watch

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/procfs"
)

// HostDaemons discovers host daemons (the node agent's targets) in the
// host's /proc: each DaemonSpec's processes, matched by executable name
// or memory cgroup, form one group named by the spec. A daemon with a
// memory cgroup of its own (its systemd service's) is read from it;
// otherwise (the root cgroup, or a cgroup shared with unrelated
// processes) from its processes' resident set. A daemon that restarts (a
// new PID) is a new group of the same name: its captures continue under
// that name, from a new baseline.
type HostDaemons struct {
	fs    procfs.FS
	node  string
	specs []DaemonSpec
}

var _ Discoverer = (*HostDaemons)(nil)

// NewHostDaemons discovers specs (first match wins) on node through fs.
func NewHostDaemons(fs procfs.FS, node string, specs []DaemonSpec) *HostDaemons {
	return &HostDaemons{fs: fs, node: node, specs: specs}
}

// hostProc is what one scan knows of a process.
type hostProc struct {
	pid, ppid int
	start     uint64 // start time, with pid the process's identity
	cgroup    string // memory cgroup path, "" when unknown
	version   int
	daemon    int // index into specs, -1 for none
}

// Discover reads every process's stat, cgroup and executable: nothing is
// cached, so a daemon that restarts, or is moved to another cgroup, is
// seen as it is now.
func (d *HostDaemons) Discover() (map[string]Group, error) {
	pids, err := d.fs.PIDs()
	if err != nil {
		return nil, err
	}
	self, _ := d.fs.Self()
	procs := make(map[int]*hostProc, len(pids))
	byCgroup := map[string][]*hostProc{}
	for _, pid := range pids {
		p := d.fs.Proc(pid)
		st, err := p.Stat()
		if err != nil || st.KernelThread() || st.State == 'Z' || st.State == 'X' || pid == self {
			continue // gone, a kernel thread, a zombie or the agent itself
		}
		hp := &hostProc{pid: pid, ppid: st.PPID, start: st.StartTime, daemon: -1}
		if cgs, err := p.Cgroups(); err == nil {
			hp.cgroup, hp.version, _ = procfs.MemoryCgroup(cgs)
		}
		hp.daemon = d.match(p, st.Comm, hp.cgroup)
		procs[pid] = hp
		if hp.cgroup != "" {
			key := cgroupKey(hp.version, hp.cgroup)
			byCgroup[key] = append(byCgroup[key], hp)
		}
	}
	groups := map[string]Group{}
	for i, spec := range d.specs {
		var members []*hostProc
		for _, pid := range pids {
			if hp := procs[pid]; hp != nil && hp.daemon == i {
				members = append(members, hp)
			}
		}
		if len(members) == 0 {
			continue
		}
		key, g := d.group(spec, members, procs, byCgroup)
		groups[key] = g
	}
	return groups, nil
}

func cgroupKey(version int, p string) string { return fmt.Sprintf("v%d:%s", version, p) }

// group makes a daemon's group of its matched processes. Its cgroup is
// that of its leader (the lowest PID: the one its supervisor started). It
// is read from that cgroup when the cgroup is not the root and is the
// daemon's own: the configured one, or one holding only the daemon's
// processes and their descendants (containerd's shims); otherwise by RSS.
// The key holds the leader's identity: a restarted daemon is a new group
// (a new baseline), whatever is left in its cgroup (shims outlive a
// containerd restart).
func (d *HostDaemons) group(spec DaemonSpec, members []*hostProc, procs map[int]*hostProc, byCgroup map[string][]*hostProc) (string, Group) {
	leader := members[0]
	pids := make([]int, len(members))
	for i, hp := range members {
		pids[i] = hp.pid
	}
	g := Group{Path: leader.cgroup, PIDs: pids, Settled: true}
	own := leader.cgroup != "" && path.Clean(leader.cgroup) != "/"
	if own && (spec.Cgroup == "" || !cgroupMatches(leader.cgroup, spec.Cgroup)) {
		for _, hp := range byCgroup[cgroupKey(leader.version, leader.cgroup)] {
			if !descends(hp, members, procs) {
				own = false
				break
			}
		}
	}
	where := "rss"
	if own {
		where = cgroupKey(leader.version, leader.cgroup)
	} else {
		g.RSS = true
	}
	return fmt.Sprintf("%s@%s@%d.%d", spec.Name, where, leader.pid, leader.start), g
}

// descends reports whether hp is one of members or a descendant of one.
func descends(hp *hostProc, members []*hostProc, procs map[int]*hostProc) bool {
	for seen := 0; hp != nil && seen < len(procs); seen++ {
		if slices.Contains(members, hp) {
			return true
		}
		hp = procs[hp.ppid]
	}
	return false
}

// match returns the index of the first spec the process matches, -1 for
// none and for every process of a pod. A spec with an executable name
// matches by it (the basename of /proc/<pid>/exe, or comm, which the
// kernel truncates to 15 bytes, when the link cannot be read: another
// user's process without CAP_SYS_PTRACE), so a daemon's helpers in its
// cgroup are not taken for it; one without, by cgroup.
func (d *HostDaemons) match(p procfs.Proc, comm, cgroupPath string) int {
	// A pod's processes are the sidecar's, even when one runs a daemon's
	// executable (a node in a pod, a CI job running containerd).
	if strings.Contains(cgroupPath, "kubepods") {
		return -1
	}
	exe := ""
	if target, err := os.Readlink(p.Path("exe")); err == nil {
		exe = filepath.Base(strings.TrimSuffix(target, " (deleted)"))
	}
	for i, s := range d.specs {
		switch {
		case s.Exe != "" && exe != "":
			if exe == s.Exe {
				return i
			}
		case s.Exe != "":
			if comm != "" && comm == s.Exe[:min(len(s.Exe), 15)] {
				return i
			}
		case cgroupPath != "" && cgroupMatches(cgroupPath, s.Cgroup):
			return i
		}
	}
	return -1
}

// cgroupMatches: a path ("/system.slice/x.service") is matched exactly, a
// unit ("x.service") as the last element of the process's cgroup path.
func cgroupMatches(cgroupPath, want string) bool {
	if strings.HasPrefix(want, "/") {
		return path.Clean(cgroupPath) == path.Clean(want)
	}
	return path.Base(cgroupPath) == want
}

// Identify names a group by its daemon, the head of its key: always sure.
func (d *HostDaemons) Identify(key string, _ Group) (string, capture.Target, bool) {
	name, _, _ := strings.Cut(key, "@") // names have no "@"
	return name, capture.Daemon{Node: d.node, Name: name}, true
}
