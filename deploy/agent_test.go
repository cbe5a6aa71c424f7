package deploy

import (
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// agentObjects is the typed view of the agent's objects in one rendering.
type agentObjects struct {
	namespace corev1.Namespace
	sa        corev1.ServiceAccount
	role      rbacv1.ClusterRole
	binding   rbacv1.ClusterRoleBinding
	config    corev1.ConfigMap
	ds        appsv1.DaemonSet
	// others are the rendered objects that are not the agent's.
	others int
}

func agentRender(t *testing.T, objs []*unstructured.Unstructured) (agentObjects, bool) {
	t.Helper()
	var a agentObjects
	found := false
	for _, o := range objs {
		var into any
		switch {
		case o.GetKind() == "Namespace" && o.GetName() == "heapwatch-agent":
			into = &a.namespace
		case o.GetNamespace() == "heapwatch-agent" && o.GetKind() == "ServiceAccount":
			into = &a.sa
		case o.GetKind() == "ClusterRole" && strings.HasSuffix(o.GetName(), "-agent"):
			into = &a.role
		case o.GetKind() == "ClusterRoleBinding" && strings.HasSuffix(o.GetName(), "-agent"):
			into = &a.binding
		case o.GetNamespace() == "heapwatch-agent" && o.GetKind() == "ConfigMap" && !strings.HasSuffix(o.GetName(), "-dashboard"):
			into = &a.config
		case o.GetKind() == "DaemonSet":
			into = &a.ds
		case o.GetNamespace() == "heapwatch-agent":
			continue
		default:
			a.others++
			continue
		}
		found = true
		strict(t, o, into)
	}
	return a, found
}

// strict decodes o into a typed object, failing on unknown fields.
func strict(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, into, true); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
}

func withAgent(values map[string]any) map[string]any {
	agent := map[string]any{"enabled": true}
	for k, v := range values {
		agent[k] = v
	}
	return map[string]any{"agent": agent}
}

func TestAgentOffByDefault(t *testing.T) {
	kust, err := Render("kustomize/default")
	if err != nil {
		t.Fatal(err)
	}
	for name, objs := range map[string][]*unstructured.Unstructured{"chart": renderChart(t, nil), "kustomize/default": kust} {
		if _, found := agentRender(t, objs); found {
			t.Errorf("%s renders agent objects without asking for the agent", name)
		}
	}
}

