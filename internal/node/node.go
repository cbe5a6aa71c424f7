// Package node runs a real Kubernetes node for the tests: the kubelet,
// containerd and runc on cgroup v2, inside the QEMU VM of internal/vm,
// registered with a kube-apiserver on the host (reached from the guest as
// 10.0.2.2, QEMU's user-mode network alias of the host's loopback).
//
// Everything comes from the Go module proxy and Debian's archive, cached in
// ./bin: the kubelet (.ci/tools/node) and containerd with its runc shim and
// ctr (.ci/tools/containerd) are built static; runc and the CNI plugins are
// Debian's packages, extracted (apt-get download + dpkg -x), never
// installed. Images are docker archives made from static binaries (Image)
// and imported with ctr; the sandbox (pause) image is internal/node/pause.
package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/heapwatch/heapwatch/internal/vm"
)

// Guest facts the tests see in the API.
const (
	// Name is the node's name: the guest's hostname.
	Name = "heapwatch-vm"
	// IP is the node's address on QEMU's user-mode network.
	IP = "10.0.2.15"
	// HostAlias is the host's loopback as the guest reaches it.
	HostAlias = "10.0.2.2"
	// PodGateway is the node as its pods reach it: the ptp plugin's
	// gateway, the first address of the pods' subnet (cniConfig). The
	// Config's HostPorts are forwarded to the host there.
	PodGateway = "10.88.0.1"
	// PauseImage is the sandbox image containerd is configured with.
	PauseImage = "heapwatch.test/pause:node"
	// PodsDir is where the kubelet keeps pods' volumes in the guest.
	PodsDir = "/var/lib/kubelet/pods"
)

// Config describes a node.
type Config struct {
	// Kubeconfig is the kubelet's kubeconfig with a server on the host's
	// loopback (https://127.0.0.1:PORT); Start points it at HostAlias.
	Kubeconfig []byte
	// Images are imported into containerd's k8s.io namespace besides the
	// pause image.
	Images []Image
	// HostPorts are ports on the host's loopback that pods reach at
	// PodGateway:PORT (internal/node/hostfwd relays them): pods' own
	// addresses get no answer through QEMU's user-mode network.
	HostPorts []int
	// Log receives progress lines with timings.
	Log io.Writer
}

// Timings of a Start, from the VM's boot.
type Timings struct {
	Boot, Containerd, Kubelet time.Duration
}

func (t Timings) String() string {
	return fmt.Sprintf("boot %v, containerd ready %v, kubelet started %v", t.Boot.Round(time.Millisecond),
		t.Containerd.Round(time.Millisecond), t.Kubelet.Round(time.Millisecond))
}

// Node is a running node.
type Node struct {
	VM      *vm.VM
	Timings Timings
	work    string
}

// modules are the guest kernel's modules the node needs, in load order: the
// virtio NIC and veth for the CNI ptp plugin.
var modules = []string{
	"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
	"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
	"kernel/drivers/virtio/virtio_pci.ko", "kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko",
	"kernel/drivers/net/virtio_net.ko", "kernel/drivers/net/veth.ko",
}

// Start builds and fetches what is missing, boots the VM and starts
// containerd and the kubelet. It returns once the kubelet runs; the caller
// waits for the node object to be Ready. Close tears it all down.
func Start(ctx context.Context, cfg Config) (_ *Node, err error) {
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	work, err := os.MkdirTemp("", "heapwatch-node-")
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	n := &Node{work: work}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Close())
		}
	}()
	files, programs, err := n.prepare(ctx, cfg)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	n.VM, err = vm.Boot(ctx, vm.Config{
		Files: files, Programs: programs, TmpfsRoot: true, Network: true,
		MemoryMiB: 3072, CPUs: 2, BootTimeout: 10 * time.Minute, Log: cfg.Log,
	})
	if err != nil {
		return nil, err
	}
	n.Timings.Boot = time.Since(start)
	if _, err := n.Shell(ctx, 10*time.Minute, setupScript); err != nil {
		return nil, err
	}
	n.Timings.Containerd = time.Since(start)
	if len(cfg.HostPorts) > 0 {
		fwd := "setsid /usr/bin/hostfwd"
		for _, p := range cfg.HostPorts {
			fwd += fmt.Sprintf(" :%d=%s:%d", p, HostAlias, p)
		}
		if _, err := n.Shell(ctx, time.Minute, fwd+" >/var/log/hostfwd.log 2>&1 </dev/null &"); err != nil {
			return nil, err
		}
	}
	if _, err := n.Shell(ctx, 10*time.Minute, kubeletScript); err != nil {
		return nil, err
	}
	n.Timings.Kubelet = time.Since(start)
	fmt.Fprintf(cfg.Log, "node: %s\n", n.Timings)
	return n, nil
}

