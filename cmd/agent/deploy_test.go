package main

import (
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/heapwatch/heapwatch/deploy"
)

// TestDeployedConfig: the DaemonSet of deploy/ (kustomize and the chart,
// with its values changed) starts an agent whose flags and ConfigMap this
// agent accepts, and every path that configuration reads or writes is
// there in the pod: a host path mounted read-only, the spool and file://
// captures on a writable volume (the root file system is read-only). A
// mismatch would crash-loop or blind the agent on every node.
func TestDeployedConfig(t *testing.T) {
	renders := map[string]func() ([]*unstructured.Unstructured, error){
		"kustomize/with-agent": func() ([]*unstructured.Unstructured, error) {
			return deploy.Render("../../deploy/kustomize/with-agent")
		},
		"helm": func() ([]*unstructured.Unstructured, error) {
			return deploy.RenderChart("../../deploy/helm/heapwatch", "heapwatch", "heapwatch-system", map[string]any{"agent": map[string]any{
				"enabled": true,
				"flags":   map[string]any{"interval": "5s", "growth-step": "1GiB", "threshold-bytes": "8GiB"},
				"daemons": []any{map[string]any{"name": "envoy", "exe": "envoy", "pprof": "http://127.0.0.1:9901/debug/pprof"}},
			}})
		},
	}
	for name, render := range renders {
		t.Run(name, func(t *testing.T) {
			objs, err := render()
			if err != nil {
				t.Fatal(err)
			}
			var ds appsv1.DaemonSet
			var cm corev1.ConfigMap
			for _, o := range objs {
				var into any
				switch {
				case o.GetKind() == "DaemonSet":
					into = &ds
				case o.GetKind() == "ConfigMap" && strings.HasSuffix(o.GetName(), "heapwatch-agent"):
					into = &cm
				default:
					continue
				}
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, into); err != nil {
					t.Fatal(err)
				}
			}
			spec := ds.Spec.Template.Spec
			c := spec.Containers[0]
			// The ConfigMap's file stands at --config.
			args := slices.Clone(c.Args)
			var configPath string
			for i, a := range args {
				if v, ok := strings.CutPrefix(a, "--config="); ok {
					configPath = v
					local := filepath.Join(t.TempDir(), "agent.yaml")
					if err := os.WriteFile(local, []byte(cm.Data[filepath.Base(v)]), 0o600); err != nil {
						t.Fatal(err)
					}
					args[i] = "--config=" + local
				}
			}
			cfg, err := parseFlags(args, env(map[string]string{"NODE_NAME": "node-a"}))
			if err != nil {
				t.Fatalf("the agent rejects the DaemonSet's args %q: %v", c.Args, err)
			}
			if name == "helm" && !slices.ContainsFunc(cfg.Daemons, func(d daemonConfig) bool { return d.Name == "envoy" }) {
				t.Errorf("the chart's agent.daemons did not reach the agent: %v", names(cfg))
			}

			volumes := map[string]corev1.Volume{}
			for _, v := range spec.Volumes {
				volumes[v.Name] = v
			}
			// mount returns the volume mounted at the longest prefix of p.
			mount := func(p string) (corev1.VolumeMount, corev1.Volume, bool) {
				var best corev1.VolumeMount
				for _, m := range c.VolumeMounts {
					if (p == m.MountPath || strings.HasPrefix(p, m.MountPath+"/")) && len(m.MountPath) > len(best.MountPath) {
						best = m
					}
				}
				return best, volumes[best.Name], best.Name != ""
			}
			hostRO := func(what, p string) {
				t.Helper()
				m, v, ok := mount(p)
				switch {
				case !ok:
					t.Errorf("%s %s: not mounted in the pod", what, p)
				case v.HostPath == nil || !m.ReadOnly:
					t.Errorf("%s %s: on volume %s, want a read-only host path", what, p, m.Name)
				case v.HostPath.Path != m.MountPath:
					t.Errorf("%s %s: host %s mounted at %s: the agent would read another path than the host's", what, p, v.HostPath.Path, m.MountPath)
				}
			}
			writable := func(what, p string) {
				t.Helper()
				if m, v, ok := mount(p); !ok || m.ReadOnly || v.EmptyDir == nil {
					t.Errorf("%s %s: want it on a writable emptyDir (the root file system is read-only)", what, p)
				}
			}
			if m, v, ok := mount(configPath); !ok || v.ConfigMap == nil || v.ConfigMap.Name != cm.Name {
				t.Errorf("--config %s: not the ConfigMap %s (mount %+v)", configPath, cm.Name, m)
			}
			if cfg.ProcRoot != "/proc" || !spec.HostPID {
				t.Errorf("--proc %s with hostPID %v: the agent must see the host's processes", cfg.ProcRoot, spec.HostPID)
			}
			hostRO("--cgroup-root", cfg.CgroupRoot)
			writable("--spool-dir", cfg.SpoolDir)
			if u, err := url.Parse(cfg.Storage); err == nil && u.Scheme == "file" {
				writable("--storage", u.Path)
			}
			for _, d := range cfg.Daemons {
				if sock, ok := strings.CutPrefix(d.Pprof, "unix://"); ok && d.Name != "dockerd" {
					// dockerd's pprof is its API socket, root-equivalent:
					// not mounted by design (README).
					hostRO(d.Name+" pprof socket", filepath.Dir(sock))
				}
				if d.CAFile != "" {
					hostRO(d.Name+" caFile", filepath.Dir(d.CAFile))
				}
				if d.BearerTokenFile == serviceAccountToken && spec.AutomountServiceAccountToken != nil && !*spec.AutomountServiceAccountToken {
					t.Errorf("%s sends the ServiceAccount token, which the pod does not mount", d.Name)
				}
				if strings.HasPrefix(d.Pprof, "https://127.0.0.1") || strings.HasPrefix(d.Pprof, "http://127.0.0.1") {
					if !spec.HostNetwork {
						t.Errorf("%s serves pprof on the node's loopback (%s): the pod needs hostNetwork", d.Name, d.Pprof)
					}
				}
			}
			port := cfg.MetricsAddr[strings.LastIndex(cfg.MetricsAddr, ":")+1:]
			if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool {
				return p.Name == "metrics" && port == strconv.Itoa(int(p.ContainerPort))
			}) {
				t.Errorf("--metrics-bind-address %s is not the container's metrics port %+v", cfg.MetricsAddr, c.Ports)
			}
		})
	}
}
