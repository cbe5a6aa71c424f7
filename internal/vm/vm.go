// Package vm boots a throwaway Linux VM under QEMU for tests that need a
// kernel this machine does not run (cgroup v2 with a memory controller):
// Boot with the files the tests need, Run commands in it and get their
// output and files back, Close.
//
// The kernel (Debian's cloud kernel), busybox and QEMU come from Debian's
// archive through apt-get download + dpkg -x into a cache directory
// (./bin/vm), once. The guest boots from an initramfs the harness writes:
// its init (internal/vm/guest, a static Go program), busybox, util-linux's
// unshare/nsenter/mount with their libraries, and the caller's files.
// Commands and results travel as JSON lines over the second serial port;
// the first one is the kernel console, kept in the work directory.
//
// QEMU runs with software emulation (TCG): /dev/kvm on this machine kind
// is a nested hypervisor that cannot run a stock kernel and hangs instead
// of failing. QEMU is killed on Close, when Boot fails, when a Run's
// context ends, and (Pdeathsig) when the test process dies.
package vm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/heapwatch/heapwatch/internal/vm/wire"
)

// Config describes a VM.
type Config struct {
	// CacheDir holds the downloaded kernel, busybox and QEMU; default
	// <module root>/bin/vm, or $HEAPWATCH_VM_DIR.
	CacheDir string
	// WorkDir receives the initramfs and the console log; default a new
	// temporary directory removed by Close.
	WorkDir string
	// Files maps guest paths to host files copied into the initramfs.
	Files map[string]string
	// Programs maps guest paths to dynamically linked host programs (e.g.
	// from a Debian package), copied with the libraries ldd names.
	Programs map[string]string
	// MemoryMiB and CPUs of the guest; defaults 2048 and 2.
	MemoryMiB, CPUs int
	// TmpfsRoot makes the guest's root a tmpfs instead of the initramfs
	// rootfs, which runc cannot pivot_root out of (a container runtime
	// in the guest needs it).
	TmpfsRoot bool
	// Network gives the guest a virtio NIC on QEMU's user-mode network:
	// the guest (10.0.2.15 once configured) reaches the host's loopback
	// as 10.0.2.2, nothing else. The guest loads the virtio_net module.
	Network bool
	// BootTimeout bounds fetching, building and booting; default 5 min.
	BootTimeout time.Duration
	// Log receives progress lines (timings); nil discards them.
	Log io.Writer
}

// Timings says where the time went.
type Timings struct {
	Fetch  time.Duration // kernel, busybox, QEMU (cache hit: milliseconds)
	Cached bool          // nothing was downloaded
	Build  time.Duration // guest init and initramfs
	Boot   time.Duration // QEMU start to the guest's ready message
}

func (t Timings) String() string {
	c := ""
	if t.Cached {
		c = " (cached)"
	}
	return fmt.Sprintf("fetch %v%s, build %v, boot %v", t.Fetch.Round(time.Millisecond), c,
		t.Build.Round(time.Millisecond), t.Boot.Round(time.Millisecond))
}

// Accel is the QEMU accelerator the harness uses.
const Accel = "tcg"

// VM is a running guest. Run calls are serialised.
type VM struct {
	Timings Timings
	Kernel  string // the guest's uname -r
	work    string
	ownWork bool
	log     io.Writer

	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{}
	stderr bytes.Buffer

	runMu sync.Mutex
	mu    sync.Mutex
	cur   *pending
	ready chan string
	err   error // why the reader stopped
	id    int
	once  sync.Once
}

type pending struct {
	id   int
	out  io.Writer
	buf  bytes.Buffer
	done chan wire.Message
}

