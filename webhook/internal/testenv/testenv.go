// Package testenv starts the real kube-apiserver and etcd that `make envtest`
// builds from the Go module proxy, for the webhook's integration tests.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// ErrNoBinaries means neither KUBEBUILDER_ASSETS nor ./bin/k8s holds the
// binaries; the message tells what to run. Tests fail on it, never skip.
var ErrNoBinaries = errors.New("kube-apiserver and etcd not found: run make envtest")

// RepoRoot returns the directory holding this module's go.mod, found from
// the working directory (a test's package directory) upwards.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(data), "module github.com/heapwatch/heapwatch\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (go.mod of github.com/heapwatch/heapwatch) not found above the working directory")
		}
		dir = parent
	}
}

// assets returns the directory with kube-apiserver and etcd.
func assets() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, "bin", "k8s")
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			return "", fmt.Errorf("%w (looked in %s: %v)", ErrNoBinaries, dir, err)
		}
	}
	return dir, nil
}

// CertManagerCRDs returns the directory of cert-manager's CRDs inside the
// cert-manager module this repository requires (in the module cache).
func CertManagerCRDs() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/cert-manager/cert-manager")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("locating the cert-manager module: %w", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "deploy", "crds")
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("cert-manager CRDs: %w", err)
	}
	return dir, nil
}

// Start starts kube-apiserver and etcd with the CRDs in crdDirs installed.
// The caller stops the environment.
func Start(crdDirs ...string) (*envtest.Environment, error) {
	dir, err := assets()
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: dir,
		CRDDirectoryPaths:     crdDirs,
		ErrorIfCRDPathMissing: true,
		// Cold starts on a busy 2-core machine can take longer than the
		// 20 s default.
		ControlPlaneStartTimeout: time.Minute,
	}
	if _, err := env.Start(); err != nil {
		return nil, fmt.Errorf("starting kube-apiserver and etcd from %s: %w", dir, err)
	}
	return env, nil
}

// FreePorts returns n loopback TCP ports that were free when asked.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	return ports, nil
}

// WaitReady polls a readiness URL until it answers 200 OK.
func WaitReady(ctx context.Context, url string, timeout time.Duration) error {
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		resp, err := http.Get(url)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("%s not ready within %v: %w", url, timeout, err)
	}
	return nil
}
