//go:build node

// Package node_test runs heapwatch's user story on a real node: a kubelet
// with containerd and runc on cgroup v2 inside the QEMU VM (internal/node),
// registered with a real kube-apiserver on the host (envtest), the webhook
// rendered from deploy/helm and serving on the host, the sidecar and
// examples/leaky as images built from this repository. The kubelet
// OOM-kills the app and restarts it; the sidecar it runs catches each kill.
package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/deploy"
	"github.com/heapwatch/heapwatch/internal/node"
	"github.com/heapwatch/heapwatch/internal/testenv"
	"github.com/heapwatch/heapwatch/internal/testkit"
	"github.com/heapwatch/heapwatch/internal/vm"
	"github.com/heapwatch/heapwatch/names"
)

const (
	sidecarImage = "heapwatch.test/sidecar:node"
	leakyImage   = "heapwatch.test/leaky:node"
	namespace    = "shop"
)

// logWriter sends progress lines to t.Log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// summary is the line `make test-node` ends with.
var summary struct {
	kills, captured int
}

func TestMain(m *testing.M) {
	code := m.Run()
	fmt.Printf("node: %d OOM kills, %d captured\n", summary.kills, summary.captured)
	if p := os.Getenv("HEAPWATCH_NODE_SUMMARY"); p != "" {
		_ = os.WriteFile(p, fmt.Appendf(nil, "node: %d OOM kills, %d captured\n", summary.kills, summary.captured), 0o644)
	}
	os.Exit(code)
}

func TestStoryOnARealNode(t *testing.T) {
	began := time.Now()
	ctx := t.Context()
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Error(err)
		}
	})
	var warns testkit.Warnings
	admin := rest.CopyConfig(env.Config)
	admin.WarningHandler = &warns
	cs := kubernetes.NewForConfigOrDie(admin)

	tmp := t.TempDir()
	bins := buildBinaries(t, tmp)
	wh := startWebhook(t, env, tmp, bins["webhook"])

	kubeconfig := kubeletKubeconfig(t, env)
	n, err := node.Start(ctx, node.Config{
		Kubeconfig: kubeconfig,
		Images: []node.Image{
			{Ref: sidecarImage, Files: map[string]string{"/sidecar": bins["sidecar"]}, Entrypoint: []string{"/sidecar"}, User: "65532:65532"},
			{Ref: leakyImage, Files: map[string]string{"/leaky": bins["leaky"]}, Entrypoint: []string{"/leaky"}},
		},
		Log: logWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(n.Logs(context.Background()))
		}
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	nodeStart := time.Now()
	waitFor(t, 10*time.Minute, "node Ready", func() (bool, error) {
		nd, err := cs.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range nd.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
	t.Logf("timing: node Ready %v after the kubelet started (%s)", time.Since(nodeStart).Round(time.Millisecond), n.Timings)

	mustCreate(t, cs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace, Labels: map[string]string{"heapwatch.io/inject": "enabled"}}})
	mustCreate(t, cs, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: namespace}})

	podStart := time.Now()
	pod, err := cs.CoreV1().Pods(namespace).Create(ctx, leakyPod("leaky", map[string]string{"heapwatch.io/thresholds": "50,70,85"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Annotations[names.StatusAnnotation] == "" {
		t.Fatalf("the webhook did not inject the pod: annotations %v", pod.Annotations)
	}
	waitFor(t, 10*time.Minute, "pod running", func() (bool, error) {
		p, err := cs.CoreV1().Pods(namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod = p
		return p.Status.Phase == corev1.PodRunning || appStatus(p).RestartCount > 0, nil
	})
	t.Logf("timing: pod running %v after it was created", time.Since(podStart).Round(time.Millisecond))

	seen := map[string]bool{}
	for kill := 1; kill <= 2; kill++ {
		var st corev1.ContainerStatus
		waitFor(t, 10*time.Minute, fmt.Sprintf("OOM kill %d", kill), func() (bool, error) {
			p, err := cs.CoreV1().Pods(namespace).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			pod, st = p, appStatus(p)
			return int(st.RestartCount) >= kill && st.LastTerminationState.Terminated != nil, nil
		})
		term := st.LastTerminationState.Terminated
		if term.Reason != "OOMKilled" {
			t.Fatalf("kill %d: lastState.terminated = %+v, want reason OOMKilled", kill, term)
		}
		if int(st.RestartCount) != kill {
			t.Fatalf("restart count %d, want %d (a kill went by unseen by the test)", st.RestartCount, kill)
		}
		summary.kills++
		t.Logf("timing: OOM kill %d at %v after the pod was created (container %s)", kill, term.FinishedAt.Sub(pod.CreationTimestamp.Time), term.ContainerID)
		if seen[term.ContainerID] {
			t.Fatalf("kill %d: container ID %s again, want a new container per restart", kill, term.ContainerID)
		}
		seen[term.ContainerID] = true

		m := waitFinalCapture(t, n, pod, term.FinishedAt.Time)
		summary.captured++
		t.Logf("kill %d: final capture %s (trigger %s, oomKilledAt %v, kubelet finishedAt %v)", kill, m.ID, m.Trigger, m.OOMKilledAt, term.FinishedAt)
		if m.Pod != pod.Name || m.PodUID != string(pod.UID) || m.Node != node.Name || m.Container != "app" || m.Namespace != namespace {
			t.Errorf("capture names %s/%s uid %s node %s container %s, want %s/%s uid %s node %s container app",
				m.Namespace, m.Pod, m.PodUID, m.Node, m.Container, namespace, pod.Name, pod.UID, node.Name)
		}
	}
	for _, s := range pod.Status.InitContainerStatuses {
		if s.Name == names.SidecarName && s.RestartCount != 0 {
			t.Errorf("sidecar restart count %d, want 0", s.RestartCount)
		}
	}

	t.Run("InvalidAnnotationWarns", func(t *testing.T) {
		warns.Reset()
		p, err := cs.CoreV1().Pods(namespace).Create(ctx, leakyPod("bad-annotation", map[string]string{"heapwatch.io/thresholds": "eleventy"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(warns.Get(), func(w string) bool { return strings.Contains(w, "thresholds") }) {
			t.Errorf("no admission warning naming the bad annotation; warnings: %q", warns.Get())
		}
		if p.Annotations[names.StatusAnnotation] == "" {
			t.Errorf("pod with a bad annotation not injected (want the default used)")
		}
	})

	t.Run("WebhookDownPodsStillCreated", func(t *testing.T) {
		wh.stop(t)
		p, err := cs.CoreV1().Pods(namespace).Create(ctx, leakyPod("no-webhook", nil), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("pod not created with the webhook down (failurePolicy Ignore): %v", err)
		}
		if p.Annotations[names.StatusAnnotation] != "" {
			t.Errorf("pod injected with the webhook down?")
		}
	})
	t.Logf("timing: whole test %v", time.Since(began).Round(time.Second))
}

func appStatus(p *corev1.Pod) corev1.ContainerStatus {
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == "app" {
			return s
		}
	}
	return corev1.ContainerStatus{}
}

// leakyPod is examples/leaky with a 130Mi limit, doubling its leak, on the
// VM's node (no scheduler runs).
func leakyPod(name string, annotations map[string]string) *corev1.Pod {
	limit := resource.MustParse("130Mi")
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Annotations: annotations},
		Spec: corev1.PodSpec{
			NodeName:                     node.Name,
			AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{
				Name: "app", Image: leakyImage, ImagePullPolicy: corev1.PullNever,
				Args:      []string{"-shape", "doubling", "-delay", "5s"},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: limit}},
			}},
		},
	}
}