// Shell runs a busybox sh script in the guest and fails unless it exits 0.
func (n *Node) Shell(ctx context.Context, timeout time.Duration, script string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := n.VM.Run(ctx, vm.Command{Argv: []string{"/bin/sh", "-ec", script}})
	if err != nil {
		return nil, err
	}
	if res.ExitCode != 0 {
		return res.Output, fmt.Errorf("node: script exited %d:\n%s\n%s", res.ExitCode, res.Output, n.logs(ctx))
	}
	return res.Output, nil
}

// Collect returns the guest files under dir (none if it does not exist).
func (n *Node) Collect(ctx context.Context, dir string) (map[string][]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	res, err := n.VM.Run(ctx, vm.Command{Argv: []string{"/bin/sh", "-c", "test -d " + dir}})
	if err != nil || res.ExitCode != 0 {
		return nil, err
	}
	res, err = n.VM.Run(ctx, vm.Command{Argv: []string{"/bin/true"}, Collect: []string{dir}})
	if err != nil {
		return nil, err
	}
	return res.Files, nil
}

// Logs returns the tails of the kubelet's and containerd's logs.
func (n *Node) logs(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	res, err := n.VM.Run(ctx, vm.Command{Argv: []string{"/bin/sh", "-c",
		"for f in " + containerdLog + " /var/log/kubelet.log /var/log/pods/*/*/*.log; do echo \"== $f\"; tail -n 40 $f; done; " +
			"find " + PodsDir + " -path '*empty-dir*'"}})
	if err != nil {
		return err.Error()
	}
	return string(res.Output)
}

// Logs returns the tails of the kubelet's and containerd's logs, for a
// failing test's message.
func (n *Node) Logs(ctx context.Context) string {
	if n == nil || n.VM == nil {
		return ""
	}
	return n.logs(ctx)
}

// Close powers the VM off and removes the work directory.
func (n *Node) Close() error {
	var err error
	if n.VM != nil {
		err = n.VM.Close()
	}
	return errors.Join(err, os.RemoveAll(n.work))
}

// prepare builds the binaries and images and writes the configuration,
// returning the VM's files and programs.
func (n *Node) prepare(ctx context.Context, cfg Config) (files, programs map[string]string, err error) {
	bins, err := Binaries(ctx)
	if err != nil {
		return nil, nil, err
	}
	files = map[string]string{
		"/usr/bin/containerd":              bins.Containerd,
		"/usr/bin/containerd-shim-runc-v2": bins.Shim,
		"/usr/bin/ctr":                     bins.Ctr,
		"/usr/bin/kubelet":                 bins.Kubelet,
	}
	runc, err := vm.Package(ctx, "", "runc")
	if err != nil {
		return nil, nil, err
	}
	cni, err := vm.Package(ctx, "", "containernetworking-plugins")
	if err != nil {
		return nil, nil, err
	}
	programs = map[string]string{"/usr/bin/runc": filepath.Join(runc, "usr/sbin/runc")}
	for _, p := range []string{"ptp", "host-local", "loopback"} {
		programs["/opt/cni/bin/"+p] = filepath.Join(cni, "usr/lib/cni", p)
	}
	mods, err := vm.KernelModules(ctx, "")
	if err != nil {
		return nil, nil, err
	}
	for _, m := range modules {
		files["/lib/modules/"+filepath.Base(m)] = filepath.Join(mods, m)
	}
	kubeconfig := bytes.ReplaceAll(cfg.Kubeconfig, []byte("https://127.0.0.1:"), []byte("https://"+HostAlias+":"))
	if bytes.Equal(kubeconfig, cfg.Kubeconfig) {
		return nil, nil, errors.New("node: the kubeconfig's server is not https://127.0.0.1:PORT")
	}
	for guest, data := range map[string][]byte{
		"/etc/containerd/config.toml":    []byte(containerdConfig),
		"/etc/kubernetes/kubelet.yaml":   []byte(kubeletConfig),
		"/etc/kubernetes/kubelet.conf":   kubeconfig,
		"/etc/cni/net.d/10-ptp.conflist": []byte(cniConfig),
		"/etc/machine-id":                []byte("4b1d0b3d5e3f4c2a9f0e1d2c3b4a5968\n"),
		"/etc/resolv.conf":               []byte("nameserver 127.0.0.1\n"),
	} {
		host := filepath.Join(n.work, strings.ReplaceAll(strings.TrimPrefix(guest, "/"), "/", "_"))
		if err := os.WriteFile(host, data, 0o600); err != nil {
			return nil, nil, fmt.Errorf("node: %w", err)
		}
		files[guest] = host
	}
	pause := filepath.Join(n.work, "pause")
	if err := vm.GoBuild(ctx, pause, "./internal/node/pause", false); err != nil {
		return nil, nil, err
	}
	if len(cfg.HostPorts) > 0 {
		files["/usr/bin/hostfwd"] = filepath.Join(n.work, "hostfwd")
		if err := vm.GoBuild(ctx, files["/usr/bin/hostfwd"], "./internal/node/hostfwd", false); err != nil {
			return nil, nil, err
		}
	}
	images := append([]Image{{Ref: PauseImage, Files: map[string]string{"/pause": pause}, Entrypoint: []string{"/pause"}}}, cfg.Images...)
	for i, im := range images {
		host := filepath.Join(n.work, fmt.Sprintf("image-%d.tar", i))
		if err := im.Write(host); err != nil {
			return nil, nil, err
		}
		files[fmt.Sprintf("/var/lib/heapwatch-node/images/%d.tar", i)] = host
	}
	return files, programs, nil
}

