package watch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"
)

// Reasons a container of the pod is not watched
// (heapwatch_unwatched_containers{reason}).
const (
	// ReasonNoLimit: no memory limit and no absolute threshold.
	ReasonNoLimit = "no-limit"
	// ReasonNotInWatchList: heapwatch.io/containers does not name it.
	ReasonNotInWatchList = "not-in-watch-list"
	// ReasonPermissionDenied: the kernel refused the sidecar the
	// container's /proc/<pid>/root (a different uid without the sidecar's
	// capabilities, or a non-dumpable process): Detail says which.
	ReasonPermissionDenied = "permission-denied"
	// ReasonCgroupUnreadable: the memory cgroup cannot be found or read
	// through the container's view for any other reason.
	ReasonCgroupUnreadable = "cgroup-unreadable"
)

// Unwatched is a container of the pod the sidecar does not watch, and why.
type Unwatched struct {
	Container string
	Reason    string
	// Detail is for humans: the error, or what to change.
	Detail string
	PIDs   []int
}

// Unwatched lists the containers reported as not watched, by name.
func (w *Watcher) Unwatched() []Unwatched {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]Unwatched, 0, len(w.reported))
	for _, u := range w.reported {
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b Unwatched) int { return strings.Compare(a.Container, b.Container) })
	return out
}

// report takes the verdicts of one scan. A verdict is reported (one log
// line, the metric) once the same container got it at two scans in a row:
// a process caught between fork and its cgroup, or before its exec, is
// not taken for an unwatched container. Containers watched or gone since
// are dropped from the report.
func (w *Watcher) report(verdicts map[string]Unwatched) {
	w.mu.Lock()
	changed := false
	var logs []Unwatched
	for key, u := range verdicts {
		prev, seen := w.pending[key]
		old, was := w.reported[key]
		if was && old.Reason == u.Reason {
			w.reported[key] = u
			continue
		}
		if seen && prev.Reason == u.Reason {
			w.reported[key] = u
			changed = true
			logs = append(logs, u)
		}
	}
	for key := range w.reported {
		if _, ok := verdicts[key]; !ok {
			delete(w.reported, key)
			changed = true
		}
	}
	w.pending = verdicts
	w.mu.Unlock()
	for _, u := range logs {
		level := "info"
		args := []any{"container", u.Container, "reason", u.Reason, "detail", u.Detail, "pids", u.PIDs}
		if u.Reason == ReasonPermissionDenied || u.Reason == ReasonCgroupUnreadable {
			level = "warn"
		}
		if level == "warn" {
			w.log.Warn("container not watched", args...)
		} else {
			w.log.Info("container not watched", args...)
		}
	}
	if changed && w.o.OnUnwatched != nil {
		w.o.OnUnwatched(w.Unwatched())
	}
}

// unreadable classifies a failure to open a container's memory cgroup.
func (w *Watcher) unreadable(name string, members []int, err error) *Unwatched {
	if errors.Is(err, fs.ErrPermission) {
		return &Unwatched{Container: name, Reason: ReasonPermissionDenied, PIDs: members,
			Detail: w.permissionDetail(members[0]) + ": " + err.Error()}
	}
	return &Unwatched{Container: name, Reason: ReasonCgroupUnreadable, PIDs: members, Detail: err.Error()}
}

// permissionDetail says why the kernel refused the sidecar a process's
// files, when it can tell: /proc/<pid>/environ belongs to the process's
// effective uid unless the process is not dumpable, when it belongs to
// root. Not /proc/<pid> itself: the kernel keeps that directory (mode 0555)
// the effective uid's whatever the dumpable flag (task_dump_owner).
func (w *Watcher) permissionDetail(pid int) string {
	p := w.fs.Proc(pid)
	euid, err := p.EffectiveUID()
	if err != nil {
		return "permission denied"
	}
	st, err := os.Stat(p.Path("environ"))
	if err != nil {
		return "permission denied"
	}
	owner := -1
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		owner = int(sys.Uid)
	}
	self := os.Geteuid()
	switch {
	case owner == 0 && euid != 0:
		return fmt.Sprintf("non-dumpable process (uid %d; prctl PR_SET_DUMPABLE 0, or a setuid or file-capability binary): "+
			"only CAP_SYS_PTRACE lets the sidecar read it", euid)
	case euid != self:
		return fmt.Sprintf("different uid: the app runs as uid %d, the sidecar as uid %d without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH", euid, self)
	default:
		return fmt.Sprintf("same uid %d, but the ptrace access check failed (the app holds capabilities the sidecar lacks)", euid)
	}
}