// Boot fetches what is missing, builds the initramfs and boots the guest,
// returning once it is ready for commands.
func Boot(ctx context.Context, cfg Config) (_ *VM, err error) {
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 2048
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 5 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	cfg.CacheDir = cacheDir(cfg.CacheDir)
	ctx, cancel := context.WithTimeout(ctx, cfg.BootTimeout)
	defer cancel()
	v := &VM{work: cfg.WorkDir, log: cfg.Log, exited: make(chan struct{}), ready: make(chan string, 1)}
	if v.work == "" {
		if v.work, err = os.MkdirTemp("", "heapwatch-vm-"); err != nil {
			return nil, fmt.Errorf("vm: %w", err)
		}
		v.ownWork = true
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, v.Close())
		}
	}()

	start := time.Now()
	a, err := fetch(ctx, cfg.CacheDir)
	if err != nil {
		return nil, err
	}
	v.Timings.Fetch, v.Timings.Cached = time.Since(start), a.cached

	start = time.Now()
	initrd := filepath.Join(v.work, "initrd.cpio")
	if err := buildInitramfs(ctx, initrd, v.work, a.busybox, cfg.Files, cfg.Programs); err != nil {
		return nil, err
	}
	v.Timings.Build = time.Since(start)

	start = time.Now()
	if err := v.start(a, initrd, cfg); err != nil {
		return nil, err
	}
	select {
	case v.Kernel = <-v.ready:
	case <-v.exited:
		return nil, fmt.Errorf("vm: QEMU exited during boot: %w\n%s", v.readErr(), v.tail())
	case <-ctx.Done():
		return nil, fmt.Errorf("vm: guest not ready within %v (accel %s): %w\n%s", cfg.BootTimeout, Accel, ctx.Err(), v.tail())
	}
	v.Timings.Boot = time.Since(start)
	fmt.Fprintf(v.log, "vm: kernel %s, accel %s, %d MiB, %d CPUs: %s\n", v.Kernel, Accel, cfg.MemoryMiB, cfg.CPUs, v.Timings)
	return v, nil
}

func (v *VM) start(a *assets, initrd string, cfg Config) error {
	args := append([]string{}, a.qemuArgs...)
	appendArg := "console=ttyS0 quiet panic=-1 oops=panic"
	if cfg.TmpfsRoot {
		appendArg += " " + wire.TmpfsRootArg
	}
	if cfg.Network {
		args = append(args, "-nic", "user,model=virtio-net-pci")
	}
	args = append(args,
		"-accel", Accel, "-cpu", "max", "-m", fmt.Sprint(cfg.MemoryMiB), "-smp", fmt.Sprint(cfg.CPUs),
		"-nodefaults", "-display", "none", "-no-reboot",
		"-kernel", a.kernel, "-initrd", initrd,
		"-append", appendArg,
		"-chardev", "file,id=console,path="+v.ConsolePath(), "-serial", "chardev:console",
		"-chardev", "stdio,id=control,signal=off", "-serial", "chardev:control",
	)
	cmd := exec.Command(a.qemu, args...)
	cmd.Env = append(os.Environ(), a.qemuEnv...)
	cmd.Stderr = &lockedWriter{mu: &v.mu, w: &v.stderr}
	// Pdeathsig: QEMU dies with the test process, whatever kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var err error
	if v.stdin, err = cmd.StdinPipe(); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("vm: start QEMU: %w", err)
	}
	v.cmd = cmd
	go v.read(stdout)
	go func() {
		_ = cmd.Wait()
		close(v.exited)
	}()
	return nil
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// read dispatches the guest's messages until the control line closes.
func (v *VM) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 256<<20)
	var err error
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		// Anything before the guest's first message (firmware noise) is not
		// JSON; skip it.
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var m wire.Message
		if e := json.Unmarshal(line, &m); e != nil {
			err = fmt.Errorf("vm: bad message from guest: %w", e)
			break
		}
		if m.Ready {
			v.ready <- m.Kernel
			continue
		}
		v.mu.Lock()
		p := v.cur
		v.mu.Unlock()
		if p == nil || p.id != m.ID {
			continue
		}
		if len(m.Output) > 0 {
			v.mu.Lock()
			p.buf.Write(m.Output) // read by Run on a timeout, under v.mu
			v.mu.Unlock()
			if p.out != nil {
				_, _ = p.out.Write(m.Output)
			}
		}
		if m.Done {
			p.done <- m
		}
	}
	if err == nil {
		err = sc.Err()
	}
	if err == nil {
		err = errors.New("vm: control line closed")
	}
	v.mu.Lock()
	v.err = err
	v.mu.Unlock()
}

