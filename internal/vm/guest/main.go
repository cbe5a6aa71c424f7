// Command guest is the init (PID 1) of the harness's VM: it mounts the
// kernel filesystems and cgroup2, then serves wire.Requests from the second
// serial port until told to power off.
//
// PID 1 only mounts, reaps orphans and powers off; the server runs as its
// child, so reaping every orphan never steals the exit status of a command
// the server waits for.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/heapwatch/heapwatch/internal/vm/wire"
)

const (
	serverEnv = "HEAPWATCH_VM_SERVER"
	control   = "/dev/ttyS1"
)

// baseEnv is every command's environment before the request's own.
var baseEnv = []string{"PATH=/usr/bin:/usr/sbin:/bin:/sbin", "HOME=/root", "TMPDIR=/tmp"}

func main() {
	if os.Getenv(serverEnv) != "" {
		if err := serve(); err != nil {
			fmt.Fprintln(os.Stderr, "guest: server:", err)
			os.Exit(1)
		}
		return
	}
	if err := tmpfsRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "guest: tmpfs root:", err)
		powerOff()
	}
	if err := setup(); err != nil {
		fmt.Fprintln(os.Stderr, "guest: setup:", err)
		powerOff()
	}
	cmd := exec.Command("/init")
	cmd.Env = append(baseEnv, serverEnv+"=1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "guest: start server:", err)
		powerOff()
	}
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if err != nil && !errors.Is(err, unix.EINTR) {
			fmt.Fprintln(os.Stderr, "guest: wait:", err)
			break
		}
		if pid == cmd.Process.Pid {
			break
		}
	}
	powerOff()
}

func powerOff() {
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

// tmpfsRoot moves the root filesystem from the initramfs into a tmpfs when
// the kernel command line asks for it (vm.Config.TmpfsRoot): runc's
// pivot_root cannot leave the initramfs rootfs, a real node's root is a
// real mount. It copies the initramfs into a tmpfs and execs itself there
// through busybox's switch_root (which frees the initramfs), once.
func tmpfsRoot() error {
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		if err := os.MkdirAll("/proc", 0o755); err != nil {
			return err
		}
		if err := unix.Mount("proc", "/proc", "proc", 0, ""); err != nil {
			return err
		}
		cmdline, err = os.ReadFile("/proc/cmdline")
		if err := unix.Unmount("/proc", 0); err != nil {
			return err
		}
		if err != nil {
			return err
		}
	}
	if !slices.Contains(strings.Fields(string(cmdline)), wire.TmpfsRootArg) || os.Getenv(tmpfsRootEnv) != "" {
		return nil
	}
	const newRoot = "/newroot"
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", newRoot, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", newRoot, err)
	}
	entries, err := os.ReadDir("/")
	if err != nil {
		return err
	}
	args := []string{"cp", "-a"}
	for _, e := range entries {
		if name := e.Name(); name != "newroot" && name != "proc" && name != "sys" && name != "dev" {
			args = append(args, "/"+name)
		}
	}
	cp := exec.Command("/bin/busybox", append(args, newRoot+"/")...)
	cp.Stdin = os.Stdin // the console: there is no /dev/null yet
	if out, err := cp.CombinedOutput(); err != nil {
		return fmt.Errorf("copy the initramfs: %w: %s", err, out)
	}
	for _, d := range []string{"proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(newRoot, d), 0o755); err != nil {
			return err
		}
	}
	env := append(os.Environ(), tmpfsRootEnv+"=1")
	return syscall.Exec("/bin/busybox", []string{"switch_root", newRoot, "/init"}, env)
}

const tmpfsRootEnv = "HEAPWATCH_VM_TMPFS_ROOT"

// setup mounts what a node's init would and enables the cgroup v2
// controllers in the root, as systemd does on a cgroup v2 node.
func setup() error {
	for _, m := range []struct{ fstype, dir string }{
		{"proc", "/proc"}, {"sysfs", "/sys"}, {"devtmpfs", "/dev"}, {"tmpfs", "/dev/shm"}, {"tmpfs", "/tmp"}, {"tmpfs", "/run"},
		{"cgroup2", "/sys/fs/cgroup"},
	} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.fstype, m.dir, m.fstype, 0, ""); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dir, err)
		}
	}
	ctrl, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
	if err != nil {
		return err
	}
	for _, c := range strings.Fields(string(ctrl)) {
		if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+"+c), 0); err != nil {
			return fmt.Errorf("enable cgroup controller %s: %w", c, err)
		}
	}
	if err := unix.Sethostname([]byte("heapwatch-vm")); err != nil {
		return err
	}
	if out, err := exec.Command("/bin/ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("ip link set lo up: %w: %s", err, out)
	}
	return nil
}

// raw puts the serial line into raw mode: no echo, no line editing, no
// character translation, so JSON lines of any length pass unchanged.
func raw(f *os.File) error {
	t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	return unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t)
}

// sender serialises messages from the output copiers and the server.
type sender struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (s *sender) send(m wire.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.enc.Encode(m)
}

// chunks sends what a command writes as Output messages.
type chunks struct {
	s  *sender
	id int
}

func (c chunks) Write(p []byte) (int, error) {
	if err := c.s.send(wire.Message{ID: c.id, Output: p}); err != nil {
		return 0, err
	}
	return len(p), nil
}

func serve() error {
	f, err := os.OpenFile(control, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	if err := raw(f); err != nil {
		return fmt.Errorf("raw mode on %s: %w", control, err)
	}
	var u unix.Utsname
	_ = unix.Uname(&u)
	s := &sender{enc: json.NewEncoder(f)}
	if err := s.send(wire.Message{Ready: true, Kernel: unix.ByteSliceToString(u.Release[:])}); err != nil {
		return err
	}
	in := bufio.NewScanner(f)
	in.Buffer(nil, 16<<20)
	for in.Scan() {
		var req wire.Request
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			if err := s.send(wire.Message{Done: true, Exit: -1, Err: "bad request: " + err.Error()}); err != nil {
				return err
			}
			continue
		}
		if req.PowerOff {
			return nil
		}
		if err := s.send(run(s, req)); err != nil {
			return err
		}
	}
	return in.Err()
}

// run runs one request and returns its Done message.
func run(s *sender, req wire.Request) wire.Message {
	done := wire.Message{ID: req.ID, Done: true}
	if len(req.Argv) == 0 {
		done.Exit, done.Err = -1, "empty argv"
		return done
	}
	out := chunks{s: s, id: req.ID}
	cmd := exec.Command(req.Argv[0], req.Argv[1:]...)
	cmd.Env = append(append([]string{}, baseEnv...), req.Env...)
	cmd.Dir = req.Dir
	// One writer for both: exec.Cmd then copies through a single pipe, so
	// the order of the command's writes is kept.
	var w io.Writer = out
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		if st, ok := ee.Sys().(syscall.WaitStatus); ok && st.Signaled() {
			done.Exit = 128 + int(st.Signal())
		} else {
			done.Exit = ee.ExitCode()
		}
	default:
		done.Exit, done.Err = -1, err.Error()
	}
	done.Files = map[string][]byte{}
	var errs []error
	for _, root := range req.Collect {
		errs = append(errs, filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(path)
			done.Files[path] = b
			return err
		}))
	}
	if err := errors.Join(errs...); err != nil {
		done.Err = strings.TrimSpace(done.Err + "\ncollect: " + err.Error())
	}
	return done
}
