// Package webhook serves the heapwatch mutating admission webhook: it decodes
// each pod CREATE, lets package inject add the sidecar to a copy, and answers
// with the JSON patch between the two, computed by controller-runtime.
package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	sigsjson "sigs.k8s.io/json"

	"github.com/heapwatch/heapwatch/internal/webhook/inject"
)

// Paths the webhook is served at; the two entries of the
// MutatingWebhookConfiguration in deploy/ point here. The second entry
// selects namespaces enforcing Pod Security baseline or restricted: its path
// is how the handler learns that only a same-uid sidecar is admitted there,
// without reading the namespace from the API server.
const (
	Path            = "/mutate-pod"
	SameUIDOnlyPath = "/mutate-pod-same-uid-only"
)

var podKind = metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}

// Handler is the admission.Handler for pod CREATE.
type Handler struct {
	opts inject.Options
	log  *slog.Logger
}

// NewHandler returns a handler injecting with opts; opts must be valid.
func NewHandler(opts inject.Options, log *slog.Logger) *Handler {
	return &Handler{opts: opts, log: log}
}

// Handle answers one admission request. It never rejects a pod for its
// content: a pod that cannot be injected is allowed unchanged with a warning.
func (h *Handler) Handle(_ context.Context, req admission.Request) admission.Response {
	start := time.Now()
	resp, outcome, reason := h.handle(req)
	observe(outcome, reason, time.Since(start))
	return resp
}

func (h *Handler) handle(req admission.Request) (admission.Response, string, string) {
	// The configuration only sends pod CREATEs; anything else is a
	// misconfiguration, answered clearly rather than guessed at.
	if req.Kind != podKind || req.SubResource != "" {
		err := fmt.Errorf("heapwatch injects into v1 Pods only, got kind %s subresource %q", kindString(req.Kind), req.SubResource)
		h.log.Error("bad admission request", "uid", req.UID, "error", err)
		return admission.Errored(http.StatusBadRequest, err), outcomeError, reasonWrongKind
	}
	if req.Operation != admissionv1.Create {
		return admission.Allowed("heapwatch injects on CREATE only"), outcomeSkipped, reasonNotCreate
	}
	pod, err := decodePod(req.Object.Raw)
	if err != nil {
		h.log.Error("bad admission request", "uid", req.UID, "namespace", req.Namespace, "error", err)
		return admission.Errored(http.StatusBadRequest, err), outcomeError, reasonDecode
	}
	// Controllers create pods with generateName and sometimes without a
	// namespace in the object: the request has the truth.
	log := h.log.With("namespace", req.Namespace, "pod", podName(pod), "uid", req.UID, "dryRun", req.DryRun != nil && *req.DryRun)

	mutated := pod.DeepCopy()
	res := inject.Inject(mutated, h.opts)
	if !res.Injected {
		level := slog.LevelInfo
		if res.Reason == inject.ReasonAlreadyInjected {
			level = slog.LevelDebug // reinvocation: expected, not news
		}
		log.Log(context.Background(), level, "sidecar not injected", "reason", res.Reason)
		return admission.Allowed("").WithWarnings(res.Warnings...), outcomeSkipped, string(res.Reason)
	}
	before, err := json.Marshal(touched(pod, pod))
	if err != nil {
		return encodeError(log, err)
	}
	after, err := json.Marshal(touched(mutated, pod))
	if err != nil {
		return encodeError(log, err)
	}
	log.Info("sidecar injected", "securityMode", res.Mode, "warnings", res.Warnings)
	return admission.PatchResponseFromRaw(before, after).WithWarnings(res.Warnings...), outcomeInjected, reasonNone
}

// touchedPod is the part of a pod that injection may change, at the same
// JSON paths as in the pod: the labels and annotations, shareProcessNamespace, the env
// of existing containers, and what is appended to the container and volume
// lists. The library computes the patch between this part of the typed pod
// before and after injection, rather than between the request's raw JSON and
// the re-encoded pod: the patch then holds only the injection, never the
// removal of a field this build does not know (a newer API server's) nor a
// re-encoding of an untouched one, and the diff is a fraction of the pod
// (managedFields, probes, resources... are left out).
type touchedPod struct {
	Metadata struct {
		Labels      map[string]string `json:"labels,omitempty"`
		Annotations map[string]string `json:"annotations,omitempty"`
	} `json:"metadata"`
	Spec struct {
		ShareProcessNamespace *bool `json:"shareProcessNamespace,omitempty"`
		InitContainers        []any `json:"initContainers,omitempty"`
		Containers            []any `json:"containers,omitempty"`
		Volumes               []any `json:"volumes,omitempty"`
	} `json:"spec"`
}

// existingContainer is what injection may change in a container the pod
// already had: only its env (HEAPWATCH_CONTAINER_NAME).
type existingContainer struct {
	Name string          `json:"name"`
	Env  []corev1.EnvVar `json:"env,omitempty"`
}

// named is an existing init container or volume: injection never changes
// one, only appends after it.
type named struct {
	Name string `json:"name"`
}

// touched projects p; elements at indexes that orig already had are reduced
// to what injection may change in them, appended ones are kept whole.
func touched(p, orig *corev1.Pod) touchedPod {
	var t touchedPod
	t.Metadata.Labels = p.Labels
	t.Metadata.Annotations = p.Annotations
	t.Spec.ShareProcessNamespace = p.Spec.ShareProcessNamespace
	t.Spec.InitContainers = project(p.Spec.InitContainers, len(orig.Spec.InitContainers), func(c corev1.Container) any {
		return named{Name: c.Name}
	})
	t.Spec.Containers = project(p.Spec.Containers, len(orig.Spec.Containers), func(c corev1.Container) any {
		return existingContainer{Name: c.Name, Env: c.Env}
	})
	t.Spec.Volumes = project(p.Spec.Volumes, len(orig.Spec.Volumes), func(v corev1.Volume) any {
		return named{Name: v.Name}
	})
	return t
}

func project[T any](items []T, existing int, reduce func(T) any) []any {
	out := make([]any, len(items))
	for i, item := range items {
		if i < existing {
			out[i] = reduce(item)
		} else {
			out[i] = item
		}
	}
	return out
}

func encodeError(log *slog.Logger, err error) (admission.Response, string, string) {
	err = fmt.Errorf("encoding the pod: %w", err)
	log.Error("injection failed", "error", err)
	return admission.Errored(http.StatusInternalServerError, err), outcomeError, reasonEncode
}

// decodePod decodes the request's pod the way the API server's own JSON
// serializer does (case-sensitive field names, integers kept as integers).
// admission.Decoder would do the same after a first full pass over the JSON
// only to read apiVersion and kind, which the request already states; that
// pass was a third of the handler's time.
func decodePod(raw []byte) (*corev1.Pod, error) {
	pod := &corev1.Pod{}
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, pod); err != nil {
		return nil, fmt.Errorf("decoding the pod: %w", err)
	}
	// The API server always sends them; a different object is a caller's
	// mistake worth naming.
	if (pod.APIVersion != "" || pod.Kind != "") && (pod.APIVersion != "v1" || pod.Kind != "Pod") {
		return nil, fmt.Errorf("decoding the pod: the object is apiVersion %q kind %q", pod.APIVersion, pod.Kind)
	}
	return pod, nil
}

func podName(p *corev1.Pod) string {
	if p.Name != "" {
		return p.Name
	}
	return p.GenerateName + "*"
}

func kindString(k metav1.GroupVersionKind) string {
	if k.Group == "" {
		return k.Version + "/" + k.Kind
	}
	return k.Group + "/" + k.Version + "/" + k.Kind
}
