// Package containerdtest runs a real containerd on the host for tests: the
// static v2 build of .ci/tools/containerd (internal/node builds it into
// ./bin/node), with its own root, state, sockets and opt directory in a
// temp dir, so it never touches the host's containerd, and its debug
// socket enabled (or not) as a node's operator would configure it. The
// CRI and NRI plugins are disabled: they would listen on host-wide paths
// and ports, and what the tests need is the daemon and its pprof.
package containerdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/internal/node"
	"github.com/heapwatch/heapwatch/internal/testkit"
)

// Options configure Start.
type Options struct {
	// NoDebug leaves the [debug] address out of the configuration, as
	// containerd ships by default: no debug socket.
	NoDebug bool
	// Exe, when set, runs containerd from a copy of the binary under this
	// file name in Dir: a test that finds its daemon by executable name
	// then finds this containerd, not another test's running at the same
	// time. Keep it within 15 bytes (comm).
	Exe string
	// Started, when set, is called with each new containerd process
	// before Start or Restart waits for it to answer: e.g. to move it into
	// a memory cgroup that stands for containerd.service.
	Started func(pid int) error
}

// Containerd is one running containerd.
type Containerd struct {
	// Dir holds everything it writes: root, state, opt, sockets, log.
	Dir string
	// Address is its gRPC socket (ctr --address).
	Address string
	// DebugSocket is its debug socket, serving /debug/pprof/*; it exists
	// only unless Options.NoDebug.
	DebugSocket string
	// Bin is the containerd binary; Ctr the ctr client.
	Bin, Ctr string

	o      Options
	t      testing.TB
	cmd    *exec.Cmd
	exited chan struct{}
	log    *os.File
}

// config is containerd's configuration with every path inside dir.
func config(dir string, debug bool) string {
	c := fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.nri.v1.nri"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "containerd.sock"),
		filepath.Join(dir, "containerd.sock.ttrpc"), filepath.Join(dir, "opt"))
	if debug {
		c += fmt.Sprintf("\n[debug]\n  address = %q\n  level = \"info\"\n", filepath.Join(dir, "debug.sock"))
	}
	return c
}

// Start builds containerd when ./bin/node lacks it (~2 min cold), starts
// it as root and returns once it answers on its gRPC socket (and its debug
// socket accepts, when enabled). It is stopped and its directory removed
// when the test ends, also when it fails.
func Start(t testing.TB, o Options) *Containerd {
	t.Helper()
	testkit.NeedsRoot(t, "to run containerd")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bins, err := node.ContainerdBinaries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Short: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "hw-ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Containerd{
		Dir: dir, Address: filepath.Join(dir, "containerd.sock"), DebugSocket: filepath.Join(dir, "debug.sock"),
		Bin: bins.Containerd, Ctr: bins.Ctr, o: o, t: t,
	}
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			c.dumpLog()
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("containerdtest: removing %s: %v", dir, err)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config(dir, !o.NoDebug)), 0o600); err != nil {
		t.Fatal(err)
	}
	if o.Exe != "" {
		c.Bin = filepath.Join(dir, o.Exe)
		if err := copyFile(bins.Containerd, c.Bin); err != nil {
			t.Fatal(err)
		}
	}
	c.start()
	return c
}

// PID is the running containerd's process ID.
func (c *Containerd) PID() int { return c.cmd.Process.Pid }

// Restart stops containerd (SIGTERM, as systemd does) and starts a new
// process on the same directory: a daemon restarted under the same name.
func (c *Containerd) Restart() {
	c.t.Helper()
	c.stop()
	c.start()
}

func (c *Containerd) start() {
	c.t.Helper()
	log, err := os.OpenFile(filepath.Join(c.Dir, "containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.Bin, "--config", filepath.Join(c.Dir, "config.toml"))
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group: a signal to the test's group does not reach it
	// before the cleanup does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		log.Close()
		c.t.Fatalf("containerdtest: starting %s: %v", c.Bin, err)
	}
	c.cmd, c.log = cmd, log
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	c.exited = exited
	if c.o.Started != nil {
		if err := c.o.Started(cmd.Process.Pid); err != nil {
			c.t.Fatalf("containerdtest: %v", err)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for sleep := 10 * time.Millisecond; ; sleep = min(2*sleep, 200*time.Millisecond) {
		select {
		case <-exited:
			c.t.Fatalf("containerdtest: containerd exited at start (%v)", cmd.ProcessState)
		default:
		}
		err := c.ready()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("containerdtest: containerd not ready after 60 s: %v", err)
		}
		time.Sleep(sleep)
	}
}

// ready asks containerd for its version over gRPC.
func (c *Containerd) ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.Ctr, "--address", c.Address, "version").CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr version: %w: %s", err, bytes.TrimSpace(out))
	}
	if !c.o.NoDebug {
		if _, err := os.Stat(c.DebugSocket); err != nil {
			return err
		}
	}
	return nil
}

// stop ends containerd: SIGTERM, SIGKILL after 10 s.
func (c *Containerd) stop() {
	if c.cmd == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		c.t.Errorf("containerdtest: containerd did not stop on SIGTERM within 10 s; killing it")
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	c.log.Close()
	c.cmd = nil
}

func (c *Containerd) dumpLog() {
	b, err := os.ReadFile(filepath.Join(c.Dir, "containerd.log"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		c.t.Logf("containerdtest: %v", err)
	}
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	c.t.Logf("containerd's log (tail):\n%s", b)
}

// copyFile links from at to, or copies it across file systems.
func copyFile(from, to string) error {
	if os.Link(from, to) == nil {
		return nil
	}
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("containerdtest: copying %s: %w", from, err)
	}
	return out.Close()
}
