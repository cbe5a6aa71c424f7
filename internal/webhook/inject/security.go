package inject

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/settings"
)

// Security is the security mode chosen for one pod's sidecar.
type Security struct {
	// Mode is settings.SecurityModeSameUID or
	// settings.SecurityModePrivilegedReader.
	Mode string
	// UID and GID are the watched containers' own, for same-uid.
	UID, GID int64
}

// Capabilities the privileged-reader sidecar keeps after dropping ALL; see
// the README's privileges section for the full reasoning.
var capabilities = []corev1.Capability{
	// SYS_PTRACE: following /proc/<pid>/root and reading /proc/<pid>/fd links
	// and /proc/<pid>/environ of another container's process is a
	// PTRACE_MODE_READ access check. Without this capability it passes only
	// for a reader with the target's uid and gid whose capabilities are a
	// superset of the target's: never for a root app. The sidecar never
	// calls ptrace(2) (RuntimeDefault seccomp stays on).
	"SYS_PTRACE",
	// DAC_READ_SEARCH: /proc/<pid>/fd (mode 0500) and /proc/<pid>/environ
	// (0400) belong to the app's uid; the sidecar runs as uid 0 without
	// DAC_OVERRIDE, so listing and reading them for an app running as any
	// other uid needs the read-only permission bypass. It grants no write.
	"DAC_READ_SEARCH",
}

// securityContext renders the sidecar's container security context for s.
func securityContext(s Security) *corev1.SecurityContext {
	sc := &corev1.SecurityContext{
		Privileged:               ptr.To(false),
		AllowPrivilegeEscalation: ptr.To(false),
		ReadOnlyRootFilesystem:   ptr.To(true),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	if s.Mode == settings.SecurityModeSameUID {
		// The app's own uid and gid and no capability at all: the kernel
		// then lets the sidecar read the app's /proc files as the app could
		// itself, and Pod Security restricted admits the container. The
		// spool and captures emptyDirs are created world-writable (0777) by
		// the kubelet, so no fsGroup, a pod-level change that would also
		// re-own the app's volumes, is needed.
		sc.RunAsUser = ptr.To(s.UID)
		sc.RunAsGroup = ptr.To(s.GID)
		sc.RunAsNonRoot = ptr.To(true)
		return sc
	}
	// uid 0, stripped to two capabilities: Kubernetes gives added
	// capabilities to non-root containers only in the bounding set, never
	// effective, so a non-root sidecar could not use them.
	sc.RunAsUser = ptr.To[int64](0)
	sc.RunAsNonRoot = ptr.To(false)
	sc.Capabilities.Add = capabilities
	return sc
}

// chooseSecurity picks the pod's security mode from the requested one
// (cfg.SecurityMode) and what the pod allows. sameUIDOnly is set for
// namespaces enforcing Pod Security baseline or restricted, which refuse
// the privileged reader. A non-empty refusal means the pod cannot get a
// sidecar at all and says what to set.
func chooseSecurity(pod *corev1.Pod, cfg settings.Config, sameUIDOnly bool) (s Security, warnings []string, refusal string) {
	uid, gid, why, fix := sameUID(pod, cfg)
	source := settings.SecurityMode.Annotation()
	if _, set := pod.Annotations[source]; !set {
		source = "--default-" + settings.SecurityMode.Key
	}
	switch {
	case sameUIDOnly && why != "":
		return Security{}, nil, "this namespace enforces Pod Security baseline or restricted, which admits the sidecar only " +
			"with the app's own uid and gid (" + why + "); " + fix
	case sameUIDOnly && cfg.SecurityMode == settings.SecurityModePrivilegedReader:
		warnings = append(warnings, fmt.Sprintf("%s: %s is refused by this namespace's Pod Security level; using %s",
			source, settings.SecurityModePrivilegedReader, settings.SecurityModeSameUID))
	case cfg.SecurityMode == settings.SecurityModePrivilegedReader:
		return Security{Mode: settings.SecurityModePrivilegedReader}, nil, ""
	case why != "":
		if cfg.SecurityMode == settings.SecurityModeSameUID {
			warnings = append(warnings, fmt.Sprintf("%s: %s is not possible for this pod (%s); using %s",
				source, settings.SecurityModeSameUID, why, settings.SecurityModePrivilegedReader))
		}
		return Security{Mode: settings.SecurityModePrivilegedReader}, warnings, ""
	}
	return Security{Mode: settings.SecurityModeSameUID, UID: uid, GID: gid}, warnings, ""
}

// Remedies for a pod that cannot have a same-uid sidecar, for the warning
// in namespaces where nothing else is allowed.
const (
	fixIDs        = "set runAsUser and runAsGroup (non-zero) in the pod's securityContext"
	fixSameIDs    = "set the same runAsUser and runAsGroup for every watched container, or watch fewer with heapwatch.io/containers"
	fixPrivileges = "the sidecar cannot read a container with more privileges than its own: exclude it with heapwatch.io/containers"
	fixWatched    = "name containers of the pod in heapwatch.io/containers"
)

// sameUID returns the uid and gid every watched container runs with, or why
// the pod does not allow a same-uid sidecar and what would. Only the spec
// counts: the webhook cannot see an image's USER, and guessing would give a
// sidecar that cannot read the app.
func sameUID(pod *corev1.Pod, cfg settings.Config) (uid, gid int64, why, fix string) {
	first := ""
	for _, c := range pod.Spec.Containers {
		if c.Name == names.SidecarName || !cfg.Watches(c.Name) {
			continue
		}
		sc := c.SecurityContext
		if sc != nil && ptr.Deref(sc.Privileged, false) {
			return 0, 0, fmt.Sprintf("container %s is privileged", c.Name), fixPrivileges
		}
		if sc != nil && sc.Capabilities != nil && len(sc.Capabilities.Add) > 0 {
			return 0, 0, fmt.Sprintf("container %s adds capabilities %v", c.Name, sc.Capabilities.Add), fixPrivileges
		}
		u, g := runAs(pod, sc)
		switch {
		case u == nil:
			return 0, 0, fmt.Sprintf("container %s: no runAsUser", c.Name), fixIDs
		case g == nil:
			return 0, 0, fmt.Sprintf("container %s: no runAsGroup", c.Name), fixIDs
		case *u == 0:
			return 0, 0, fmt.Sprintf("container %s runs as root", c.Name), fixIDs
		case first == "":
			first, uid, gid = c.Name, *u, *g
		case *u != uid || *g != gid:
			return 0, 0, fmt.Sprintf("containers %s and %s run as %d:%d and %d:%d", first, c.Name, uid, gid, *u, *g), fixSameIDs
		}
	}
	if first == "" {
		return 0, 0, "no container of the pod is watched", fixWatched
	}
	return uid, gid, "", ""
}

// runAs returns the container's effective runAsUser and runAsGroup as the
// kubelet computes them: the container's own, else the pod's.
func runAs(pod *corev1.Pod, sc *corev1.SecurityContext) (uid, gid *int64) {
	if psc := pod.Spec.SecurityContext; psc != nil {
		uid, gid = psc.RunAsUser, psc.RunAsGroup
	}
	if sc != nil {
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = sc.RunAsGroup
		}
	}
	return uid, gid
}
