package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"
)

// assets are the host-side parts of a VM, fetched once into the cache.
type assets struct {
	kernel  string // vmlinuz
	busybox string // static busybox
	qemu    string // qemu-system-x86_64
	// qemuEnv and qemuArgs let an extracted (not installed) QEMU find its
	// libraries and firmware.
	qemuEnv  []string
	qemuArgs []string
	// cached is true when nothing had to be downloaded.
	cached bool
}

// kernelMeta is Debian's metapackage that depends on the current cloud
// kernel: small, boots in seconds, has cgroup v2, PSI and the 8250 serial
// port built in.
const kernelMeta = "linux-image-cloud-amd64"

// fetch makes sure the kernel, busybox and QEMU are in dir, taking them
// from Debian's archive with apt-get download + dpkg -x (nothing is
// installed on the host). A lock file serialises concurrent callers.
func fetch(ctx context.Context, dir string) (*assets, error) {
	f, unlock, err := lockedFetcher(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	a := f.a
	if a.kernel, err = f.kernel(); err != nil {
		return nil, err
	}
	if a.busybox, err = f.extracted("busybox-static", "bin/busybox"); err != nil {
		return nil, err
	}
	if err := f.qemu(); err != nil {
		return nil, err
	}
	return a, nil
}

type fetcher struct {
	ctx     context.Context
	dir     string
	a       *assets
	updated bool
}

func (f *fetcher) run(dir string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(f.ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("vm: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// aptReady runs apt-get update once when the package lists are empty (a
// fresh machine).
func (f *fetcher) aptReady() error {
	if f.updated {
		return nil
	}
	f.updated = true
	if lists, _ := filepath.Glob("/var/lib/apt/lists/*_Packages*"); len(lists) > 0 {
		return nil
	}
	_, err := f.run("/", "apt-get", "update")
	return err
}

// extracted returns dir/<pkg>/<file>, downloading and extracting pkg first
// unless a previous call completed (its .ok marker exists).
func (f *fetcher) extracted(pkg, file string) (string, error) {
	root := filepath.Join(f.dir, pkg)
	if _, err := os.Stat(root + ".ok"); err == nil {
		return filepath.Join(root, file), nil
	}
	if err := f.download(root, pkg); err != nil {
		return "", err
	}
	if err := os.WriteFile(root+".ok", nil, 0o644); err != nil {
		return "", fmt.Errorf("vm: cache: %w", err)
	}
	return filepath.Join(root, file), nil
}

// download fetches the packages and extracts them all into root.
func (f *fetcher) download(root string, pkgs ...string) error {
	f.a.cached = false
	if err := f.aptReady(); err != nil {
		return err
	}
	debs := root + ".debs"
	if err := os.RemoveAll(debs); err != nil {
		return fmt.Errorf("vm: cache: %w", err)
	}
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return fmt.Errorf("vm: cache: %w", err)
	}
	if _, err := f.run(debs, "apt-get", append([]string{"download"}, pkgs...)...); err != nil {
		return err
	}
	files, _ := filepath.Glob(filepath.Join(debs, "*.deb"))
	if len(files) != len(pkgs) {
		return fmt.Errorf("vm: apt-get download of %d packages gave %d files", len(pkgs), len(files))
	}
	for _, deb := range files {
		if _, err := f.run(debs, "dpkg", "-x", deb, root); err != nil {
			return err
		}
	}
	return os.RemoveAll(debs)
}

var dependsRE = regexp.MustCompile(`(?m)^\s*Depends: (linux-image-[^\s]+)$`)

func (f *fetcher) kernel() (string, error) {
	if err := f.aptReady(); err != nil {
		return "", err
	}
	out, err := f.run("/", "apt-cache", "depends", kernelMeta)
	if err != nil {
		return "", err
	}
	m := dependsRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("vm: %s depends on no kernel package:\n%s", kernelMeta, out)
	}
	pkg := string(m[1])
	if _, err := f.extracted(pkg, "boot"); err != nil {
		return "", err
	}
	kernels, _ := filepath.Glob(filepath.Join(f.dir, pkg, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return "", fmt.Errorf("vm: %s: want one boot/vmlinuz-*, found %v", pkg, kernels)
	}
	return kernels[0], nil
}

// qemu uses an installed qemu-system-x86_64, or extracts Debian's package
// with every dependency the host does not have installed.
func (f *fetcher) qemu() error {
	if p, err := exec.LookPath("qemu-system-x86_64"); err == nil {
		f.a.qemu = p
		return nil
	}
	root := filepath.Join(f.dir, "qemu")
	f.a.qemu = filepath.Join(root, "usr", "bin", "qemu-system-x86_64")
	f.a.qemuEnv = []string{"LD_LIBRARY_PATH=" + filepath.Join(root, "usr/lib/x86_64-linux-gnu") + ":" + filepath.Join(root, "lib/x86_64-linux-gnu")}
	f.a.qemuArgs = []string{"-L", filepath.Join(root, "usr/share/qemu")}
	if _, err := os.Stat(root + ".ok"); err == nil {
		return nil
	}
	if err := f.aptReady(); err != nil {
		return err
	}
	out, err := f.run("/", "apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
		"--no-breaks", "--no-replaces", "--no-enhances", "qemu-system-x86")
	if err != nil {
		return err
	}
	var missing []string
	seen := map[string]bool{}
	for line := range strings.SplitSeq(string(out), "\n") {
		// Package names start a line; indented lines are their
		// dependencies, <virtual> ones have no files.
		if line == "" || line[0] == ' ' || line[0] == '<' || seen[line] {
			continue
		}
		seen[line] = true
		st, _ := exec.CommandContext(f.ctx, "dpkg-query", "-W", "-f=${Status}", line).Output()
		if !strings.HasSuffix(string(st), "ok installed") {
			missing = append(missing, line)
		}
	}
	if len(missing) == 0 {
		return errors.New("vm: qemu-system-x86 is installed but qemu-system-x86_64 is not on PATH")
	}
	if err := f.download(root, missing...); err != nil {
		return err
	}
	if err := os.WriteFile(root+".ok", nil, 0o644); err != nil {
		return fmt.Errorf("vm: cache: %w", err)
	}
	return nil
}

// Package returns the directory Debian's package pkg is extracted into in
// the cache (cacheDir, or the default of Config.CacheDir), downloading it
// first if needed, for files a caller puts into the guest (a runtime, its
// plugins). Nothing is installed on the host.
func Package(ctx context.Context, cacheDir, pkg string) (string, error) {
	f, unlock, err := lockedFetcher(ctx, cacheDir)
	if err != nil {
		return "", err
	}
	defer unlock()
	return f.extracted(pkg, "")
}

// KernelModules returns the guest kernel's module tree
// (.../lib/modules/<release>), for modules a guest loads with insmod.
func KernelModules(ctx context.Context, cacheDir string) (string, error) {
	f, unlock, err := lockedFetcher(ctx, cacheDir)
	if err != nil {
		return "", err
	}
	defer unlock()
	kernel, err := f.kernel()
	if err != nil {
		return "", err
	}
	release := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	return filepath.Join(filepath.Dir(filepath.Dir(kernel)), "lib", "modules", release), nil
}

func lockedFetcher(ctx context.Context, dir string) (*fetcher, func(), error) {
	dir = cacheDir(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("vm: cache: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("vm: cache: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		lock.Close()
		return nil, nil, fmt.Errorf("vm: cache lock: %w", err)
	}
	return &fetcher{ctx: ctx, dir: dir, a: &assets{cached: true}}, func() { lock.Close() }, nil
}

// cacheDir is dir, else $HEAPWATCH_VM_DIR, else <module root>/bin/vm.
func cacheDir(dir string) string {
	if dir == "" {
		dir = os.Getenv("HEAPWATCH_VM_DIR")
	}
	if dir == "" {
		dir = filepath.Join(ModuleRoot(), "bin", "vm")
	}
	return dir
}
