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
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
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
	"github.com/heapwatch/heapwatch/capture/catalog"
	"github.com/heapwatch/heapwatch/deploy"
	"github.com/heapwatch/heapwatch/internal/node"
	"github.com/heapwatch/heapwatch/internal/testenv"
	"github.com/heapwatch/heapwatch/internal/testkit"
	"github.com/heapwatch/heapwatch/internal/vm"
	"github.com/heapwatch/heapwatch/internal/webhook/inject"
	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/settings"
	"github.com/heapwatch/heapwatch/store"
	"github.com/heapwatch/heapwatch/store/s3test"
)

const (
	sidecarImage = "heapwatch.test/sidecar:node"
	leakyImage   = "heapwatch.test/leaky:node"
	// cliImage runs the heapwatch CLI: `version` exits 0 at once, the main
	// container of the Job.
	cliImage  = "heapwatch.test/cli:node"
	namespace = "shop"
	// credentialsSecret holds the storage credentials in the pod's namespace.
	credentialsSecret = "heapwatch-s3"
	// storePrefix is where the captures go in the bucket.
	storePrefix = "node"
)

// logWriter sends progress lines to t.Log.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// summary is what `make test-node` ends with: the failures again (a failing
// run's output ends with the components' logs, and CI shows only its
// tail), then the kills.
var summary struct {
	kills, captured int
	mu              sync.Mutex
	failures        []string
}

func TestMain(m *testing.M) {
	code := m.Run()
	var out []byte
	for _, f := range summary.failures {
		out = fmt.Appendf(out, "node: FAIL: %s\n", f)
	}
	out = fmt.Appendf(out, "node: %d OOM kills, %d captured\n", summary.kills, summary.captured)
	os.Stdout.Write(out)
	if p := os.Getenv("HEAPWATCH_NODE_SUMMARY"); p != "" {
		_ = os.WriteFile(p, out, 0o644)
	}
	os.Exit(code)
}

// recorder is a test that adds its failures to the summary.
type recorder struct{ testing.TB }

func (r recorder) record(msg string) {
	summary.mu.Lock()
	defer summary.mu.Unlock()
	summary.failures = append(summary.failures, r.Name()+": "+msg)
}

func (r recorder) Errorf(format string, args ...any) {
	r.TB.Helper()
	r.record(fmt.Sprintf(format, args...))
	r.TB.Errorf(format, args...)
}

func (r recorder) Error(args ...any) {
	r.TB.Helper()
	r.Errorf("%s", fmt.Sprint(args...))
}

func (r recorder) Fatalf(format string, args ...any) {
	r.TB.Helper()
	r.record(fmt.Sprintf(format, args...))
	r.TB.Fatalf(format, args...)
}

func (r recorder) Fatal(args ...any) {
	r.TB.Helper()
	r.Fatalf("%s", fmt.Sprint(args...))
}

// cluster is the story's world: the API server and controller-manager on
// the host, the webhook installed from the chart, the node in the VM and
// the storage its pods write to, with a labelled namespace ready.
type cluster struct {
	cs       kubernetes.Interface
	warns    *testkit.Warnings
	n        *node.Node
	wh       *webhookProc
	captures store.Store
}

