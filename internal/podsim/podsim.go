// Package podsim emulates a Kubernetes pod with a shared PID namespace on a
// Linux machine without a container runtime, so the sidecar can be tested
// against real cgroups and real OOM kills.
//
// The pod is `unshare --pid --fork --mount-proc` (optionally --net with lo
// up); its PID 1 is a sleeping init, like the pause container. Every
// container joins the pod's namespaces with nsenter and gets its own memory
// cgroup with the configured limit, seen the way a container runtime shows
// it. Which cgroup version follows the kernel (CgroupVersion):
//
//   - v1: a group under /sys/fs/cgroup/memory/<pod>/<container> and a
//     mount namespace where /sys/fs/cgroup/memory is bind-mounted to it, so
//     /proc/<pid>/root/sys/fs/cgroup/memory/... shows the container's own
//     usage and limit.
//   - v2, as containerd and runc do it: a pod cgroup /sys/fs/cgroup/<pod>
//     with memory delegated to one child per container (memory.max,
//     memory.swap.max=0, and memory.oom.group=1 as the kubelet sets it);
//     every container in its own cgroup namespace (unshare --cgroup) and
//     mount namespace with cgroup2 mounted at /sys/fs/cgroup, so it sees
//     its own group as the root (read-only, as for an unprivileged
//     container) and, from another container, /proc/<pid>/cgroup reads
//     0::/../<container>.
//
// Close kills every process (killing the pod's PID 1 kills its whole PID
// namespace, and the mount namespaces die with their processes) and removes
// every cgroup it made.
package podsim

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/heapwatch/heapwatch/names"
)

// MemoryRoot is the cgroup v1 memory hierarchy the pods' groups are made in.
const MemoryRoot = "/sys/fs/cgroup/memory"

// UnifiedRoot is the cgroup v2 hierarchy the pods' groups are made in when
// it has the memory controller (a cgroup v2 node).
const UnifiedRoot = "/sys/fs/cgroup"

// CgroupVersion is the cgroup version pods get here: 1 with a v1 memory
// hierarchy, 2 with cgroup2 at /sys/fs/cgroup holding the memory
// controller, 0 with neither.
func CgroupVersion() int {
	if _, err := os.Stat(filepath.Join(MemoryRoot, "memory.limit_in_bytes")); err == nil {
		return 1
	}
	b, err := os.ReadFile(filepath.Join(UnifiedRoot, "cgroup.controllers"))
	if err == nil && slices.Contains(strings.Fields(string(b)), "memory") {
		return 2
	}
	return 0
}

// root is the hierarchy pods' groups are made in.
func root(version int) string {
	if version == 2 {
		return UnifiedRoot
	}
	return MemoryRoot
}

// ErrUnsupported reports a machine where pods cannot be emulated: not root,
// no memory cgroup hierarchy, or a missing tool.
var ErrUnsupported = errors.New("podsim: cannot emulate a pod here")

// Spec describes a pod.
type Spec struct {
	// Name prefixes the pod's cgroup directory; a random suffix is added.
	Name string
	// Net gives the pod its own network namespace (loopback only). Without
	// it the pod shares the caller's network, e.g. to reach a local server.
	Net bool
	// Containers are started in order.
	Containers []ContainerSpec
}

// ContainerSpec describes one container of the pod.
type ContainerSpec struct {
	Name string
	// Argv is the command; it runs with the caller's environment plus Env
	// and HEAPWATCH_CONTAINER_NAME.
	Argv []string
	Env  []string
	// MemoryLimit in bytes; 0 leaves the container without a limit.
	MemoryLimit int64
	// ReadOnlyCgroup mounts the container's cgroup view read-only, so
	// nothing can register kernel notifications through it. On v2 the view
	// is always read-only, as containerd and runc mount it for every
	// unprivileged container.
	ReadOnlyCgroup bool
	// User, when set, runs the command as that uid and gid with no
	// capabilities at all, as a container with runAsUser, runAsGroup,
	// capabilities drop [ALL] and allowPrivilegeEscalation false runs:
	// supplementary groups cleared, empty bounding and inheritable sets,
	// no_new_privs. The cgroup files stay readable (0644) by any uid. Nil
	// runs the command as the caller (root).
	User *User
	// Stdout and Stderr receive the container's output; nil discards it.
	Stdout, Stderr io.Writer
}

// User is a container's uid and gid.
type User struct{ UID, GID int }

// Pod is a running emulated pod.
type Pod struct {
	Name      string // the pod's cgroup directory name
	CgroupDir string
	// Version is the cgroup version of the pod's groups (1 or 2).
	Version int

	spec    Spec
	initCmd *exec.Cmd
	initPID int

	mu         sync.Mutex
	containers []*Container
	closed     bool
}

