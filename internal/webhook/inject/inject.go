// Package inject adds the heapwatch sidecar to a pod. It is pure: a typed pod
// in, the same pod changed in place and a verdict out; the admission handler
// turns the difference into a JSON patch.
package inject

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"

	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/settings"
)

const (
	// The spool emptyDir's sizeLimit is spool-bytes plus a quarter. The
	// sidecar keeps the spool under spool-bytes itself; the sizeLimit is a
	// backstop only, and reaching it evicts the whole pod, app included, so a
	// capture being written while the oldest is dropped must not reach it.
	spoolHeadroomDivisor = 4

	// maxWarningValue bounds how much of a bad annotation value a warning
	// quotes: the API server may truncate warnings over 256 characters, and
	// a value can be megabytes long.
	maxWarningValue = 80
	osLabel         = "kubernetes.io/os"
)

// Reason says why a pod was not injected.
type Reason string

// Skip reasons; they are also the values of the metric's reason label.
const (
	ReasonAlreadyInjected    Reason = "already-injected"
	ReasonOptOut             Reason = "opt-out"
	ReasonHostPID            Reason = "host-pid"
	ReasonNoShareProcessNS   Reason = "share-process-namespace-false"
	ReasonWindows            Reason = "windows"
	ReasonVolumeNameConflict Reason = "volume-name-conflict"
	// ReasonNeedsSameUID: the namespace enforces Pod Security baseline or
	// restricted, and the pod does not allow a same-uid sidecar.
	ReasonNeedsSameUID Reason = "pod-security-needs-same-uid"
)

// Reasons lists every skip reason, for metrics and docs.
var Reasons = []Reason{ReasonAlreadyInjected, ReasonOptOut, ReasonHostPID, ReasonNoShareProcessNS, ReasonWindows, ReasonVolumeNameConflict, ReasonNeedsSameUID}

// Options are the webhook-wide settings of the injection.
type Options struct {
	// Image is the sidecar image.
	Image string
	// Defaults are the settings used where a pod has no annotation.
	Defaults settings.Config
	// CredentialsSecret, if set, is wired into the sidecar with envFrom as an
	// optional Secret: a missing Secret never stops the pod from starting.
	CredentialsSecret string
	// NativeSidecar adds the sidecar as an init container with
	// restartPolicy Always (Kubernetes >= 1.29), so Jobs still complete;
	// false adds a regular container for older clusters.
	NativeSidecar bool
	// SameUIDOnly allows only the same-uid security mode: set by the handler
	// of the webhook entry for namespaces enforcing Pod Security baseline or
	// restricted (the entry's path says so; the webhook makes no API call to
	// look at namespaces).
	SameUIDOnly bool
}

// Validate checks the options once at start-up; messages name the flag.
func (o Options) Validate() error {
	var errs []error
	if o.Image == "" {
		errs = append(errs, errors.New("--sidecar-image is required"))
	}
	if o.CredentialsSecret != "" {
		if msgs := validation.IsDNS1123Subdomain(o.CredentialsSecret); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("--credentials-secret %q: not a Secret name: %s", o.CredentialsSecret, msgs[0]))
		}
	}
	if _, err := fileStorageDir(o.Defaults.Storage); err != nil {
		errs = append(errs, fmt.Errorf("--default-storage: %w", err))
	}
	for _, p := range requestLimitPairs {
		if exceeds(o.Defaults, p.request, p.limit) {
			errs = append(errs, fmt.Errorf("--default-%s exceeds --default-%s", p.request.Key, p.limit.Key))
		}
	}
	return errors.Join(errs...)
}

// Result is the verdict on one pod.
type Result struct {
	// Injected is true when the pod was changed.
	Injected bool
	// Reason says why the pod was left alone; empty when injected.
	Reason Reason
	// Mode is the sidecar's security mode when injected.
	Mode string
	// Warnings go back to the client as admission warnings.
	Warnings []string
}

