package watch

import (
	"bytes"
	"path/filepath"

	"github.com/heapwatch/heapwatch/internal/cgroup"
)

// probe tells, at the cost of one read per tick, whether a process was
// created since the last look: the last field of /proc/loadavg is the last
// PID the kernel handed out in the reader's PID namespace. The sidecar runs
// in the pod's shared PID namespace (shareProcessNamespace, or podsim's
// unshare), so that is exactly the pod's last PID; any fork or exec'd
// container start moves it. The pod cgroup's cgroup.procs would tell the
// same, but a container only sees its own cgroup (a cgroup namespace, or
// its own group bind-mounted under v1), ns_last_pid (a sysctl) costs more
// per read, and listing /proc every tick costs some fifty times more
// (BenchmarkDiscoveryProbe). A thread the sidecar itself starts moves it
// too: that costs one extra scan.
type probe struct {
	f    *cgroup.RawFile
	buf  [128]byte
	last []byte
	lbuf [32]byte
}

// newProbe opens root/loadavg; a probe that cannot read it reports nothing
// (ok is false) and the watcher relies on its periodic rescans.
func newProbe(root string) *probe {
	f, err := cgroup.OpenRaw(filepath.Join(root, "loadavg"))
	if err != nil {
		return &probe{}
	}
	p := &probe{f: f}
	p.changed()
	return p
}

func (p *probe) ok() bool { return p.f != nil }

// changed reports whether the last PID moved since the previous call.
func (p *probe) changed() bool {
	if p.f == nil {
		return false
	}
	n, err := p.f.Pread(p.buf[:])
	if err != nil {
		return false
	}
	b := bytes.TrimSpace(p.buf[:n])
	if i := bytes.LastIndexByte(b, ' '); i >= 0 {
		b = b[i+1:]
	}
	if bytes.Equal(b, p.last) {
		return false
	}
	p.last = append(p.lbuf[:0], b...)
	return true
}

func (p *probe) close() {
	if p.f != nil {
		p.f.Close()
	}
}
