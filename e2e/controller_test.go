package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/heapwatch/heapwatch/internal/oomevents"
	"github.com/heapwatch/heapwatch/internal/testenv"
	"github.com/heapwatch/heapwatch/internal/webhook/inject"
	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/settings"
	"github.com/heapwatch/heapwatch/store/s3test"
)

// TestControllerRealOOMKill joins the two halves of issue 13 on one real
// kill: the leaky app is OOM-killed by the kernel beside the real sidecar,
// which stores its final capture in a real S3 server; the kill is recorded
// in the status of the pod object (in a real kube-apiserver) the sidecar
// was told it runs in, as the kubelet would; the controller then posts the
// Event naming that capture and counts it, and `heapwatch explain` on the
// pod prints the kill, the timeline, the verdict and what grew.
func TestControllerRealOOMKill(t *testing.T) {
	requirePods(t)
	crlog.SetLogger(logr.Discard()) // the controller's own logs go to slog
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Error(err)
		}
	})
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	srv := s3test.Start(t)
	srv.Setenv(t) // the controller's and the CLI's read-only access
	storage := srv.URL("captures")

	// The pod object as the webhook injects it, in the namespace and with
	// the name the emulated pod's sidecar is given.
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "e2e"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "leaky-0", Namespace: "e2e"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "leaky",
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: *resource.NewQuantity(appLimit, resource.BinarySI)}}}}}}
	defaults := settings.Defaults()
	defaults.Storage = storage
	if res := inject.Inject(obj, inject.Options{Image: "heapwatch-sidecar", Defaults: defaults, NativeSidecar: true}); !res.Injected {
		t.Fatalf("pod not injected: %s", res.Reason)
	}
	pod, err := cs.CoreV1().Pods("e2e").Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// The controller's own manager, as cmd/controller runs it.
	cfg := oomevents.DefaultConfig()
	cfg.LeaderElectionNamespace = "e2e"
	ctl, err := testenv.StartController(env.Config, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ctl.Stop(); err != nil {
			t.Errorf("controller: %v", err)
		}
	})
	r := startPod(t, podOptions{shape: "linear", appArgs: []string{"-rate", "20"}, storage: storage,
		env: append(srv.Env(), "POD_UID="+string(pod.UID)), sharedNet: true})
	r.waitOOMKill(t, time.Minute)
	killedAt := time.Now()
	st := openStore(t, storage)
	m := finalCapture(t, st, 30*time.Second)
	checkFinalHeap(t, st, m, "main.leakLinear")
	if m.PodUID != string(pod.UID) {
		t.Fatalf("final capture %s has pod UID %q, want the pod object's %s", m.ID, m.PodUID, pod.UID)
	}

	pod = recordOOMKill(t, cs, pod, killedAt)
	ev := waitEvent(t, cs, pod)
	if ev.Reason != oomevents.ReasonCaptured || ev.Type != corev1.EventTypeNormal || ev.Annotations[oomevents.AnnotationCapture] != m.ID {
		t.Errorf("event = %s %s (capture %q): %s; want Normal %s for %s", ev.Type, ev.Reason, ev.Annotations[oomevents.AnnotationCapture], ev.Message, oomevents.ReasonCaptured, m.ID)
	}
	for _, want := range []string{"capture " + m.ID, "top in-use: main.leakLinear "} {
		if !strings.Contains(ev.Message, want) {
			t.Errorf("event message %q lacks %q", ev.Message, want)
		}
	}
	for series, want := range map[string]float64{
		`heapwatch_oom_kills_total{captured="true",namespace="e2e",reason="final-capture"}`: 1,
		"heapwatch_oom_capture_lead_time_seconds_count":                                     1,
	} {
		if got, err := testenv.Metric(ctl.MetricsPort, series); err != nil || got != want {
			t.Errorf("%s = %v (%v), want %v", series, got, err, want)
		}
	}

	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := testenv.WriteKubeconfig(env.Config, kubeconfig); err != nil {
		t.Fatal(err)
	}
	out := string(runHeapwatch(t, storage, "explain", "--kubeconfig", kubeconfig, "-n", "e2e", "leaky-0"))
	for _, want := range []string{"Capture   " + m.ID + " (final before the OOM kill)", "after the capture; 1 restarts",
		"Timeline  working set (#) against the limit (-)", "Verdict   the Go heap explains", "main.leakLinear"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain e2e/leaky-0 lacks %q:\n%s", want, out)
		}
	}
}

// recordOOMKill records the app's kill at finished in the pod's status, as
// the kubelet does once it restarts the container.
func recordOOMKill(t *testing.T, cs kubernetes.Interface, pod *corev1.Pod, finished time.Time) *corev1.Pod {
	t.Helper()
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(finished.Add(time.Second))}}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Image: "leaky", RestartCount: 1, Ready: true, State: running,
		LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			Reason: "OOMKilled", ExitCode: 137, FinishedAt: metav1.NewTime(finished), StartedAt: metav1.NewTime(finished.Add(-time.Minute))}}}}
	pod.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: names.SidecarName, Image: "heapwatch-sidecar", State: running, Ready: true}}
	pod, err := cs.CoreV1().Pods(pod.Namespace).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// waitEvent waits for the controller's Event on the pod.
func waitEvent(t *testing.T, cs kubernetes.Interface, pod *corev1.Pod) corev1.Event {
	t.Helper()
	var evs []corev1.Event
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := cs.CoreV1().Events(pod.Namespace).List(ctx, metav1.ListOptions{
			FieldSelector: fields.Set{"involvedObject.uid": string(pod.UID), "source": oomevents.Component}.String()})
		if err != nil {
			return false, err
		}
		evs = list.Items
		return len(evs) > 0, nil
	})
	if err != nil {
		t.Fatalf("no event from the controller on pod %s/%s within 30s: %v", pod.Namespace, pod.Name, err)
	}
	if len(evs) != 1 {
		t.Errorf("%d events for one kill, want 1: %+v", len(evs), evs)
	}
	return evs[0]
}