// BinaryPaths are the node's binaries built on the host.
type BinaryPaths struct{ Containerd, Shim, Ctr, Kubelet string }

// Binaries builds containerd, its shim, ctr and the kubelet into
// ./bin/node unless they are there (the kubelet takes ~7 min cold).
func Binaries(ctx context.Context) (BinaryPaths, error) {
	b, err := ContainerdBinaries(ctx)
	if err != nil {
		return b, err
	}
	return b, build(ctx, b.Kubelet, "node", "-ldflags", k8sVersion, "-o", b.Kubelet, "k8s.io/kubernetes/cmd/kubelet")
}

// k8sVersion stamps the kubelet's and controller-manager's version (the
// module's pin), as Kubernetes' own build does.
const k8sVersion = "-X k8s.io/component-base/version.gitVersion=v1.37.2 " +
	"-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"

// ControllerManager builds kube-controller-manager (.ci/tools/node) into
// ./bin/node unless it is there, and returns its path. The tests run it on
// the host against their API server with only the controllers they need.
func ControllerManager(ctx context.Context) (string, error) {
	out := filepath.Join(vm.ModuleRoot(), "bin", "node", "kube-controller-manager")
	return out, build(ctx, out, "node", "-ldflags", k8sVersion, "-o", out, "k8s.io/kubernetes/cmd/kube-controller-manager")
}

// ContainerdBinaries builds containerd, its shim and ctr into ./bin/node
// unless they are there (~2 min cold), for tests that run containerd on
// the host too (internal/containerdtest); Kubelet is named, not built.
func ContainerdBinaries(ctx context.Context) (BinaryPaths, error) {
	dir := filepath.Join(vm.ModuleRoot(), "bin", "node")
	b := BinaryPaths{
		Containerd: filepath.Join(dir, "containerd"), Shim: filepath.Join(dir, "containerd-shim-runc-v2"),
		Ctr: filepath.Join(dir, "ctr"), Kubelet: filepath.Join(dir, "kubelet"),
	}
	return b, build(ctx, b.Ctr, "containerd", "-tags", "no_btrfs", "-o", dir+"/",
		"github.com/containerd/containerd/v2/cmd/containerd", "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
		"github.com/containerd/containerd/v2/cmd/ctr")
}

// build runs go build in the tools module .ci/tools/<module> unless out is
// there.
func build(ctx context.Context, out, module string, args ...string) error {
	if _, err := os.Stat(out); err == nil {
		return nil
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"-C", filepath.Join(vm.ModuleRoot(), ".ci", "tools", module), "build"}, args...)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("node: building %s: %w\n%s", out, err, msg)
	}
	return nil
}