// startCluster starts it all and tears it down at the test's end.
func startCluster(t testing.TB) *cluster {
	t.Helper()
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
	warns := &testkit.Warnings{}
	admin := rest.CopyConfig(env.Config)
	admin.WarningHandler = warns
	cs := kubernetes.NewForConfigOrDie(admin)

	tmp := t.TempDir()
	bins := buildBinaries(t, tmp)
	// The storage: versitygw on the host's loopback, which pods reach at
	// node.PodGateway (the node relays the port); the sidecar gets the
	// credentials from a Secret in the pod's namespace (the chart's
	// sidecar.credentialsSecret).
	s3 := s3test.Start(t)
	s3.Setenv(t)
	captures, err := store.Open(ctx, s3.URL(storePrefix))
	if err != nil {
		t.Fatal(err)
	}
	endpoint, err := url.Parse(s3.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	s3Port, err := strconv.Atoi(endpoint.Port())
	if err != nil {
		t.Fatalf("versitygw endpoint %s: %v", s3.Endpoint, err)
	}
	guestURL := strings.Replace(s3.URL(storePrefix), url.QueryEscape(s3.Endpoint),
		url.QueryEscape(strings.Replace(s3.Endpoint, endpoint.Hostname(), node.PodGateway, 1)), 1)
	wh := startWebhook(t, env, tmp, bins["webhook"], guestURL)

	kubeconfig := kubeletKubeconfig(t, env)
	n, err := node.Start(ctx, node.Config{
		Kubeconfig: kubeconfig,
		Images: []node.Image{
			{Ref: sidecarImage, Files: map[string]string{"/sidecar": bins["sidecar"]}, Entrypoint: []string{"/sidecar"}, User: "65532:65532"},
			{Ref: leakyImage, Files: map[string]string{"/leaky": bins["leaky"]}, Entrypoint: []string{"/leaky"}},
			{Ref: cliImage, Files: map[string]string{"/heapwatch": bins["heapwatch"]}, Entrypoint: []string{"/heapwatch"}, User: "65532:65532"},
		},
		HostPorts: []int{s3Port},
		Log:       logWriter{t},
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
	creds := map[string]string{}
	for _, kv := range s3.Env() {
		if k, v, _ := strings.Cut(kv, "="); v != "" {
			creds[k] = v
		}
	}
	mustCreate(t, cs, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: credentialsSecret, Namespace: namespace}, StringData: creds})

	// The Deployment and Job controllers run on the host (no scheduler:
	// templates name the node).
	startControllerManager(t, env, tmp)
	return &cluster{cs: cs, warns: warns, n: n, wh: wh, captures: captures}
}

func TestStoryOnARealNode(tt *testing.T) {
	t := recorder{tt}
	began := time.Now()
	ctx := t.Context()
	c := startCluster(t)
	cs, n, captures, wh, warns := c.cs, c.n, c.captures, c.wh, c.warns
	podStart := time.Now()
	template := leakyPod("", leakyAnnotations)
	template.Namespace, template.Labels = "", map[string]string{"app": "leaky"}
	if _, err := cs.AppsV1().Deployments(namespace).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "leaky", Namespace: namespace},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1), Selector: &metav1.LabelSelector{MatchLabels: template.Labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: template.ObjectMeta, Spec: template.Spec},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pod *corev1.Pod
	waitFor(t, 5*time.Minute, "the Deployment's pod", func() (bool, error) {
		pods, err := cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=leaky"})
		if err != nil || len(pods.Items) == 0 {
			return false, err
		}
		pod = &pods.Items[0]
		return true, nil
	})
	if pod.Annotations[names.StatusAnnotation] == "" {
		t.Fatalf("the webhook did not inject the pod: annotations %v", pod.Annotations)
	}
	t.Cleanup(func() {
		if t.Failed() {
			_, files := sidecarLog(context.Background(), t, n, pod)
			for name, b := range files {
				t.Logf("%s:\n%s", name, b)
			}
		}
	})
	waitFor(t, 10*time.Minute, "pod running", func() (bool, error) {
		p, err := cs.CoreV1().Pods(namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod = p
		return p.Status.Phase == corev1.PodRunning || appStatus(p).RestartCount > 0, nil
	})
	t.Logf("timing: pod running %v after it was created", time.Since(podStart).Round(time.Millisecond))

	checkSidecarSpec(t, pod)

	// The kills, each read from containerd as soon as the API shows it:
	// the kubelet removes a dead container once a newer one has died, and
	// checking a kill's capture takes longer than the app's next life.
	type kill struct {
		term *corev1.ContainerStateTerminated
		exit node.Exit
	}
	var kills []kill
	waitFor(t, 15*time.Minute, "two OOM kills", func() (bool, error) {
		p, err := cs.CoreV1().Pods(namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod = p
		st := appStatus(p)
		term := st.LastTerminationState.Terminated
		if term == nil || len(kills) > 0 && kills[len(kills)-1].term.ContainerID == term.ContainerID {
			return false, nil
		}
		// In CrashLoopBackOff the kubelet shows the newest kill as the last
		// state before the restart count (the next container's) goes up.
		if int(st.RestartCount) > len(kills)+1 {
			return false, fmt.Errorf("restart count %d at kill %d (a kill went by unseen by the test)", st.RestartCount, len(kills)+1)
		}
		if slices.ContainsFunc(kills, func(k kill) bool { return k.term.ContainerID == term.ContainerID }) {
			return false, fmt.Errorf("container ID %s again, want a new container per restart", term.ContainerID)
		}
		exit, err := n.ContainerExit(ctx, term.ContainerID)
		if err != nil {
			return false, err
		}
		kills = append(kills, kill{term, exit})
		t.Logf("timing: OOM kill %d at %v after the pod was created (container %s)", len(kills), term.FinishedAt.Sub(pod.CreationTimestamp.Time), term.ContainerID)
		return len(kills) == 2, nil
	})
	checkSidecarRun(t, n, pod)

	for i, k := range kills {
		term, exit := k.term, k.exit
		if term.Reason != "OOMKilled" {
			t.Errorf("kill %d: lastState.terminated = %+v, want reason OOMKilled", i+1, term)
			continue
		}
		summary.kills++
		if !exit.FinishedAt.Truncate(time.Second).Equal(term.FinishedAt.Time) || exit.Reason != "OOMKilled" || exit.ExitCode != 137 {
			t.Errorf("containerd's record of %s: %+v; the API says finishedAt %v, want the same exit (137, OOMKilled)", term.ContainerID, exit, term.FinishedAt)
		}
		m := waitFinalCapture(t, captures, pod, exit)
		t.Logf("kill %d: final capture %s (trigger %s): oomKilledAt %v; containerd: TaskOOM event %v, process reaped (finishedAt) %v; oomKilledAt-TaskOOM %v, finishedAt-oomKilledAt %v",
			i+1, m.ID, m.Trigger, m.OOMKilledAt.Format(time.StampMicro), exit.OOMEventAt.Format(time.StampMicro), exit.FinishedAt.Format(time.StampMicro),
			m.OOMKilledAt.Sub(exit.OOMEventAt), exit.FinishedAt.Sub(*m.OOMKilledAt))
		// The kubelet's finishedAt is when the shim reaped the killed
		// process: under TCG that trails the kill by 1-3 s (a killed Go
		// program's threads exit slowly on an emulated CPU). The kill itself
		// is when the kernel bumped oom_kill in memory.events, which the
		// runtime sees too (the shim's TaskOOM event): the sidecar must be
		// within a second of that, and never after the process was reaped.
		if exit.OOMEventAt.IsZero() {
			t.Errorf("kill %d: containerd logged no TaskOOM event for %s", i+1, term.ContainerID)
		} else if d := m.OOMKilledAt.Sub(exit.OOMEventAt).Abs(); d > time.Second {
			t.Errorf("kill %d: oomKilledAt %v is %v from the runtime's TaskOOM event %v, want within 1s", i+1, m.OOMKilledAt, d, exit.OOMEventAt)
		}
		if m.OOMKilledAt.After(exit.FinishedAt) {
			t.Errorf("kill %d: oomKilledAt %v after the kubelet's finishedAt %v: the sidecar saw the kill late", i+1, m.OOMKilledAt, exit.FinishedAt)
		}
		if err := testkit.FinalHeap(captures, m, "main.leakDoubling"); err != nil {
			t.Errorf("kill %d: %v", i+1, err)
			continue
		}
		summary.captured++
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

	tt.Run("InvalidAnnotationWarns", func(tt *testing.T) {
		t := recorder{tt}
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

	tt.Run("JobWithNativeSidecarCompletes", func(tt *testing.T) {
		t := recorder{tt}
		job, err := cs.BatchV1().Jobs(namespace).Create(ctx, &batchv1.Job{
			ObjectMeta: metav1.ObjectMeta{Name: "batch", Namespace: namespace},
			Spec: batchv1.JobSpec{BackoffLimit: ptr.To[int32](0), Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				NodeName: node.Name, RestartPolicy: corev1.RestartPolicyNever, AutomountServiceAccountToken: ptr.To(false),
				Containers: []corev1.Container{{Name: "app", Image: cliImage, ImagePullPolicy: corev1.PullNever, Args: []string{"version"}}},
			}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		jobStart := time.Now()
		waitFor(t, 5*time.Minute, "the Job to complete", func() (bool, error) {
			j, err := cs.BatchV1().Jobs(namespace).Get(ctx, job.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			for _, c := range j.Status.Conditions {
				if c.Status != corev1.ConditionTrue {
					continue
				}
				switch c.Type {
				case batchv1.JobComplete:
					return true, nil
				case batchv1.JobFailed:
					return false, fmt.Errorf("job failed: %s: %s", c.Reason, c.Message)
				}
			}
			return false, nil
		})
		t.Logf("timing: Job complete %v after it was created", time.Since(jobStart).Round(time.Millisecond))
		pods, err := cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "batch.kubernetes.io/job-name=" + job.Name})
		if err != nil || len(pods.Items) != 1 {
			t.Fatalf("the Job's pods: %v, %v; want one", pods, err)
		}
		p := pods.Items[0]
		i := slices.IndexFunc(p.Status.InitContainerStatuses, func(s corev1.ContainerStatus) bool { return s.Name == names.SidecarName })
		if p.Annotations[names.StatusAnnotation] == "" || i < 0 || p.Status.Phase != corev1.PodSucceeded {
			t.Fatalf("the Job's pod %s: injected %q, phase %s, init containers %+v; want an injected native sidecar and Succeeded",
				p.Name, p.Annotations[names.StatusAnnotation], p.Status.Phase, p.Status.InitContainerStatuses)
		}
		if st := p.Status.InitContainerStatuses[i]; st.State.Terminated == nil || st.RestartCount != 0 {
			t.Errorf("the Job's sidecar: %+v; want it stopped by the kubelet after the app, never restarted", st)
		}
	})

	tt.Run("WebhookDownPodsStillCreated", func(tt *testing.T) {
		t := recorder{tt}
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

// leakyAnnotations are the story's pod's.
var leakyAnnotations = map[string]string{"heapwatch.io/thresholds": "50,70,85"}

// leakyPod is examples/leaky with a 130Mi limit, doubling its leak, on the
// VM's node (no scheduler runs).
func leakyPod(name string, annotations map[string]string) *corev1.Pod {
	limit := resource.MustParse("130Mi")
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Annotations: maps.Clone(annotations)},
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

// restartDelay is the kubelet's first CrashLoopBackOff delay: no newer
// container of the pod starts sooner after one ends.
const restartDelay = 10 * time.Second

// waitFinalCapture lists the pod's captures in storage until one is marked
// final for the kill that ended the container of exit: a kill the sidecar
// saw in the container's life, or before its successor could start (a late
// sighting, which the story reports).
func waitFinalCapture(t testing.TB, st store.Store, pod *corev1.Pod, exit node.Exit) *capture.Metadata {
	t.Helper()
	var final *capture.Metadata
	var all []string
	from, to := exit.StartedAt, exit.FinishedAt.Add(restartDelay)
	err := wait.PollUntilContextTimeout(t.Context(), 500*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
		entries, err := catalog.Scan(t.Context(), st, capture.Prefix(pod.Namespace, pod.Name, "app"), func(capture.Name) bool { return true })
		if err != nil {
			return false, err
		}
		if err := catalog.LoadMetadata(t.Context(), st, entries); err != nil {
			return false, err
		}
		all, final = all[:0], nil
		for _, e := range entries {
			m := e.Meta
			if m == nil {
				return false, fmt.Errorf("capture %s: %w", e.ID, e.MetaErr)
			}
			all = append(all, fmt.Sprintf("%s final=%v oom=%v", m.ID, m.Final, m.OOMKilledAt))
			if m.Final && m.OOMKilledAt != nil && m.OOMKilledAt.After(from) && m.OOMKilledAt.Before(to) {
				if final != nil && final.ID != m.ID {
					return false, fmt.Errorf("two captures marked final for one kill: %s and %s", final.ID, m.ID)
				}
				final = m
			}
		}
		return final != nil, nil
	})
	if err != nil {
		t.Fatalf("no capture marked final for a kill between %v and %v: %v; the pod's captures: %q", from, to, err, all)
	}
	t.Logf("captures: %q", all)
	return final
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 500*time.Millisecond, timeout, true, func(context.Context) (bool, error) { return cond() })
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func mustCreate(t testing.TB, cs kubernetes.Interface, obj runtime.Object) {
	t.Helper()
	var err error
	switch o := obj.(type) {
	case *corev1.Namespace:
		_, err = cs.CoreV1().Namespaces().Create(t.Context(), o, metav1.CreateOptions{})
	case *corev1.ServiceAccount:
		_, err = cs.CoreV1().ServiceAccounts(o.Namespace).Create(t.Context(), o, metav1.CreateOptions{})
	case *corev1.Secret:
		_, err = cs.CoreV1().Secrets(o.Namespace).Create(t.Context(), o, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// buildBinaries builds the webhook for the host and the sidecar and leaky
// app for the images.
func buildBinaries(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for name, pkg := range map[string]string{"webhook": "./cmd/webhook", "sidecar": "./cmd/sidecar", "leaky": "./examples/leaky", "heapwatch": "./cmd/heapwatch"} {
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
func kubeletKubeconfig(t testing.TB, env *envtest.Environment) []byte {
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

func (w *webhookProc) stop(t testing.TB) {
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
func startWebhook(t testing.TB, env *envtest.Environment, dir, bin, storage string) *webhookProc {
	t.Helper()
	objs, err := deploy.RenderChart(filepath.Join(vm.ModuleRoot(), "deploy/helm/heapwatch"), "heapwatch", "heapwatch-system", map[string]any{
		"sidecar": map[string]any{"image": map[string]any{"repository": "heapwatch.test/sidecar", "tag": "node"},
			"storage": storage, "credentialsSecret": credentialsSecret},
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

// checkSidecarSpec compares the sidecar the API server stored with what the
// webhook's injection renders for the pod as submitted: the leaky pod names
// no runAsUser, so privileged-reader (uid 0, drop ALL, add the two
// capabilities the README documents, never privileged).
func checkSidecarSpec(t testing.TB, pod *corev1.Pod) {
	t.Helper()
	i := slices.IndexFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == names.SidecarName })
	if i < 0 {
		t.Fatalf("no native sidecar %s among the init containers %v", names.SidecarName, pod.Spec.InitContainers)
	}
	got := pod.Spec.InitContainers[i].SecurityContext
	rendered := leakyPod(pod.Name, leakyAnnotations)
	if r := inject.Inject(rendered, inject.Options{Image: sidecarImage, Defaults: settings.Defaults(), NativeSidecar: true}); !r.Injected {
		t.Fatalf("inject renders no sidecar for the pod: %+v", r)
	}
	want := rendered.Spec.InitContainers[len(rendered.Spec.InitContainers)-1].SecurityContext
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("sidecar securityContext (-rendered +stored):\n%s", d)
	}
	if got == nil || got.Privileged == nil || *got.Privileged || got.Capabilities == nil ||
		!slices.Equal(got.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(got.Capabilities.Add, []corev1.Capability{"SYS_PTRACE", "DAC_READ_SEARCH"}) {
		t.Errorf("sidecar securityContext %+v: want privileged false, drop ALL, add SYS_PTRACE and DAC_READ_SEARCH only", got)
	}
	if mode := pod.Annotations[names.SecurityModeAnnotation]; mode != settings.SecurityModePrivilegedReader {
		t.Errorf("security mode %q, want %s", mode, settings.SecurityModePrivilegedReader)
	}
}

// checkSidecarRun checks the running sidecar as the kernel sees it (the
// capabilities, no_new_privs and seccomp runc applied, cgroupfs mounted
// read-only) and what it logged: the notification mode it watched the app
// with, and the kill.
func checkSidecarRun(t testing.TB, n *node.Node, pod *corev1.Pod) {
	t.Helper()
	out, err := n.Shell(t.Context(), time.Minute, `for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = sidecar ] || continue
grep -E '^(Uid|CapEff|CapPrm|NoNewPrivs|Seccomp):' $p/status; awk '$5 == "/sys/fs/cgroup" { print "cgroupfs:", $0 }' $p/mountinfo; done`)
	if err != nil {
		t.Fatal(err)
	}
	facts := map[string]string{}
	for line := range strings.Lines(string(out)) {
		k, v, _ := strings.Cut(line, ":")
		facts[k] = strings.Join(strings.Fields(v), " ")
	}
	// mountinfo: ID parent major:minor root mountpoint options [optional...] - fstype source super-options
	if f := strings.Fields(facts["cgroupfs"]); len(f) > 5 {
		opts := strings.Split(f[5], ",")
		fstype := ""
		if i := slices.Index(f, "-"); i > 0 && i+1 < len(f) {
			fstype = f[i+1]
		}
		facts["cgroupfs"] = fmt.Sprintf("%s %s", fstype, opts[0])
	}
	// CAP_DAC_READ_SEARCH is bit 2, CAP_SYS_PTRACE bit 19.
	for k, want := range map[string]string{"Uid": "0 0 0 0", "CapEff": "0000000000080004", "CapPrm": "0000000000080004",
		"NoNewPrivs": "1", "Seccomp": "2", "cgroupfs": "cgroup2 ro"} {
		if facts[k] != want {
			t.Errorf("the sidecar process's %s is %q, want %q (all: %q)", k, facts[k], want, out)
		}
	}

	t.Logf("sidecar process: %q", facts)

	recs, files := sidecarLog(t.Context(), t, n, pod)
	var notify string
	var killed bool
	for _, rec := range recs {
		switch rec["msg"] {
		case "watching container":
			notify, _ = rec["notify"].(string)
		case "container OOM-killed":
			killed = true
		}
	}
	// cgroup v2 signals memory.events changes through inotify, which needs
	// no write: a read-only cgroupfs keeps kernel notifications.
	t.Logf("sidecar log: watched app with notify=%s, logged its OOM kill: %v", notify, killed)
	if notify != "inotify" || !killed {
		t.Errorf("sidecar log: watched app with notify=%q, logged the kill %v; want inotify and the kill\n%s", notify, killed, files)
	}
}

// sidecarLog is what the pod's sidecar logged about the app container (its
// JSON records, in the kubelet's CRI log files) and the files themselves.
func sidecarLog(ctx context.Context, t testing.TB, n *node.Node, pod *corev1.Pod) ([]map[string]any, map[string][]byte) {
	t.Helper()
	dir := fmt.Sprintf("/var/log/pods/%s_%s_%s/%s", pod.Namespace, pod.Name, pod.UID, names.SidecarName)
	files, err := n.Collect(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	var recs []map[string]any
	for _, b := range files {
		for line := range strings.Lines(string(b)) {
			// CRI log format: time stream P|F message.
			f := strings.SplitN(line, " ", 4)
			var rec map[string]any
			if len(f) == 4 && json.Unmarshal([]byte(f[3]), &rec) == nil && rec["container"] == "app" {
				recs = append(recs, rec)
			}
		}
	}
	return recs, files
}

// startControllerManager runs kube-controller-manager on the host against
// the envtest API server with the Deployment, ReplicaSet and Job
// controllers only (no scheduler runs: the pod templates name the node), no
// leader election and no serving port.
func startControllerManager(t testing.TB, env *envtest.Environment, dir string) {
	t.Helper()
	bin, err := node.ControllerManager(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "controller-manager.kubeconfig")
	if err := testenv.WriteKubeconfig(env.Config, kubeconfig); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--kubeconfig="+kubeconfig, "--controllers=deployment-controller,replicaset-controller,job-controller", "--leader-elect=false", "--secure-port=0")
	logs := &testkit.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("kube-controller-manager log:\n%s", logs.String())
		}
	})
}
