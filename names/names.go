// Package names holds the names heapwatch's binaries agree on: annotation
// and label keys, environment variable names, the sidecar's container and
// volume names, the spool directory. The webhook writes them into pods, the
// sidecar and the controller read them back; the package imports nothing,
// so depending on it costs a binary nothing.
package names

const (
	// AnnotationPrefix starts every heapwatch label and annotation.
	AnnotationPrefix = "heapwatch.io/"
	// EnvPrefix starts every sidecar environment variable derived from a
	// setting's key.
	EnvPrefix = "HEAPWATCH_"
)

// Pod labels and annotations the webhook sets or honours.
const (
	// InjectLabel on a namespace ("enabled") opts its pods in; on a pod
	// ("disabled") opts the pod out. The webhook configuration's selectors
	// match it, so the API server does not even call the webhook for pods
	// outside opted-in namespaces or for opted-out pods.
	InjectLabel = AnnotationPrefix + "inject"
	// InjectAnnotation set to "false" on a pod opts it out.
	InjectAnnotation = AnnotationPrefix + "inject"
	// StatusAnnotation records that the pod was injected; its presence makes
	// any later admission (reinvocation, a copied pod spec) a no-op.
	StatusAnnotation = AnnotationPrefix + "status"
	// StatusInjected is the value of StatusAnnotation and StatusLabel on
	// injected pods.
	StatusInjected = "injected"
	// StatusLabel (= StatusInjected) marks injected pods too, so that the
	// controller can watch only them with a label selector.
	StatusLabel = AnnotationPrefix + "status"
	// SecurityModeAnnotation records the security mode the webhook chose for
	// the pod's sidecar. The request is the setting heapwatch.io/security-mode;
	// this is the outcome.
	SecurityModeAnnotation = AnnotationPrefix + "applied-security-mode"
)

// The injected container and its volumes.
const (
	// SidecarName is the injected container's name. A pod that already has a
	// container of this name is never injected again.
	SidecarName = "heapwatch"
	// SpoolVolume is mounted at SpoolDir and holds captures until stored.
	SpoolVolume = "heapwatch-spool"
	// CapturesVolume is mounted at the directory of a file:// storage URL so
	// the sidecar can write there despite its read-only root filesystem.
	CapturesVolume = "heapwatch-captures"
	// SpoolDir is the sidecar's default spool directory, where the webhook
	// mounts the spool volume.
	SpoolDir = "/var/lib/heapwatch/spool"
)

// Environment variables the webhook sets and the sidecar reads, besides the
// settings' own HEAPWATCH_<KEY>.
const (
	// ContainerNameEnv is set by the webhook in every watched container so the
	// sidecar can name a process's container: inside the pod the sidecar sees
	// cgroup paths holding container IDs, never container names.
	ContainerNameEnv = "HEAPWATCH_CONTAINER_NAME"

	// EnvPodName, EnvPodNamespace, EnvPodUID and EnvNodeName carry the pod's
	// identity to the sidecar. The webhook sets them through the downward
	// API: at admission a generateName pod has no name (and sometimes no
	// namespace) yet, so they cannot be rendered as literals.
	EnvPodName      = "POD_NAME"
	EnvPodNamespace = "POD_NAMESPACE"
	EnvPodUID       = "POD_UID"
	EnvNodeName     = "NODE_NAME"

	// EnvGoMemLimit and EnvGoMaxProcs bound the sidecar's Go runtime; the
	// webhook derives them from the sidecar's own limits and the runtime
	// reads them itself.
	EnvGoMemLimit = "GOMEMLIMIT"
	EnvGoMaxProcs = "GOMAXPROCS"
)
