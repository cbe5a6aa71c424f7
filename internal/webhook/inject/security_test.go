package inject_test

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/utils/ptr"

	"github.com/heapwatch/heapwatch/internal/webhook/inject"
	"github.com/heapwatch/heapwatch/internal/webhook/internal/podgen"
	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/settings"
)

const (
	sameUID    = settings.SecurityModeSameUID
	privileged = settings.SecurityModePrivilegedReader
	modeKey    = names.AnnotationPrefix + "security-mode"
)

func TestSecurityMode(t *testing.T) {
	runAs := func(uid, gid int64) *corev1.SecurityContext {
		return &corev1.SecurityContext{RunAsUser: ptr.To(uid), RunAsGroup: ptr.To(gid)}
	}
	tests := []struct {
		name        string
		pod         *corev1.Pod
		sameUIDOnly bool
		defaultMode string // --default-security-mode; "" keeps auto
		mode        string // "" means not injected (ReasonNeedsSameUID)
		uid, gid    int64
		warning     string // substring of the single warning; "" means none
	}{
		{"pod runAsUser and runAsGroup", podgen.Pod("p", podgen.RunAs(1000, 2000)), false, "", sameUID, 1000, 2000, ""},
		{"container's own ids", podgen.Pod("p", podgen.ContainerSecurity("app", runAs(3000, 3001))), false, "", sameUID, 3000, 3001, ""},
		{"container overrides the pod's", podgen.Pod("p", podgen.RunAs(1000, 1000), podgen.ContainerSecurity("app", runAs(1500, 1000))), false, "", sameUID, 1500, 1000, ""},
		{"no ids: image's user unknown", podgen.Pod("p"), false, "", privileged, 0, 0, ""},
		{"no runAsGroup", podgen.Pod("p", podgen.ContainerSecurity("app", &corev1.SecurityContext{RunAsUser: ptr.To[int64](1000)})), false, "", privileged, 0, 0, ""},
		{"root app", podgen.Pod("p", podgen.RunAs(0, 0)), false, "", privileged, 0, 0, ""},
		{"mixed uids", podgen.Pod("p", podgen.RunAs(1000, 1000), podgen.Containers("worker"), podgen.ContainerSecurity("worker", runAs(1001, 1000))), false, "", privileged, 0, 0, ""},
		{"mixed uids, only app watched", podgen.Pod("p", podgen.RunAs(1000, 1000), podgen.Containers("worker"), podgen.ContainerSecurity("worker", runAs(0, 0)),
			podgen.Annotations(settings.Containers.Annotation(), "app")), false, "", sameUID, 1000, 1000, ""},
		{"privileged app", podgen.Pod("p", podgen.RunAs(1000, 1000), podgen.ContainerSecurity("app", &corev1.SecurityContext{Privileged: ptr.To(true)})), false, "", privileged, 0, 0, ""},
		{"app adds a capability", podgen.Pod("p", podgen.RunAs(1000, 1000), podgen.ContainerSecurity("app",
			&corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}}})), false, "", privileged, 0, 0, ""},
		{"root init container does not count", podgen.Pod("p", podgen.InitContainer("migrate"), podgen.RunAs(1000, 1000)), false, "", sameUID, 1000, 1000, ""},
		{"forced privileged-reader", podgen.Pod("p", podgen.RunAs(1000, 1000), podgen.Annotations(modeKey, privileged)), false, "", privileged, 0, 0, ""},
		{"forced same-uid, impossible", podgen.Pod("p", podgen.Annotations(modeKey, sameUID)), false, "", privileged, 0, 0,
			"heapwatch.io/security-mode: same-uid is not possible for this pod (container app: no runAsUser); using privileged-reader"},
		{"default same-uid, impossible", podgen.Pod("p", podgen.RunAs(0, 0)), false, sameUID, privileged, 0, 0,
			"--default-security-mode: same-uid is not possible for this pod (container app runs as root)"},
		{"invalid mode", podgen.Pod("p", podgen.RunAs(1000, 1000), podgen.Annotations(modeKey, "root")), false, "", sameUID, 1000, 1000,
			`heapwatch.io/security-mode: invalid value "root"`},
		{"same-uid only: possible", podgen.Pod("p", podgen.RunAs(1000, 1000)), true, "", sameUID, 1000, 1000, ""},
		{"same-uid only: privileged-reader forced", podgen.Pod("p", podgen.RunAs(1000, 1000), podgen.Annotations(modeKey, privileged)), true, "", sameUID, 1000, 1000,
			"heapwatch.io/security-mode: privileged-reader is refused by this namespace's Pod Security level; using same-uid"},
		{"same-uid only: no ids", podgen.Pod("p"), true, "", "", 0, 0,
			"sidecar not injected: this namespace enforces Pod Security baseline or restricted, which admits the sidecar only with the app's own uid and gid (container app: no runAsUser); set runAsUser and runAsGroup (non-zero) in the pod's securityContext"},
		{"same-uid only: mixed", podgen.Pod("p", podgen.RunAs(1000, 1000), podgen.Containers("worker"), podgen.ContainerSecurity("worker", runAs(1001, 1000))), true, "", "", 0, 0,
			"(containers app and worker run as 1000:1000 and 1001:1000); set the same runAsUser and runAsGroup for every watched container, or watch fewer with heapwatch.io/containers"},
		{"same-uid only: privileged app", podgen.Pod("p", podgen.RunAs(1000, 1000), podgen.ContainerSecurity("app", &corev1.SecurityContext{Privileged: ptr.To(true)})), true, "", "", 0, 0,
			"(container app is privileged); the sidecar cannot read a container with more privileges than its own: exclude it with heapwatch.io/containers"},
		{"same-uid only: root", podgen.Pod("p", podgen.RunAs(0, 0)), true, "", "", 0, 0, "(container app runs as root); set runAsUser and runAsGroup (non-zero)"},
		{"same-uid only: nothing watched", podgen.Pod("p", podgen.RunAs(1000, 1000), podgen.Annotations(settings.Containers.Annotation(), "other")), true, "", "", 0, 0,
			"(no container of the pod is watched); name containers of the pod in heapwatch.io/containers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := options(func(o *inject.Options) {
				o.SameUIDOnly = tt.sameUIDOnly
				if tt.defaultMode != "" {
					o.Defaults.SecurityMode = tt.defaultMode
				}
			})
			before := tt.pod.DeepCopy()
			r := inject.Inject(tt.pod, o)
			warnings := slices.DeleteFunc(slices.Clone(r.Warnings), func(w string) bool {
				return strings.Contains(w, "names no container of this pod") // the "nothing watched" case's own warning
			})
			switch {
			case tt.warning == "" && len(warnings) != 0:
				t.Errorf("warnings = %q, want none", warnings)
			case tt.warning != "" && (len(warnings) != 1 || !strings.Contains(warnings[0], tt.warning)):
				t.Errorf("warnings = %q, want one containing %q", warnings, tt.warning)
			}
			if tt.mode == "" {
				if r.Injected || r.Reason != inject.ReasonNeedsSameUID {
					t.Fatalf("result = %+v, want skipped with %s", r, inject.ReasonNeedsSameUID)
				}
				if !equality.Semantic.DeepEqual(before, tt.pod) {
					t.Error("skipped pod was changed")
				}
				return
			}
			if !r.Injected || r.Mode != tt.mode || tt.pod.Annotations[names.SecurityModeAnnotation] != tt.mode {
				t.Fatalf("injected %v, mode %q, annotation %q; want mode %q", r.Injected, r.Mode, tt.pod.Annotations[names.SecurityModeAnnotation], tt.mode)
			}
			sc := sidecarOf(t, tt.pod)
			if v, _ := env(sc, "HEAPWATCH_SECURITY_MODE"); v != tt.mode {
				t.Errorf("HEAPWATCH_SECURITY_MODE = %q, want %q", v, tt.mode)
			}
			checkSecurityContext(t, sc.SecurityContext, tt.mode, tt.uid, tt.gid)
			if !equality.Semantic.DeepEqual(before.Spec.SecurityContext, tt.pod.Spec.SecurityContext) {
				t.Error("the pod's securityContext was changed")
			}
		})
	}
}