// Container is a running container of a pod.
type Container struct {
	Name      string
	CgroupDir string
	version   int

	cmd  *exec.Cmd
	done chan struct{}
	err  error // from Wait, valid after done
}

// Supported reports why pods cannot be emulated here, or nil.
func Supported() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: must run as root (uid %d) to create cgroups and namespaces", ErrUnsupported, os.Geteuid())
	}
	if CgroupVersion() == 0 {
		return fmt.Errorf("%w: no cgroup v1 memory hierarchy at %s and no memory controller in cgroup v2 at %s", ErrUnsupported, MemoryRoot, UnifiedRoot)
	}
	for _, tool := range []string{"unshare", "nsenter", "mount", "sh", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w: %s not found: %w", ErrUnsupported, tool, err)
		}
	}
	return nil
}

// Start creates the pod and starts its containers. On error everything
// already made is removed.
func Start(ctx context.Context, spec Spec) (*Pod, error) {
	if err := Supported(); err != nil {
		return nil, err
	}
	if spec.Net {
		if _, err := exec.LookPath("ip"); err != nil {
			return nil, fmt.Errorf("%w: ip not found (needed for Net): %w", ErrUnsupported, err)
		}
	}
	version := CgroupVersion()
	removeStale(root(version))
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	name := fmt.Sprintf("%s%s-%s", namePrefix, sanitize(spec.Name), hex.EncodeToString(suffix))
	p := &Pod{Name: name, CgroupDir: filepath.Join(root(version), name), Version: version, spec: spec}
	if err := os.Mkdir(p.CgroupDir, 0o755); err != nil {
		return nil, fmt.Errorf("podsim: create pod cgroup: %w", err)
	}
	if version == 2 {
		// Delegate memory to the containers' groups, as the runtime does
		// for the pod's cgroup.
		if err := os.WriteFile(filepath.Join(p.CgroupDir, "cgroup.subtree_control"), []byte("+memory"), 0); err != nil {
			return nil, errors.Join(fmt.Errorf("podsim: pod cgroup: enable memory: %w", err), p.Close())
		}
	}
	if err := p.startInit(ctx); err != nil {
		return nil, errors.Join(err, p.Close())
	}
	for _, c := range spec.Containers {
		if _, err := p.Add(c); err != nil {
			return nil, errors.Join(err, p.Close())
		}
	}
	return p, nil
}

// startInit starts the pod's PID 1 and waits until its namespaces are set up.
func (p *Pod) startInit(ctx context.Context) error {
	script := "echo ready; exec sleep infinity"
	args := []string{"--pid", "--fork", "--mount-proc", "--kill-child"}
	if p.spec.Net {
		args = append(args, "--net")
		script = "ip link set lo up && " + script
	}
	args = append(args, "--", "sh", "-c", script)
	cmd := exec.Command("unshare", args...)
	// Own process group: a Ctrl-C in the terminal reaches the caller, which
	// then closes the pod in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("podsim: init: %w", err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("podsim: start init: %w", err)
	}
	p.initCmd = cmd
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected output %q", line)
		}
		ready <- err
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case err := <-ready:
		if err != nil {
			return fmt.Errorf("podsim: init did not start: %w: %s", err, strings.TrimSpace(stderr.String()))
		}
	case <-ctx.Done():
		return fmt.Errorf("podsim: waiting for init: %w", ctx.Err())
	case <-time.After(10 * time.Second):
		return fmt.Errorf("podsim: init not ready after 10s: %s", strings.TrimSpace(stderr.String()))
	}
	pid, err := childPID(cmd.Process.Pid)
	if err != nil {
		return fmt.Errorf("podsim: init: %w", err)
	}
	p.initPID = pid
	return nil
}

// containerScript runs inside the container's new mount namespace: it
// mounts the container's cgroup as /sys/fs/cgroup/memory, moves itself into
// it and execs the command ($1 is the group, $2 "ro" or "rw"). The view is
// complete (read-only if asked) before the process joins the group, as a
// runtime mounts a container's cgroupfs: a watcher that finds the process
// in its group must not see a view about to be remounted (a remount fails
// with EBUSY while anything writes through the view). The group is joined
// through a descriptor opened on the host path before the bind mount.
const containerScript = `set -e
exec 3> "$1/cgroup.procs"
mount --bind "$1" /sys/fs/cgroup/memory
if [ "$2" = ro ]; then mount -o remount,bind,ro /sys/fs/cgroup/memory; fi
echo $$ >&3
exec 3>&-
shift 2
exec "$@"`