// Inject adds the sidecar to pod, changing it in place, unless the pod must
// be skipped; a skipped pod is not changed at all.
func Inject(pod *corev1.Pod, o Options) Result {
	if reason, warning := skip(pod); reason != "" {
		r := Result{Reason: reason}
		if warning != "" {
			r.Warnings = []string{"heapwatch: sidecar not injected: " + warning}
		}
		return r
	}

	var warnings []string
	if v, ok := pod.Annotations[names.InjectAnnotation]; ok {
		// "false" was handled by skip; anything that is not a boolean is a
		// typo worth telling about, and injecting is what the namespace
		// asked for.
		if _, err := strconv.ParseBool(v); err != nil {
			warnings = append(warnings, fmt.Sprintf("%s: invalid value %q (want \"true\" or \"false\"); injecting", names.InjectAnnotation, shorten(v)))
		}
	}
	cfg, problems := o.Defaults.FromAnnotations(pod.Annotations)
	for _, p := range problems {
		p.Value = shorten(p.Value)
		if inner := errors.Unwrap(p.Err); inner != nil {
			// The parse error may quote the value too.
			p.Err = fmt.Errorf("%w", errors.New(shorten(inner.Error())))
		}
		warnings = append(warnings, p.Error())
	}
	cfg, more := sane(cfg, o.Defaults, pod)
	warnings = append(warnings, more...)
	sec, more, refusal := chooseSecurity(pod, cfg, o.SameUIDOnly)
	warnings = append(warnings, more...)
	if refusal != "" {
		return Result{Reason: ReasonNeedsSameUID, Warnings: append(warnings, "heapwatch: sidecar not injected: "+refusal)}
	}

	pod.Spec.ShareProcessNamespace = ptr.To(true)
	sidecar := Sidecar(cfg, o, sec)
	if o.NativeSidecar {
		// Last among the init containers: the pod's own init containers run
		// first, undisturbed, and the sidecar is up before the app starts.
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, sidecar)
	} else {
		pod.Spec.Containers = append(pod.Spec.Containers, sidecar)
	}
	pod.Spec.Volumes = append(pod.Spec.Volumes, volumes(cfg)...)
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		if c.Name != names.SidecarName && cfg.Watches(c.Name) {
			setEnv(c, names.ContainerNameEnv, c.Name)
		}
	}
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[names.StatusAnnotation] = names.StatusInjected
	pod.Annotations[names.SecurityModeAnnotation] = sec.Mode
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels[names.StatusLabel] = names.StatusInjected
	return Result{Injected: true, Mode: sec.Mode, Warnings: warnings}
}

// skip returns why pod must not be injected, and the warning for the client
// (empty when the skip is expected and silent).
func skip(pod *corev1.Pod) (Reason, string) {
	if _, ok := pod.Annotations[names.StatusAnnotation]; ok || hasContainer(pod, names.SidecarName) {
		return ReasonAlreadyInjected, ""
	}
	if v, ok := pod.Annotations[names.InjectAnnotation]; ok {
		if b, err := strconv.ParseBool(v); err == nil && !b {
			return ReasonOptOut, fmt.Sprintf("opted out by annotation %s=%q", names.InjectAnnotation, v)
		}
	}
	if pod.Labels[names.InjectLabel] == "disabled" {
		return ReasonOptOut, fmt.Sprintf("opted out by label %s=disabled", names.InjectLabel)
	}
	if pod.Spec.HostPID {
		return ReasonHostPID, "the pod uses hostPID, which cannot be combined with the shared process namespace the sidecar needs"
	}
	if spn := pod.Spec.ShareProcessNamespace; spn != nil && !*spn {
		return ReasonNoShareProcessNS, "the pod sets shareProcessNamespace: false, and the sidecar needs a shared process namespace"
	}
	if isWindows(pod) {
		return ReasonWindows, "the pod runs on Windows nodes; the sidecar reads Linux /proc and cgroup files"
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == names.SpoolVolume || v.Name == names.CapturesVolume {
			return ReasonVolumeNameConflict, fmt.Sprintf("the pod already has a volume named %q", v.Name)
		}
	}
	return "", ""
}

func hasContainer(pod *corev1.Pod, name string) bool {
	is := func(c corev1.Container) bool { return c.Name == name }
	return slices.ContainsFunc(pod.Spec.Containers, is) || slices.ContainsFunc(pod.Spec.InitContainers, is)
}

