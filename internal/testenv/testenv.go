// Package testenv starts the real kube-apiserver and etcd that `make envtest`
// builds from the Go module proxy, for the webhook's integration tests and
// the sidecar's end-to-end test of the controller.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/heapwatch/heapwatch/internal/oomevents"
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
			return "", fmt.Errorf("%w (looked in %s: %w)", ErrNoBinaries, dir, err)
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

// WriteKubeconfig writes a kubeconfig for the API server c reaches, as a
// user would have one, to path.
func WriteKubeconfig(c *rest.Config, path string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["envtest"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: c.CertData, ClientKeyData: c.KeyData, Token: c.BearerToken}
	cfg.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	cfg.CurrentContext = "envtest"
	return clientcmd.WriteToFile(*cfg, path)
}

// Metric returns the value of one series (name{labels} as exposed) on the
// Prometheus endpoint at 127.0.0.1:port.
func Metric(port int, series string) (float64, error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", line, err)
			}
			return f, nil
		}
	}
	return 0, fmt.Errorf("series %s not in /metrics", series)
}

// Controller is the heapwatch controller (cmd/controller's manager) running
// in the test process.
type Controller struct {
	MetricsPort int
	cancel      context.CancelFunc
	done        chan error
}

// StartController runs the controller's manager with cfg, its metrics and
// probes on free loopback ports, and returns once it is ready. The caller
// stops it.
func StartController(rc *rest.Config, cfg oomevents.Config) (*Controller, error) {
	ports, err := FreePorts(2)
	if err != nil {
		return nil, err
	}
	cfg.MetricsAddr = "127.0.0.1:" + strconv.Itoa(ports[0])
	cfg.ProbeAddr = "127.0.0.1:" + strconv.Itoa(ports[1])
	mgr, err := oomevents.NewManager(rc, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Controller{MetricsPort: ports[0], cancel: cancel, done: make(chan error, 1)}
	go func() { c.done <- mgr.Start(ctx) }()
	if err := WaitReady(ctx, fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[1]), 30*time.Second); err != nil {
		return nil, errors.Join(err, c.Stop())
	}
	return c, nil
}

// Stop stops the controller and returns what its manager returned; a
// second Stop returns nil.
func (c *Controller) Stop() error {
	c.cancel()
	err := <-c.done
	c.done <- nil
	return err
}
