package integration

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/heapwatch/heapwatch/internal/webhook"
	"github.com/heapwatch/heapwatch/internal/webhook/internal/podgen"
	"github.com/heapwatch/heapwatch/names"
)

func TestSelection(t *testing.T) {
	ctx := context.Background()
	cs, _ := client(t)
	tests := []struct {
		name   string
		labels map[string]string // namespace labels
		pod    *corev1.Pod
		inject bool
	}{
		{"labelled namespace", map[string]string{names.InjectLabel: "enabled"}, podgen.Pod("app"), true},
		{"unlabelled namespace", nil, podgen.Pod("app"), false},
		{"namespace label other value", map[string]string{names.InjectLabel: "disabled"}, podgen.Pod("app"), false},
		{"pod opt-out label", map[string]string{names.InjectLabel: "enabled"}, podgen.Pod("app", podgen.Labels(names.InjectLabel, "disabled")), false},
		// The same-uid-only entry, for a pod without runAsUser: see podsecurity_test.go.
		{"baseline Pod Security namespace, pod without runAsUser", map[string]string{names.InjectLabel: "enabled", "pod-security.kubernetes.io/enforce": "baseline"}, podgen.Pod("app"), false},
		{"baseline Pod Security namespace, pod with runAsUser", map[string]string{names.InjectLabel: "enabled", "pod-security.kubernetes.io/enforce": "baseline"}, podgen.Pod("app", podgen.RunAs(1000, 1000)), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns, err := namespaceFor(ctx, cs, tt.labels)
			if err != nil {
				t.Fatal(err)
			}
			got, err := cs.CoreV1().Pods(ns).Create(ctx, tt.pod, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("pod not created: %v", err)
			}
			if tt.inject {
				assertInjected(t, got)
			} else {
				assertNotInjected(t, got)
			}
		})
	}
}

func TestExcludedNamespaces(t *testing.T) {
	ctx := context.Background()
	cs, _ := client(t)
	// Even labelled, kube-system and the webhook's own namespace are
	// excluded by the configuration's namespaceSelector.
	for _, name := range []string{"kube-system", "heapwatch-system"} {
		t.Run(name, func(t *testing.T) {
			ns, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				ns, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
			}
			if err != nil {
				t.Fatal(err)
			}
			if ns.Labels == nil {
				ns.Labels = map[string]string{}
			}
			ns.Labels[names.InjectLabel] = "enabled"
			if _, err := cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			got, err := cs.CoreV1().Pods(name).Create(ctx, podgen.Pod("", podgen.GenerateName("excluded-")), metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			assertNotInjected(t, got)
		})
	}
}

func TestGenerateNamePod(t *testing.T) {
	ctx := context.Background()
	cs, _ := client(t)
	ns := enabled(t, cs)
	// A ReplicaSet's pod: generateName, and no namespace in the object.
	got, err := cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("", podgen.GenerateName("leaky-6d8f9c-"), podgen.Containers("worker")), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertInjected(t, got)
	if !strings.HasPrefix(got.Name, "leaky-6d8f9c-") || got.Namespace != ns {
		t.Errorf("pod %s/%s", got.Namespace, got.Name)
	}
	podName, _ := envValue(sidecarOf(got), names.EnvPodName)
	if podName.ValueFrom == nil || podName.ValueFrom.FieldRef == nil || podName.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("POD_NAME = %+v, want the downward API", podName)
	}
}

func TestDryRun(t *testing.T) {
	ctx := context.Background()
	cs, _ := client(t)
	ns := enabled(t, cs)
	got, err := cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("dry"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatal(err)
	}
	assertInjected(t, got)
	if _, err := cs.CoreV1().Pods(ns).Get(ctx, "dry", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("dry-run pod was stored: %v", err)
	}
}

func TestSkipsWarn(t *testing.T) {
	tests := []struct {
		name    string
		pod     *corev1.Pod
		warning string
	}{
		{"opt-out annotation", podgen.Pod("optout", podgen.Annotations(names.InjectAnnotation, "false")), `heapwatch: sidecar not injected: opted out by annotation heapwatch.io/inject="false"`},
		{"hostPID", podgen.Pod("hostpid", podgen.HostPID()), "heapwatch: sidecar not injected: the pod uses hostPID"},
		{"shareProcessNamespace false", podgen.Pod("nospn", podgen.ShareProcessNamespace(false)), "heapwatch: sidecar not injected: the pod sets shareProcessNamespace: false"},
		{"windows", podgen.Pod("win", podgen.NodeSelector("kubernetes.io/os", "windows")), "heapwatch: sidecar not injected: the pod runs on Windows nodes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs, w := client(t)
			ns := enabled(t, cs)
			got, err := cs.CoreV1().Pods(ns).Create(context.Background(), tt.pod, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("pod not created: %v", err)
			}
			assertNotInjected(t, got)
			if !slices.ContainsFunc(w.Get(), func(s string) bool { return strings.HasPrefix(s, tt.warning) }) {
				t.Errorf("warnings = %q, want one starting %q", w.Get(), tt.warning)
			}
		})
	}
}