// checkSecurityContext asserts the sidecar's security context for mode.
func checkSecurityContext(t *testing.T, sc *corev1.SecurityContext, mode string, uid, gid int64) {
	t.Helper()
	hardened := !*sc.Privileged && !*sc.AllowPrivilegeEscalation && *sc.ReadOnlyRootFilesystem &&
		slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) && sc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault
	if !hardened {
		t.Errorf("sidecar securityContext not hardened: %+v", sc)
	}
	switch mode {
	case sameUID:
		if *sc.RunAsUser != uid || sc.RunAsGroup == nil || *sc.RunAsGroup != gid || !*sc.RunAsNonRoot || len(sc.Capabilities.Add) != 0 {
			t.Errorf("same-uid sidecar: runAsUser %v runAsGroup %v runAsNonRoot %v add %v; want %d:%d, non-root, nothing added",
				*sc.RunAsUser, sc.RunAsGroup, *sc.RunAsNonRoot, sc.Capabilities.Add, uid, gid)
		}
	case privileged:
		if *sc.RunAsUser != 0 || *sc.RunAsNonRoot || !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"SYS_PTRACE", "DAC_READ_SEARCH"}) {
			t.Errorf("privileged-reader sidecar: runAsUser %v add %v", *sc.RunAsUser, sc.Capabilities.Add)
		}
	}
}