// TestAgentPrivileges: the DaemonSet of both renderings has exactly the
// privileges the README explains, everything from the host read-only, and
// RBAC of nodes/proxy get only.
func TestAgentPrivileges(t *testing.T) {
	kust, err := Render("kustomize/with-agent")
	if err != nil {
		t.Fatal(err)
	}
	for name, objs := range map[string][]*unstructured.Unstructured{
		"chart": renderChart(t, withAgent(nil)), "kustomize/with-agent": kust,
	} {
		t.Run(name, func(t *testing.T) {
			a, found := agentRender(t, objs)
			if !found || a.others < 8 {
				t.Fatalf("agent found %v, %d other objects: want the agent beside the webhook", found, a.others)
			}
			if a.namespace.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
				t.Errorf("namespace %s labels %v: hostPID/hostNetwork/hostPath need the privileged level", a.namespace.Name, a.namespace.Labels)
			}
			want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes/proxy"}, Verbs: []string{"get"}}}
			if diff := cmp.Diff(want, a.role.Rules); diff != "" {
				t.Errorf("ClusterRole rules (-want +got):\n%s", diff)
			}
			if a.binding.RoleRef.Name != a.role.Name || len(a.binding.Subjects) != 1 ||
				a.binding.Subjects[0].Name != a.sa.Name || a.binding.Subjects[0].Namespace != a.sa.Namespace {
				t.Errorf("ClusterRoleBinding %+v does not bind %s to %s/%s", a.binding, a.role.Name, a.sa.Namespace, a.sa.Name)
			}
			spec := a.ds.Spec.Template.Spec
			if spec.ServiceAccountName != a.sa.Name || a.ds.Namespace != a.sa.Namespace {
				t.Errorf("DaemonSet %s/%s runs as %s", a.ds.Namespace, a.ds.Name, spec.ServiceAccountName)
			}
			sel := labels.SelectorFromSet(a.ds.Spec.Selector.MatchLabels)
			if !sel.Matches(labels.Set(a.ds.Spec.Template.Labels)) {
				t.Error("the DaemonSet's selector does not match its pods")
			}
			if !spec.HostPID || !spec.HostNetwork || spec.HostIPC {
				t.Errorf("hostPID %v, hostNetwork %v, hostIPC %v: want host PIDs and network, never IPC", spec.HostPID, spec.HostNetwork, spec.HostIPC)
			}
			if !slices.ContainsFunc(spec.Tolerations, func(t corev1.Toleration) bool { return t.Operator == corev1.TolerationOpExists && t.Key == "" }) {
				t.Error("the agent must tolerate every taint: a leaking daemon is a problem on any node")
			}
			psc := spec.SecurityContext
			if psc == nil || !*psc.RunAsNonRoot || *psc.RunAsUser == 0 || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Error("the agent's pod must run as non-root with RuntimeDefault seccomp")
			}
			if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
				t.Fatalf("%d containers, %d init containers", len(spec.Containers), len(spec.InitContainers))
			}
			c := spec.Containers[0]
			sc := c.SecurityContext
			if sc.Privileged != nil && *sc.Privileged || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem ||
				!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
				t.Errorf("container securityContext %+v: want unprivileged, no escalation, read-only root, no capabilities", sc)
			}
			// Every host path is mounted read-only, and the ones the
			// agent reads are there.
			hostPaths := map[string]string{}
			for _, v := range spec.Volumes {
				if v.HostPath != nil {
					hostPaths[v.Name] = v.HostPath.Path
				}
			}
			mounted := map[string]string{}
			for _, m := range c.VolumeMounts {
				if p, ok := hostPaths[m.Name]; ok {
					if !m.ReadOnly {
						t.Errorf("host path %s mounted writable at %s", p, m.MountPath)
					}
					mounted[p] = m.MountPath
				}
			}
			if diff := cmp.Diff(map[string]string{"/sys/fs/cgroup": "/sys/fs/cgroup", "/run/containerd": "/run/containerd", "/var/lib/kubelet/pki": "/var/lib/kubelet/pki"}, mounted); diff != "" {
				t.Errorf("host paths mounted (host: container; -want +got):\n%s", diff)
			}
			if c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
				t.Error("the agent needs a memory limit and a CPU request")
			}
			// The agent's own parser checks the args, and that every path
			// they name is mounted: cmd/agent's TestDeployedConfig.
			if !slices.Contains(c.Args, "--config=/etc/heapwatch-agent/agent.yaml") || a.config.Data["agent.yaml"] == "" {
				t.Errorf("args %q, ConfigMap keys %v: want --config reading agent.yaml of the ConfigMap", c.Args, a.config.Data)
			}
			if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/etc/heapwatch-agent" && m.ReadOnly }) {
				t.Error("the ConfigMap is not mounted read-only at /etc/heapwatch-agent")
			}
			var cfg struct {
				Daemons []map[string]any `json:"daemons"`
			}
			if err := yaml.UnmarshalStrict([]byte(a.config.Data["agent.yaml"]), &cfg); err != nil {
				t.Errorf("agent.yaml: %v", err)
			}
			if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
				return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
			}) {
				t.Error("NODE_NAME must come from spec.nodeName: captures are keyed by node")
			}
		})
	}
}

// Helm and kustomize users get the same agent.
func TestAgentChartMatchesKustomize(t *testing.T) {
	kust, err := Render("kustomize/with-agent")
	if err != nil {
		t.Fatal(err)
	}
	k, _ := agentRender(t, kust)
	h, _ := agentRender(t, renderChart(t, withAgent(nil)))
	ks, hs := k.ds.Spec.Template.Spec, h.ds.Spec.Template.Spec
	for _, f := range []struct {
		name string
		a, b any
	}{
		{"pod securityContext", ks.SecurityContext, hs.SecurityContext},
		{"hostPID/hostNetwork/dnsPolicy", []any{ks.HostPID, ks.HostNetwork, ks.DNSPolicy}, []any{hs.HostPID, hs.HostNetwork, hs.DNSPolicy}},
		{"tolerations", ks.Tolerations, hs.Tolerations},
		{"nodeSelector", ks.NodeSelector, hs.NodeSelector},
		{"volumes (but the ConfigMap's name)", withoutConfigMap(ks.Volumes), withoutConfigMap(hs.Volumes)},
		{"container securityContext", ks.Containers[0].SecurityContext, hs.Containers[0].SecurityContext},
		{"volumeMounts", ks.Containers[0].VolumeMounts, hs.Containers[0].VolumeMounts},
		{"args", ks.Containers[0].Args, hs.Containers[0].Args},
		{"env", ks.Containers[0].Env, hs.Containers[0].Env},
		{"resources", ks.Containers[0].Resources, hs.Containers[0].Resources},
		{"ports", ks.Containers[0].Ports, hs.Containers[0].Ports},
		{"RBAC", k.role.Rules, h.role.Rules},
		{"config", k.config.Data, h.config.Data},
	} {
		ya, _ := yaml.Marshal(f.a)
		yb, _ := yaml.Marshal(f.b)
		if diff := cmp.Diff(string(ya), string(yb)); diff != "" {
			t.Errorf("%s differs (-kustomize +helm):\n%s", f.name, diff)
		}
	}
}

func withoutConfigMap(vs []corev1.Volume) []corev1.Volume {
	out := slices.Clone(vs)
	for i := range out {
		if out[i].ConfigMap != nil {
			out[i].ConfigMap = nil
		}
	}
	return out
}