func TestInvalidAnnotationWarns(t *testing.T) {
	cs, w := client(t)
	ns := enabled(t, cs)
	got, err := cs.CoreV1().Pods(ns).Create(context.Background(),
		podgen.Pod("bad", podgen.Annotations("heapwatch.io/thresholds", "60,150", "heapwatch.io/interval", "250ms")), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("pod with a bad annotation was rejected: %v", err)
	}
	assertInjected(t, got)
	sc := sidecarOf(got)
	if e, _ := envValue(sc, "HEAPWATCH_THRESHOLDS"); e.Value != "60,75,90" {
		t.Errorf("HEAPWATCH_THRESHOLDS = %q, want the default", e.Value)
	}
	if e, _ := envValue(sc, "HEAPWATCH_INTERVAL"); e.Value != "250ms" {
		t.Errorf("HEAPWATCH_INTERVAL = %q, want the valid annotation's 250ms", e.Value)
	}
	want := `heapwatch.io/thresholds: invalid value "60,150" ("150" is not a percentage between 0 and 100 (exclusive)); using "60,75,90"`
	if !slices.Contains(w.Get(), want) {
		t.Errorf("warnings = %q, want %q", w.Get(), want)
	}
}

func TestSecondAdmissionNoDuplicate(t *testing.T) {
	ctx := context.Background()
	cs, _ := client(t)
	ns := enabled(t, cs)
	first, err := cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("first"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The injected pod's spec admitted again (as a copied manifest would be).
	again := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "second", Labels: first.Labels, Annotations: first.Annotations},
		Spec:       *first.Spec.DeepCopy(),
	}
	second, err := cs.CoreV1().Pods(ns).Create(ctx, again, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertInjected(t, second)
	if len(second.Spec.Volumes) != len(first.Spec.Volumes) || len(second.Spec.Containers[0].Env) != len(first.Spec.Containers[0].Env) {
		t.Errorf("second admission changed the pod: volumes %d -> %d, env %d -> %d",
			len(first.Spec.Volumes), len(second.Spec.Volumes), len(first.Spec.Containers[0].Env), len(second.Spec.Containers[0].Env))
	}
}

// TestReinvocation registers another injector, ordered after ours, that
// changes every pod: the API server then calls ours again
// (reinvocationPolicy IfNeeded), which must leave the pod alone.
func TestReinvocation(t *testing.T) {
	ctx := context.Background()
	cs, _ := client(t)
	other := startOtherInjector(t)
	const label = "heapwatch-test/reinvoke"
	if err := register(ctx, "zz-other-injector", main, func(wh *admissionregistrationv1.MutatingWebhook) {
		wh.Name = "other.example.com"
		wh.NamespaceSelector.MatchLabels = map[string]string{label: "true"}
		wh.ClientConfig.URL = &other
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, "zz-other-injector", metav1.DeleteOptions{})
	})
	ns := enabled(t, cs, label, "true")
	before := main.metric(t, `heapwatch_webhook_admissions_total{outcome="skipped",reason="already-injected"}`)
	got, err := cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("twice"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertInjected(t, got)
	if got.Annotations[otherAnnotation] != "done" {
		t.Fatal("the other injector did not run")
	}
	if n := main.metric(t, `heapwatch_webhook_admissions_total{outcome="skipped",reason="already-injected"}`) - before; n != 1 {
		t.Errorf("reinvocations seen by the webhook: %v, want 1", n)
	}
}