// waitFinalCapture reads the pod's captures volume on the node until a
// capture marked final for the kill the kubelet saw finish at finished
// is there, and checks it.
func waitFinalCapture(t *testing.T, n *node.Node, pod *corev1.Pod, finished time.Time) *capture.Metadata {
	t.Helper()
	dir := filepath.Join(node.PodsDir, string(pod.UID), "volumes/kubernetes.io~empty-dir", names.CapturesVolume)
	var final *capture.Metadata
	var all []string
	waitFor(t, 3*time.Minute, "final capture", func() (bool, error) {
		files, err := n.Collect(t.Context(), dir)
		if err != nil {
			return false, err
		}
		all = all[:0]
		for path, data := range files {
			if !strings.HasSuffix(path, capture.MetadataSuffix) {
				continue
			}
			var m capture.Metadata
			if err := json.Unmarshal(data, &m); err != nil {
				return false, fmt.Errorf("%s: %w", path, err)
			}
			all = append(all, fmt.Sprintf("%s final=%v oom=%v", m.ID, m.Final, m.OOMKilledAt))
			if m.Final && m.OOMKilledAt != nil && absDuration(m.OOMKilledAt.Sub(finished)) < 2*time.Second {
				final = &m
			}
		}
		return final != nil, nil
	})
	if d := absDuration(final.OOMKilledAt.Sub(finished)); d > time.Second {
		t.Errorf("oomKilledAt %v is %v from the kubelet's finishedAt %v, want within 1s", final.OOMKilledAt, d, finished)
	}
	t.Logf("captures: %q", all)
	return final
}

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 500*time.Millisecond, timeout, true, func(context.Context) (bool, error) { return cond() })
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func mustCreate(t *testing.T, cs kubernetes.Interface, obj runtime.Object) {
	t.Helper()
	var err error
	switch o := obj.(type) {
	case *corev1.Namespace:
		_, err = cs.CoreV1().Namespaces().Create(t.Context(), o, metav1.CreateOptions{})
	case *corev1.ServiceAccount:
		_, err = cs.CoreV1().ServiceAccounts(o.Namespace).Create(t.Context(), o, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// buildBinaries builds the webhook for the host and the sidecar and leaky
// app for the images.
func buildBinaries(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for name, pkg := range map[string]string{"webhook": "./cmd/webhook", "sidecar": "./cmd/sidecar", "leaky": "./examples/leaky"} {
		out[name] = filepath.Join(dir, name)
		if err := vm.GoBuild(t.Context(), out[name], pkg, false); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// kubeletKubeconfig is the kubelet's client identity: a user envtest
// signs, in system:nodes and (no Node authorizer runs in envtest)
// system:masters. It names the API server's certificate as issued for
// localhost, since the kubelet dials it as 10.0.2.2.
func kubeletKubeconfig(t *testing.T, env *envtest.Environment) []byte {
	t.Helper()
	u, err := env.AddUser(envtest.User{Name: "system:node:" + node.Name, Groups: []string{"system:nodes", "system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := u.Config()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["host"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData, TLSServerName: "localhost"}
	cfg.AuthInfos["kubelet"] = &clientcmdapi.AuthInfo{ClientCertificateData: c.CertData, ClientKeyData: c.KeyData}
	cfg.Contexts["node"] = &clientcmdapi.Context{Cluster: "host", AuthInfo: "kubelet"}
	cfg.CurrentContext = "node"
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.Host, "https://127.0.0.1:") {
		b = bytes.ReplaceAll(b, []byte(c.Host), []byte("https://127.0.0.1:"+c.Host[strings.LastIndex(c.Host, ":")+1:]))
	}
	return b
}

type webhookProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	once sync.Once
}

func (w *webhookProc) stop(t *testing.T) {
	w.once.Do(func() {
		_ = w.cmd.Process.Signal(os.Interrupt)
		select {
		case <-w.done:
		case <-time.After(30 * time.Second):
			_ = w.cmd.Process.Kill()
			<-w.done
		}
	})
}

// startWebhook runs the webhook binary on the host with the arguments the
// chart renders for its Deployment (its ports moved to free loopback ones,
// a self-signed certificate instead of cert-manager's), and registers the
// chart's MutatingWebhookConfiguration pointing at it by URL.
func startWebhook(t *testing.T, env *envtest.Environment, dir, bin string) *webhookProc {
	t.Helper()
	objs, err := deploy.RenderChart(filepath.Join(vm.ModuleRoot(), "deploy/helm/heapwatch"), "heapwatch", "heapwatch-system", map[string]any{
		"sidecar": map[string]any{"image": map[string]any{"repository": "heapwatch.test/sidecar", "tag": "node"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	for _, o := range objs {
		switch o.GetKind() {
		case "Deployment":
			if !strings.HasSuffix(o.GetName(), "webhook") {
				continue
			}
			args = containerArgs(o.Object)
		case "MutatingWebhookConfiguration":
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &mwc); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(args) == 0 || len(mwc.Webhooks) == 0 {
		t.Fatalf("the chart renders no webhook Deployment args (%q) or webhooks (%d)", args, len(mwc.Webhooks))
	}
	ports, err := testenv.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	certDir := filepath.Join(dir, "webhook-tls")
	var final []string
	for _, a := range args {
		switch {
		case strings.HasPrefix(a, "--cert-dir="), strings.HasPrefix(a, "--webhook-port="),
			strings.HasPrefix(a, "--metrics-bind-address="), strings.HasPrefix(a, "--health-probe-bind-address="):
		default:
			final = append(final, a)
		}
	}
	final = append(final, "--cert-dir="+certDir, "--self-signed=127.0.0.1", fmt.Sprintf("--webhook-port=%d", ports[0]),
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", ports[1]), fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", ports[2]))
	if !slices.Contains(final, "--sidecar-image="+sidecarImage) {
		t.Fatalf("chart args %q do not name the sidecar image %s", final, sidecarImage)
	}
	kubeconfig := filepath.Join(dir, "admin.kubeconfig")
	if err := testenv.WriteKubeconfig(env.Config, kubeconfig); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, final...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	logs := &testkit.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &webhookProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(w.done) }()
	t.Cleanup(func() {
		w.stop(t)
		if t.Failed() {
			t.Logf("webhook log:\n%s", logs.String())
		}
	})
	if err := testenv.WaitReady(t.Context(), fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[2]), 2*time.Minute); err != nil {
		t.Fatalf("webhook not ready: %v\n%s", err, logs.String())
	}
	ca, err := os.ReadFile(filepath.Join(certDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range mwc.Webhooks {
		h := &mwc.Webhooks[i]
		h.ClientConfig = admissionregistrationv1.WebhookClientConfig{
			URL:      ptr.To(fmt.Sprintf("https://127.0.0.1:%d%s", ports[0], *h.ClientConfig.Service.Path)),
			CABundle: ca,
		}
	}
	cs := kubernetes.NewForConfigOrDie(env.Config)
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(t.Context(), &mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return w
}

// containerArgs returns the args of the first container of a rendered
// Deployment.
func containerArgs(obj map[string]any) []string {
	spec, _ := obj["spec"].(map[string]any)
	tmpl, _ := spec["template"].(map[string]any)
	podSpec, _ := tmpl["spec"].(map[string]any)
	cs, _ := podSpec["containers"].([]any)
	if len(cs) == 0 {
		return nil
	}
	c, _ := cs[0].(map[string]any)
	raw, _ := c["args"].([]any)
	var args []string
	for _, a := range raw {
		args = append(args, fmt.Sprint(a))
	}
	return args
}
