package integration

import (
	"context"
	"flag"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/heapwatch/heapwatch/internal/webhook/inject"
	"github.com/heapwatch/heapwatch/internal/webhook/internal/golden"
	"github.com/heapwatch/heapwatch/internal/webhook/internal/podgen"
	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/settings"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const enforceLabel = "pod-security.kubernetes.io/enforce"

// TestPodSecurityLevels runs against the API server's own Pod Security
// admission: namespaces enforcing baseline and restricted, opted in, are
// served by the configuration's second entry.
func TestPodSecurityLevels(t *testing.T) {
	ctx := context.Background()
	skipped := `heapwatch_webhook_admissions_total{outcome="skipped",reason="` + string(inject.ReasonNeedsSameUID) + `"}`
	for _, level := range []string{"baseline", "restricted"} {
		t.Run(level, func(t *testing.T) {
			cs, _ := client(t)
			ns := enabled(t, cs, enforceLabel, level)

			t.Run("runAsUser and runAsGroup: same-uid sidecar", func(t *testing.T) {
				got, err := cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("with-ids", podgen.RunAs(1000, 3000), podgen.Restricted()), metav1.CreateOptions{})
				if err != nil {
					t.Fatalf("pod refused: %v", err)
				}
				assertInjected(t, got)
				assertMode(t, got, settings.SecurityModeSameUID)
				golden.YAML(t, "testdata/sidecar-same-uid.yaml", sidecarOf(got), *update)
			})

			t.Run("privileged-reader requested: same-uid with a warning", func(t *testing.T) {
				cs, w := client(t)
				pod := podgen.Pod("forced", podgen.RunAs(1000, 3000), podgen.Restricted(),
					podgen.Annotations(names.AnnotationPrefix+"security-mode", settings.SecurityModePrivilegedReader))
				got, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
				if err != nil {
					t.Fatalf("pod refused: %v", err)
				}
				assertMode(t, got, settings.SecurityModeSameUID)
				if ws := w.Get(); len(ws) != 1 || !strings.Contains(ws[0], "privileged-reader is refused by this namespace's Pod Security level; using same-uid") {
					t.Errorf("warnings = %q", ws)
				}
			})

			t.Run("no runAsUser: admitted without the sidecar, with a warning", func(t *testing.T) {
				cs, w := client(t)
				before := main.metric(t, skipped)
				got, err := cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("without-ids", podgen.Restricted()), metav1.CreateOptions{})
				if err != nil {
					t.Fatalf("pod refused: %v", err)
				}
				assertNotInjected(t, got)
				want := "heapwatch: sidecar not injected: this namespace enforces Pod Security baseline or restricted, which admits the sidecar only with the app's own uid and gid (container app: no runAsUser); set runAsUser and runAsGroup (non-zero) in the pod's securityContext"
				if ws := w.Get(); !slices.Contains(ws, want) {
					t.Errorf("warnings = %q, want %q", ws, want)
				}
				if n := main.metric(t, skipped) - before; n != 1 {
					t.Errorf("%s rose by %v, want 1", skipped, n)
				}
			})
		})
	}

	t.Run("privileged namespace, root pod: privileged-reader sidecar", func(t *testing.T) {
		cs, _ := client(t)
		ns := enabled(t, cs, enforceLabel, "privileged")
		got, err := cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("root", podgen.RunAs(0, 0)), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		assertInjected(t, got)
		assertMode(t, got, settings.SecurityModePrivilegedReader)
		golden.YAML(t, "testdata/sidecar-privileged-reader.yaml", sidecarOf(got), *update)
	})

	t.Run("no Pod Security label, pod with ids: same-uid sidecar", func(t *testing.T) {
		cs, _ := client(t)
		ns := enabled(t, cs)
		got, err := cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("with-ids", podgen.RunAs(1000, 3000)), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		assertMode(t, got, settings.SecurityModeSameUID)
	})
}

// assertMode checks the recorded mode, the sidecar's variable and its
// security context as stored by the API server.
func assertMode(t *testing.T, p *corev1.Pod, mode string) {
	t.Helper()
	sc := sidecarOf(p)
	if sc == nil {
		t.Fatal("no sidecar")
	}
	if got := p.Annotations[names.SecurityModeAnnotation]; got != mode {
		t.Errorf("%s = %q, want %q", names.SecurityModeAnnotation, got, mode)
	}
	if e, _ := envValue(sc, "HEAPWATCH_SECURITY_MODE"); e.Value != mode {
		t.Errorf("HEAPWATCH_SECURITY_MODE = %q, want %q", e.Value, mode)
	}
	sec := sc.SecurityContext
	switch mode {
	case settings.SecurityModeSameUID:
		if *sec.RunAsUser != 1000 || *sec.RunAsGroup != 3000 || !*sec.RunAsNonRoot || len(sec.Capabilities.Add) != 0 {
			t.Errorf("same-uid sidecar securityContext %+v", sec)
		}
	default:
		if *sec.RunAsUser != 0 || len(sec.Capabilities.Add) != 2 {
			t.Errorf("privileged-reader sidecar securityContext %+v", sec)
		}
	}
}