// TestRegularSidecar: with --native-sidecar=false (clusters before 1.29)
// the sidecar is a regular container, and the API server accepts the pod.
func TestRegularSidecar(t *testing.T) {
	ctx := context.Background()
	cs, _ := client(t)
	s, err := startServer(t.TempDir(), func(c *webhook.Config) { c.Inject.NativeSidecar = false })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.stop() })
	const label = "heapwatch-test/regular"
	if err := register(ctx, "heapwatch-regular", s, func(wh *admissionregistrationv1.MutatingWebhook) {
		wh.NamespaceSelector.MatchLabels = map[string]string{label: "true"}
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, "heapwatch-regular", metav1.DeleteOptions{})
	})
	ns, err := namespaceFor(ctx, cs, map[string]string{label: "true"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("legacy", podgen.InitContainer("migrate")), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := countSidecars(got); n != 1 || len(got.Spec.InitContainers) != 1 || got.Spec.Containers[len(got.Spec.Containers)-1].Name != names.SidecarName {
		t.Fatalf("want the sidecar as the last regular container, got init %d containers %d", len(got.Spec.InitContainers), len(got.Spec.Containers))
	}
	if sc := sidecarOf(got); sc.RestartPolicy != nil {
		t.Errorf("regular sidecar has restartPolicy %v", *sc.RestartPolicy)
	}
}

// TestWebhookStopped: with failurePolicy Ignore, pods are created without
// the sidecar while no webhook answers.
func TestWebhookStopped(t *testing.T) {
	ctx := context.Background()
	cs, _ := client(t)
	s, err := startServer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const label = "heapwatch-test/stopped"
	// Selects only namespaces with the test label, not the opt-in label, so
	// the main webhook stays out of it.
	if err := register(ctx, "heapwatch-stopped", s, func(wh *admissionregistrationv1.MutatingWebhook) {
		wh.NamespaceSelector.MatchLabels = map[string]string{label: "true"}
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, "heapwatch-stopped", metav1.DeleteOptions{})
	})
	ns, err := namespaceFor(ctx, cs, map[string]string{label: "true"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.stop(); err != nil {
		t.Fatalf("stopping the webhook: %v", err)
	}
	start := time.Now()
	got, err := cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("while-down"), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("pod not created while the webhook is down: %v", err)
	}
	assertNotInjected(t, got)
	t.Logf("pod created %v after the webhook stopped answering", time.Since(start))

	// The fail-closed option: the same outage now refuses the pod.
	cfg, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "heapwatch-stopped", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Webhooks[0].FailurePolicy = ptr.To(admissionregistrationv1.Fail)
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(ctx, cfg, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var refused error
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, refused = cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("", podgen.GenerateName("fail-closed-")), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return refused != nil, nil
	})
	if err != nil || !strings.Contains(refused.Error(), "failed calling webhook") {
		t.Errorf("under failurePolicy Fail the pod was not refused: %v", refused)
	}
}

// TestPodSecurityNeedsPrivileged shows why the configuration's first entry
// skips namespaces enforcing Pod Security baseline or restricted: there the
// privileged-reader sidecar (uid 0, SYS_PTRACE, DAC_READ_SEARCH) makes the
// API server refuse the pod. The first entry without that exclusion is
// registered for test namespaces only. It also shows that the API server
// under test enforces Pod Security.
func TestPodSecurityNeedsPrivileged(t *testing.T) {
	ctx := context.Background()
	cs, _ := client(t)
	const label = "heapwatch-test/psa"
	if err := register(ctx, "heapwatch-psa", main, func(wh *admissionregistrationv1.MutatingWebhook) {
		wh.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{label: "true"}}
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, "heapwatch-psa", metav1.DeleteOptions{})
	})
	for level, allowed := range map[string]bool{"privileged": true, "baseline": false, "restricted": false} {
		t.Run(level, func(t *testing.T) {
			ns, err := namespaceFor(ctx, cs, map[string]string{label: "true", "pod-security.kubernetes.io/enforce": level})
			if err != nil {
				t.Fatal(err)
			}
			got, err := cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("app"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			switch {
			case allowed && err != nil:
				t.Fatalf("refused: %v", err)
			case allowed:
				assertInjected(t, got)
			case err == nil:
				t.Fatalf("Pod Security %s admitted the injected sidecar", level)
			case !strings.Contains(err.Error(), "SYS_PTRACE"):
				t.Errorf("refused for another reason than the sidecar's capabilities: %v", err)
			}
		})
	}
}

// TestCertRotation swaps the certificate files as the kubelet does when
// cert-manager renews the Secret; the running server must present the new
// certificate, and the API server keep calling it.
func TestCertRotation(t *testing.T) {
	ctx := context.Background()
	old, err := main.servedSerial()
	if err != nil {
		t.Fatal(err)
	}
	if old != main.certs.serial {
		t.Fatalf("served serial %s, written %s", old, main.certs.serial)
	}
	if err := main.certs.rotate(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		s, err := main.servedSerial()
		return err == nil && s == main.certs.serial, nil
	})
	if err != nil {
		t.Fatalf("the new certificate was not served within 30s: %v", err)
	}
	t.Logf("new certificate served %v after the swap", time.Since(start))
	cs, _ := client(t)
	ns := enabled(t, cs)
	got, err := cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("after-rotation"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertInjected(t, got)
}