func (v *VM) readErr() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.err
}

// Command is what Run runs in the guest.
type Command struct {
	Argv []string
	Env  []string
	Dir  string
	// Collect lists guest files or directories to bring back.
	Collect []string
	// Output receives the command's output as it arrives (e.g. os.Stdout
	// or a t.Log writer); it is also in Result.Output.
	Output io.Writer
}

// Result is a finished command.
type Result struct {
	Output []byte
	// ExitCode is 128+signal when the command was killed.
	ExitCode int
	// Files maps the collected guest paths to their contents.
	Files    map[string][]byte
	Duration time.Duration
}

// Run runs a command in the guest and waits for it. When ctx ends first
// the VM is killed (its state is unknown) and the error says so.
func (v *VM) Run(ctx context.Context, c Command) (*Result, error) {
	v.runMu.Lock()
	defer v.runMu.Unlock()
	v.mu.Lock()
	v.id++
	p := &pending{id: v.id, out: c.Output, done: make(chan wire.Message, 1)}
	v.cur = p
	v.mu.Unlock()
	defer func() {
		v.mu.Lock()
		v.cur = nil
		v.mu.Unlock()
	}()
	start := time.Now()
	b, err := json.Marshal(wire.Request{ID: p.id, Argv: c.Argv, Env: c.Env, Dir: c.Dir, Collect: c.Collect})
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	if _, err := v.stdin.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("vm: send %q: %w\n%s", c.Argv, err, v.tail())
	}
	select {
	case m := <-p.done:
		res := &Result{Output: p.buf.Bytes(), ExitCode: m.Exit, Files: m.Files, Duration: time.Since(start)}
		if m.Err != "" {
			return res, fmt.Errorf("vm: %q: %s", c.Argv, m.Err)
		}
		return res, nil
	case <-v.exited:
		return nil, fmt.Errorf("vm: QEMU exited while running %q: %w\n%s", c.Argv, v.readErr(), v.tail())
	case <-ctx.Done():
		v.kill()
		v.mu.Lock()
		out := p.buf.String()
		v.mu.Unlock()
		deadline := ""
		if d, ok := ctx.Deadline(); ok {
			deadline = fmt.Sprintf(" within %v", d.Sub(start).Round(time.Second))
		}
		return nil, fmt.Errorf("vm: %q did not finish%s (accel %s; the VM was killed): %w\noutput tail:\n%s\n%s",
			c.Argv, deadline, Accel, ctx.Err(), lastLines(out, 20), v.tail())
	}
}

func (v *VM) kill() {
	if v.cmd != nil && v.cmd.Process != nil {
		_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// Close powers the guest off (killing QEMU if it does not stop within 10 s)
// and removes the work directory it made. Safe to call more than once.
func (v *VM) Close() error {
	var err error
	v.once.Do(func() {
		if v.cmd != nil {
			b, _ := json.Marshal(wire.Request{PowerOff: true})
			_, _ = v.stdin.Write(append(b, '\n'))
			select {
			case <-v.exited:
			case <-time.After(10 * time.Second):
				v.kill()
				<-v.exited
			}
			v.kill() // anything QEMU left in its process group
		}
		if v.ownWork {
			err = os.RemoveAll(v.work)
		}
	})
	return err
}

// ConsolePath is the guest's kernel console log.
func (v *VM) ConsolePath() string { return filepath.Join(v.work, "console.log") }

// tail is the end of the console and QEMU's stderr, for error messages.
func (v *VM) tail() string {
	console, _ := os.ReadFile(v.ConsolePath())
	v.mu.Lock()
	stderr := v.stderr.String()
	v.mu.Unlock()
	return fmt.Sprintf("console tail:\n%s\nqemu stderr:\n%s", lastLines(string(console), 30), lastLines(stderr, 10))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ModuleRoot is the directory of the heapwatch module (where go.mod is).
func ModuleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}
