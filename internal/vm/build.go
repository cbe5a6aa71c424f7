package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// hostTools are util-linux programs the guest takes from the host with their
// libraries: busybox's unshare has no --cgroup or --kill-child.
var hostTools = []string{"/usr/bin/unshare", "/usr/bin/nsenter", "/usr/bin/mount", "/usr/bin/setpriv"}

// GoBuild builds a static binary (CGO_ENABLED=0) of the module's package
// pkg ("./cmd/sidecar") into out; with test it builds the package's test
// binary (go test -c).
func GoBuild(ctx context.Context, out, pkg string, test bool) error {
	args := []string{"build", "-trimpath", "-o", out, pkg}
	if test {
		args = []string{"test", "-c", "-trimpath", "-o", out, pkg}
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = ModuleRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("vm: go %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

func buildInitramfs(ctx context.Context, out, work, busybox string, files, programs map[string]string) error {
	r := initramfs{}
	guest := filepath.Join(work, "guest-init")
	if err := GoBuild(ctx, guest, "./internal/vm/guest", false); err != nil {
		return err
	}
	if err := r.addFile("/init", guest); err != nil {
		return err
	}
	if err := r.addFile("/bin/busybox", busybox); err != nil {
		return err
	}
	list, err := exec.CommandContext(ctx, busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("vm: busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" {
			continue
		}
		r.addSymlink("/bin/"+applet, "busybox")
	}
	for _, tool := range hostTools {
		if err := r.addWithLibraries(ctx, tool, tool); err != nil {
			return err
		}
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/usr/sbin", "/sbin"} {
		r.addDirs(d)
	}
	r.addData("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"))
	r.addData("/etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	r.addData("/etc/hosts", 0o644, []byte("127.0.0.1 localhost\n"))
	for dst, src := range files {
		if err := r.addFile(dst, src); err != nil {
			return err
		}
	}
	for dst, src := range programs {
		if err := r.addWithLibraries(ctx, dst, src); err != nil {
			return err
		}
	}
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	if err := r.writeTo(f); err != nil {
		f.Close()
		return fmt.Errorf("vm: write initramfs: %w", err)
	}
	return f.Close()
}

// addWithLibraries adds the dynamically linked host program bin at dst, with
// the libraries and loader ldd names at their host paths.
func (r initramfs) addWithLibraries(ctx context.Context, dst, bin string) error {
	if err := r.addFile(dst, bin); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "ldd", bin).Output()
	if err != nil {
		return fmt.Errorf("vm: ldd %s: %w", bin, err)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		f := strings.Fields(line)
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0] // the loader
		default:
			continue
		}
		if err := r.addFile(lib, lib); err != nil {
			return err
		}
	}
	return nil
}