func TestAgentChartValues(t *testing.T) {
	objs := renderChart(t, withAgent(map[string]any{
		"namespace": "node-agents", "createNamespace": false,
		"image":   map[string]any{"digest": "sha256:0123"},
		"storage": "s3://dumps/nodes?region=eu-west-1", "credentialsSecret": "agent-s3",
		"flags":       map[string]any{"interval": "5s", "growth-step": "1GiB"},
		"daemons":     []any{map[string]any{"name": "envoy", "exe": "envoy", "pprof": "http://127.0.0.1:9901/debug/pprof"}},
		"socketGroup": 1001,
		"monitoring":  map[string]any{"prometheusRule": true, "ruleLabels": map[string]any{"release": "kps"}, "dashboard": true, "podMonitor": true},
	}))
	var ds appsv1.DaemonSet
	var cm corev1.ConfigMap
	var rule, dashboard, podMonitor *unstructured.Unstructured
	for _, o := range objs {
		switch {
		case o.GetKind() == "Namespace" && o.GetName() == "node-agents":
			t.Error("createNamespace false still renders the namespace")
		case o.GetKind() == "DaemonSet":
			strict(t, o, &ds)
		case o.GetKind() == "ConfigMap" && o.GetName() == "heapwatch-agent":
			strict(t, o, &cm)
		case o.GetKind() == "ConfigMap" && o.GetName() == "heapwatch-agent-dashboard":
			dashboard = o
		case o.GetKind() == "PrometheusRule":
			rule = o
		case o.GetKind() == "PodMonitor":
			podMonitor = o
		}
	}
	c := ds.Spec.Template.Spec.Containers[0]
	if ds.Namespace != "node-agents" || c.Image != "ghcr.io/heapwatch/heapwatch-agent@sha256:0123" {
		t.Errorf("DaemonSet in %q, image %q", ds.Namespace, c.Image)
	}
	for _, want := range []string{"--storage=s3://dumps/nodes?region=eu-west-1", "--interval=5s", "--growth-step=1GiB"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("args %q lack %s", c.Args, want)
		}
	}
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef.Name != "agent-s3" || !*c.EnvFrom[0].SecretRef.Optional {
		t.Errorf("envFrom %+v, want the optional Secret agent-s3", c.EnvFrom)
	}
	if g := ds.Spec.Template.Spec.SecurityContext.SupplementalGroups; !slices.Equal(g, []int64{1001}) {
		t.Errorf("supplementalGroups %v, want the debug socket's group 1001", g)
	}
	var cfg struct {
		Daemons []map[string]string `json:"daemons"`
	}
	if err := yaml.UnmarshalStrict([]byte(cm.Data["agent.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]map[string]string{{"name": "envoy", "exe": "envoy", "pprof": "http://127.0.0.1:9901/debug/pprof"}}, cfg.Daemons); diff != "" {
		t.Errorf("agent.yaml daemons (-want +got):\n%s", diff)
	}
	if rule == nil || dashboard == nil || podMonitor == nil {
		t.Fatalf("PrometheusRule %v, dashboard %v, PodMonitor %v: all asked for", rule != nil, dashboard != nil, podMonitor != nil)
	}
	// The PodMonitor scrapes the agent's pods on their metrics port.
	sel, _, _ := unstructured.NestedStringMap(podMonitor.Object, "spec", "selector", "matchLabels")
	eps, _, _ := unstructured.NestedSlice(podMonitor.Object, "spec", "podMetricsEndpoints")
	if !labels.SelectorFromSet(sel).Matches(labels.Set(ds.Spec.Template.Labels)) || len(eps) != 1 ||
		eps[0].(map[string]any)["port"] != c.Ports[0].Name || podMonitor.GetLabels()["release"] != "kps" {
		t.Errorf("PodMonitor selector %v, endpoints %v, labels %v: want the agent's pods, port %s", sel, eps, podMonitor.GetLabels(), c.Ports[0].Name)
	}
	// The rule's spec is the rule file as it is (parsed by the Prometheus
	// rule parser in deploy/monitoring).
	file := readYAML(t, "helm/heapwatch/files/heapwatch-agent-rules.yaml")
	if diff := cmp.Diff(file, rule.Object["spec"]); diff != "" || rule.GetLabels()["release"] != "kps" {
		t.Errorf("PrometheusRule spec differs from the rule file (-file +rendered):\n%s\nlabels %v", diff, rule.GetLabels())
	}
	data, _, _ := unstructured.NestedStringMap(dashboard.Object, "data")
	if !strings.Contains(data["heapwatch-nodes-dashboard.json"], `"uid": "heapwatch-nodes"`) || dashboard.GetLabels()["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap labels %v, keys %v", dashboard.GetLabels(), slices.Collect(maps.Keys(data)))
	}
}

func readYAML(t *testing.T, path string) any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return v
}