// containerScriptV2 moves itself into the container's group ($1), then
// takes a cgroup namespace rooted there and a mount namespace where cgroup2
// is mounted at /sys/fs/cgroup ($2 "ro" or "rw"), and execs the command.
// The node's cgroup2 mount is lazily unmounted first: the same superblock
// cannot be mounted twice on one mount point (EBUSY). $3 is util-linux's unshare by path: a busybox sh may prefer its own
// applet, which has no --cgroup.
const containerScriptV2 = `set -e
echo $$ > "$1/cgroup.procs"
mode=$2
unshare=$3
shift 3
exec "$unshare" --cgroup --mount --propagation private -- sh -c '
set -e
umount -l /sys/fs/cgroup
if [ "$0" = ro ]; then mount -t cgroup2 -o ro cgroup2 /sys/fs/cgroup; else mount -t cgroup2 cgroup2 /sys/fs/cgroup; fi
exec "$@"' "$mode" "$@"`

// Add starts one more container in the pod.
func (p *Pod) Add(spec ContainerSpec) (*Container, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("podsim: pod is closed")
	}
	if spec.Name == "" || sanitize(spec.Name) != spec.Name || len(spec.Argv) == 0 {
		return nil, fmt.Errorf("podsim: container %q: need a name of [a-z0-9-] and a command", spec.Name)
	}
	c := &Container{Name: spec.Name, CgroupDir: filepath.Join(p.CgroupDir, spec.Name), version: p.Version, done: make(chan struct{})}
	if err := os.Mkdir(c.CgroupDir, 0o755); err != nil {
		return nil, fmt.Errorf("podsim: container %s cgroup: %w", spec.Name, err)
	}
	setLimit := setLimitV1
	if p.Version == 2 {
		setLimit = setLimitV2
	}
	if err := setLimit(c.CgroupDir, spec.MemoryLimit); err != nil {
		_ = os.Remove(c.CgroupDir)
		return nil, fmt.Errorf("podsim: container %s: %w", spec.Name, err)
	}
	mode := "rw"
	if spec.ReadOnlyCgroup || p.Version == 2 {
		mode = "ro"
	}
	args := []string{"--target", strconv.Itoa(p.initPID), "--pid", "--mount"}
	if p.spec.Net {
		args = append(args, "--net")
	}
	if p.Version == 2 {
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			_ = os.Remove(c.CgroupDir)
			return nil, fmt.Errorf("%w: unshare not found: %w", ErrUnsupported, err)
		}
		args = append(args, "--", "sh", "-c", containerScriptV2, "sh", c.CgroupDir, mode, unshare)
	} else {
		args = append(args, "--", "unshare", "--mount", "--propagation", "private", "--",
			"sh", "-c", containerScript, "sh", c.CgroupDir, mode)
	}
	if u := spec.User; u != nil {
		// setpriv runs last, after the script's mounts, which need root;
		// the command's exec then makes the saved uid the new one too. By
		// path: a busybox sh would prefer its own setpriv applet.
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			_ = os.Remove(c.CgroupDir)
			return nil, fmt.Errorf("%w: setpriv not found: %w", ErrUnsupported, err)
		}
		args = append(args, setpriv, "--reuid", strconv.Itoa(u.UID), "--regid", strconv.Itoa(u.GID),
			"--clear-groups", "--inh-caps", "-all", "--bounding-set", "-all", "--no-new-privs", "--")
	}
	args = append(args, spec.Argv...)
	cmd := exec.Command("nsenter", args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Env = append(cmd.Env, names.ContainerNameEnv+"="+spec.Name)
	cmd.Stdout, cmd.Stderr = spec.Stdout, spec.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = os.Remove(c.CgroupDir)
		return nil, fmt.Errorf("podsim: start container %s: %w", spec.Name, err)
	}
	c.cmd = cmd
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	p.containers = append(p.containers, c)
	return c, nil
}

// Container returns the container of that name, or nil.
func (p *Pod) Container(name string) *Container {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.containers) - 1; i >= 0; i-- {
		if p.containers[i].Name == name {
			return p.containers[i]
		}
	}
	return nil
}

// InitPID is the host PID of the pod's PID 1.
func (p *Pod) InitPID() int { return p.initPID }

