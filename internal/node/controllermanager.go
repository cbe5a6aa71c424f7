package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/heapwatch/heapwatch/internal/vm"
)

// ControllerManager builds kube-controller-manager (from .ci/tools/node,
// the kubelet's module and pins) into ./bin/node unless it is there, and
// returns its path. The tests run it on the host against the envtest API
// server with only the controllers they need (the Job controller).
func ControllerManager(ctx context.Context) (string, error) {
	root := vm.ModuleRoot()
	out := filepath.Join(root, "bin", "node", "kube-controller-manager")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	cmd := exec.CommandContext(ctx, "go", "-C", filepath.Join(root, ".ci", "tools", "node"), "build", "-ldflags",
		"-X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37",
		"-o", out, "k8s.io/kubernetes/cmd/kube-controller-manager")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("node: building %s: %w\n%s", out, err, b)
	}
	return out, nil
}
