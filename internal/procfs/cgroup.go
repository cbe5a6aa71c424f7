package procfs

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
)

// Cgroup is one line of /proc/<pid>/cgroup.
type Cgroup struct {
	// HierarchyID is 0 for the cgroup v2 unified hierarchy.
	HierarchyID int
	// Controllers is empty for v2 (and for named v1 hierarchies it holds
	// "name=...").
	Controllers []string
	// Path is relative to the reader's cgroup namespace root; it can start
	// with "/.." when the process is outside that namespace.
	Path string
}

// Cgroups reads /proc/<pid>/cgroup.
func (p Proc) Cgroups() ([]Cgroup, error) {
	b, err := readCapped(p.Path("cgroup"), smallCap)
	if err != nil {
		return nil, fmt.Errorf("procfs: pid %d: %w", p.PID, err)
	}
	cgs, err := ParseCgroup(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("procfs: pid %d: %w", p.PID, err)
	}
	return cgs, nil
}

// ParseCgroup parses /proc/<pid>/cgroup: "id:controllers:path" lines, v1
// and v2 mixed.
func ParseCgroup(r io.Reader) ([]Cgroup, error) {
	var out []Cgroup
	sc := bufio.NewScanner(io.LimitReader(r, smallCap))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		// The path may itself contain ':', so split into exactly three.
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			return nil, fmt.Errorf("cgroup line %d %q: %w", n, line, ErrMalformed)
		}
		id, err := strconv.Atoi(parts[0])
		if err != nil || id < 0 {
			return nil, fmt.Errorf("cgroup line %d: hierarchy id %q: %w", n, parts[0], ErrMalformed)
		}
		if !strings.HasPrefix(parts[2], "/") {
			return nil, fmt.Errorf("cgroup line %d: path %q: %w", n, parts[2], ErrMalformed)
		}
		c := Cgroup{HierarchyID: id, Path: parts[2]}
		if parts[1] != "" {
			c.Controllers = strings.Split(parts[1], ",")
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cgroup: %w: %w", ErrMalformed, err)
	}
	return out, nil
}

// MemoryCgroup picks the memory cgroup from a process's cgroup lines: the v1
// line naming the memory controller if there is one (hybrid hosts have a v2
// line too, without the memory controller), else the v2 line.
func MemoryCgroup(cgs []Cgroup) (p string, version int, ok bool) {
	v2 := ""
	hasV2 := false
	for _, c := range cgs {
		for _, ctl := range c.Controllers {
			if ctl == "memory" {
				return c.Path, 1, true
			}
		}
		if c.HierarchyID == 0 && len(c.Controllers) == 0 {
			v2, hasV2 = c.Path, true
		}
	}
	return v2, 2, hasV2
}

// ContainerID derives a short container name from a cgroup path, for
// containers that do not carry HEAPWATCH_CONTAINER_NAME: the leaf with
// runtime decorations ("cri-containerd-", "docker-", ".scope") removed and a
// 64-hex container ID shortened to 12 characters, as docker and crictl do.
func ContainerID(cgroupPath string) string {
	leaf := path.Base(path.Clean("/" + cgroupPath))
	if leaf == "/" {
		return ""
	}
	leaf = strings.TrimSuffix(leaf, ".scope")
	if i := strings.LastIndexByte(leaf, '-'); i >= 0 && isHex(leaf[i+1:]) && len(leaf)-i-1 >= 32 {
		leaf = leaf[i+1:] // cri-containerd-<id>, docker-<id>, crio-<id>
	}
	if i := strings.LastIndexByte(leaf, ':'); i >= 0 && isHex(leaf[i+1:]) {
		leaf = leaf[i+1:] // systemd driver "cri-containerd:<id>"
	}
	if len(leaf) == 64 && isHex(leaf) {
		leaf = leaf[:12]
	}
	return leaf
}

func isHex(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