// Close kills every process of the pod and removes its cgroups. It is safe
// to call more than once and from a signal handler's goroutine.
func (p *Pod) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	containers := p.containers
	p.mu.Unlock()

	var errs []error
	if p.initCmd != nil {
		// Killing the namespace's PID 1 makes the kernel kill every process
		// in it; unshare reaps it and exits. Killing unshare first would
		// leave PID 1 to be reaped by the host's init.
		if p.initPID > 0 {
			_ = syscall.Kill(p.initPID, syscall.SIGKILL)
		} else {
			_ = p.initCmd.Process.Kill()
		}
		_ = p.initCmd.Wait()
	}
	for _, c := range containers {
		// nsenter's child died with the namespace; nsenter follows.
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		if err := removeCgroup(c.CgroupDir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeCgroup(p.CgroupDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Done is closed when the container's command has exited.
func (c *Container) Done() <-chan struct{} { return c.done }

// Wait waits for the container to exit and returns its exit code, 128+signal
// when it was killed (137 after an OOM kill).
func (c *Container) Wait(ctx context.Context) (int, error) {
	select {
	case <-c.done:
	case <-ctx.Done():
		return 0, fmt.Errorf("podsim: waiting for %s: %w", c.Name, ctx.Err())
	}
	return c.ExitCode(), nil
}

// ExitCode is the exit code once Done is closed, -1 before.
func (c *Container) ExitCode() int {
	select {
	case <-c.done:
	default:
		return -1
	}
	st, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok {
		return c.cmd.ProcessState.ExitCode()
	}
	if st.Signaled() {
		return 128 + int(st.Signal())
	}
	return st.ExitStatus()
}

// PID is the host PID of the container's first process (nsenter's child).
func (c *Container) PID() (int, error) {
	return childPID(c.cmd.Process.Pid)
}

// OOMKills reads the oom_kill counter of the container's memory.oom_control
// (v1) or memory.events (v2).
func (c *Container) OOMKills() (uint64, error) {
	file := "memory.oom_control"
	if c.version == 2 {
		file = "memory.events"
	}
	b, err := os.ReadFile(filepath.Join(c.CgroupDir, file))
	if err != nil {
		return 0, fmt.Errorf("podsim: %s: %w", c.Name, err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("podsim: %s: oom_kill %q: %w", c.Name, v, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("podsim: %s: no oom_kill line in %s", c.Name, file)
}

// setLimitV1 writes the memory limit, and the same memory+swap limit when the
// kernel accounts swap, so the container is OOM-killed rather than swapped.
func setLimitV1(dir string, limit int64) error {
	if limit <= 0 {
		return nil
	}
	v := []byte(strconv.FormatInt(limit, 10))
	if err := os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), v, 0); err != nil {
		return fmt.Errorf("set memory limit: %w", err)
	}
	memsw := filepath.Join(dir, "memory.memsw.limit_in_bytes")
	if _, err := os.Stat(memsw); err == nil {
		if err := os.WriteFile(memsw, v, 0); err != nil {
			return fmt.Errorf("set memory+swap limit: %w", err)
		}
	}
	return nil
}

// setLimitV2 writes memory.max, no swap, and memory.oom.group=1: the
// kubelet sets it on v2 so an OOM kill takes the whole container, not one
// of its processes.
func setLimitV2(dir string, limit int64) error {
	if err := os.WriteFile(filepath.Join(dir, "memory.oom.group"), []byte("1"), 0); err != nil {
		return fmt.Errorf("set memory.oom.group: %w", err)
	}
	if limit <= 0 {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "memory.max"), []byte(strconv.FormatInt(limit, 10)), 0); err != nil {
		return fmt.Errorf("set memory limit: %w", err)
	}
	swap := filepath.Join(dir, "memory.swap.max")
	if _, err := os.Stat(swap); err == nil {
		if err := os.WriteFile(swap, []byte("0"), 0); err != nil {
			return fmt.Errorf("set swap limit: %w", err)
		}
	}
	return nil
}

// removeCgroup removes a cgroup directory once its last task is gone; a
// killed task leaves the group a moment after it is reaped.
func removeCgroup(dir string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("podsim: remove cgroup %s: %w", dir, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// namePrefix starts the cgroup directory of every emulated pod.
const namePrefix = "heapwatch-podsim-"

// staleAge is how old an emulated pod's cgroup must be, with no process
// left in it, to be taken for the leftover of a killed caller (Close never
// ran). Younger ones may belong to a pod being started right now.
const staleAge = 10 * time.Minute

// removeStale removes the empty cgroups of emulated pods whose caller was
// killed before Close. A group that still has tasks cannot be removed.
func removeStale(root string) {
	dirs, _ := filepath.Glob(filepath.Join(root, namePrefix+"*"))
	for _, dir := range dirs {
		st, err := os.Stat(dir)
		if err != nil || time.Since(st.ModTime()) < staleAge {
			continue
		}
		children, _ := os.ReadDir(dir)
		for _, c := range children {
			if c.IsDir() {
				_ = os.Remove(filepath.Join(dir, c.Name()))
			}
		}
		_ = os.Remove(dir)
	}
}

// childPID waits briefly for the single child of pid to appear.
func childPID(pid int) (int, error) {
	path := fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)
	for range 500 {
		b, err := os.ReadFile(path)
		if err != nil {
			return 0, fmt.Errorf("children of %d: %w", pid, err)
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			return strconv.Atoi(f[0])
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0, fmt.Errorf("process %d has no child after 5s", pid)
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return -1
	}, strings.ToLower(s))
}
