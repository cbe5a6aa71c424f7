package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/heapwatch/heapwatch/internal/procfs"
)

// ErrNoCgroup is returned by Locate when a process's memory cgroup cannot
// be found through its root.
var ErrNoCgroup = errors.New("memory cgroup not found")

// Locate finds the memory cgroup directory of a process through the
// process's own filesystem view, /proc/<pid>/root: a sidecar cannot see
// the host's cgroupfs, but each container sees its own group mounted at
// /sys/fs/cgroup/memory (v1) or /sys/fs/cgroup (v2 with a cgroup
// namespace). When the process sees the whole hierarchy (a process on the
// host, or no cgroup namespace) the path from /proc/<pid>/cgroup is
// followed below that mount instead.
func Locate(p procfs.Proc) (string, Version, error) {
	cgs, err := p.Cgroups()
	if err != nil {
		return "", 0, err
	}
	cgPath, v, ok := procfs.MemoryCgroup(cgs)
	if !ok {
		return "", 0, fmt.Errorf("pid %d: %w: no memory line in cgroup file", p.PID, ErrNoCgroup)
	}
	mount := p.Path("root", "sys", "fs", "cgroup")
	if v == 1 {
		mount = filepath.Join(mount, "memory")
	}
	version := Version(v)
	var candidates []string
	// "/.." paths come from outside our cgroup namespace and cannot be
	// followed; "/" is the mount itself.
	if clean := path.Clean(cgPath); clean != "/" && !strings.HasPrefix(clean, "/..") {
		candidates = append(candidates, filepath.Join(mount, clean))
	}
	candidates = append(candidates, mount)
	var errs []error
	for _, dir := range candidates {
		_, err := os.Stat(filepath.Join(dir, layouts[version].usage))
		if err == nil {
			return dir, version, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", 0, fmt.Errorf("pid %d: %w", p.PID, err)
		}
		errs = append(errs, err)
	}
	return "", 0, fmt.Errorf("pid %d (cgroup %s): %w: %w", p.PID, cgPath, ErrNoCgroup, errors.Join(errs...))
}

// MemoryHierarchy is the memory controller's hierarchy under a cgroupfs
// mounted at root (the host's, as the agent mounts it): root/memory on a
// v1 or hybrid host, whose hierarchy has memory.usage_in_bytes at its top,
// else root itself (v2).
func MemoryHierarchy(root string) (string, error) {
	v1 := filepath.Join(root, "memory")
	_, err := os.Stat(filepath.Join(v1, layouts[V1].usage))
	switch {
	case err == nil:
		return v1, nil
	case errors.Is(err, fs.ErrNotExist):
		return root, nil
	default:
		return "", fmt.Errorf("cgroup: %w", err)
	}
}