// isWindows reports whether every way the pod may be scheduled leads to a
// Windows node.
func isWindows(pod *corev1.Pod) bool {
	if pod.Spec.OS != nil && pod.Spec.OS.Name == corev1.Windows {
		return true
	}
	if pod.Spec.NodeSelector[osLabel] == string(corev1.Windows) {
		return true
	}
	a := pod.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return false
	}
	terms := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	// Terms are ORed: Windows-only if every term pins the OS to Windows.
	return len(terms) > 0 && !slices.ContainsFunc(terms, func(t corev1.NodeSelectorTerm) bool {
		return !slices.ContainsFunc(t.MatchExpressions, func(e corev1.NodeSelectorRequirement) bool {
			return e.Key == osLabel && e.Operator == corev1.NodeSelectorOpIn &&
				len(e.Values) > 0 && !slices.ContainsFunc(e.Values, func(v string) bool { return v != string(corev1.Windows) })
		})
	})
}

// sane repairs combinations of individually valid settings that would make
// the API server reject the pod, falling back to defaults with a warning:
// the app must start whatever the annotations say.
func sane(cfg, defaults settings.Config, pod *corev1.Pod) (settings.Config, []string) {
	var warnings []string
	if _, err := fileStorageDir(cfg.Storage); err != nil {
		warnings = append(warnings, fmt.Sprintf("%s: invalid value %q (%v); using %q",
			settings.Storage.Annotation(), shorten(cfg.Storage), err, defaults.Storage))
		cfg.Storage = defaults.Storage
	}
	for _, p := range requestLimitPairs {
		if exceeds(cfg, p.request, p.limit) {
			lim := p.limit.Format(&cfg)
			warnings = append(warnings, fmt.Sprintf("%s %s exceeds %s %s; using %s",
				p.request.Annotation(), p.request.Format(&cfg), p.limit.Annotation(), lim, lim))
			// The limit's value passed the same parser, so setting it cannot fail.
			_ = p.request.Set(&cfg, lim)
		}
	}
	var missing []string
	for _, name := range cfg.Containers {
		if !slices.ContainsFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == name }) {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		warnings = append(warnings, fmt.Sprintf("%s names no container of this pod: %s",
			settings.Containers.Annotation(), shorten(strings.Join(missing, ","))))
	}
	return cfg, warnings
}

// requestLimitPairs are the sidecar's resources whose request must not
// exceed their limit, or the API server rejects the pod.
var requestLimitPairs = []struct{ request, limit settings.Setting }{
	{settings.CPURequest, settings.CPULimit},
	{settings.MemoryRequest, settings.MemoryLimit},
}

// exceeds compares two quantity settings of cfg.
func exceeds(cfg settings.Config, request, limit settings.Setting) bool {
	req, lim := resource.MustParse(request.Format(&cfg)), resource.MustParse(limit.Format(&cfg))
	return req.Cmp(lim) > 0
}

// fileStorageDir returns the directory of a file:// storage URL ("" for
// other schemes). The directory becomes a volume mount, so it must be one the
// API server accepts and must not collide with the spool.
func fileStorageDir(storage string) (string, error) {
	u, err := url.Parse(storage)
	if err != nil || u.Scheme != "file" {
		return "", nil // the settings parser already accepted it; not a file URL
	}
	dir := path.Clean(u.Path)
	if dir != u.Path && dir+"/" != u.Path {
		return "", errors.New("file storage path must be clean (no //, . or ..)")
	}
	if dir == "/" || within(dir, names.SpoolDir) || within(names.SpoolDir, dir) {
		return "", fmt.Errorf("file storage directory %s overlaps / or the spool %s", dir, names.SpoolDir)
	}
	return dir, nil
}

// within reports whether p is dir or below it.
func within(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// setEnv sets name=value in c, replacing an existing definition so the
// container never has two.
func setEnv(c *corev1.Container, name, value string) {
	for i := range c.Env {
		if c.Env[i].Name == name {
			c.Env[i] = corev1.EnvVar{Name: name, Value: value}
			return
		}
	}
	c.Env = append(c.Env, corev1.EnvVar{Name: name, Value: value})
}

// shorten bounds a user-supplied value (or an error quoting one) in a
// warning, keeping its head and the tail, where parse errors explain
// themselves.
func shorten(v string) string {
	if len(v) <= maxWarningValue {
		return v
	}
	head, tail := maxWarningValue/4, len(v)-maxWarningValue*3/4
	for head > 0 && !utf8Start(v[head]) {
		head--
	}
	for tail < len(v) && !utf8Start(v[tail]) {
		tail++
	}
	return v[:head] + "..." + v[tail:]
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }
