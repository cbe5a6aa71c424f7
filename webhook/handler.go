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
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/heapwatch/heapwatch/webhook/inject"
)

// Path is where the webhook is served; the MutatingWebhookConfiguration in
// deploy/ points here.
const Path = "/mutate-pod"

var podKind = metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}

// Handler is the admission.Handler for pod CREATE.
type Handler struct {
	opts    inject.Options
	decoder admission.Decoder
	log     *slog.Logger
}

// NewHandler returns a handler injecting with opts; opts must be valid.
func NewHandler(opts inject.Options, log *slog.Logger) *Handler {
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme) // static registration; cannot fail
	return &Handler{opts: opts, decoder: admission.NewDecoder(scheme), log: log}
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
	pod := &corev1.Pod{}
	if err := h.decoder.Decode(req, pod); err != nil {
		err = fmt.Errorf("decoding the pod: %w", err)
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
	before, err := json.Marshal(touched(pod))
	if err != nil {
		return encodeError(log, err)
	}
	after, err := json.Marshal(touched(mutated))
	if err != nil {
		return encodeError(log, err)
	}
	log.Info("sidecar injected", "warnings", res.Warnings)
	return admission.PatchResponseFromRaw(before, after).WithWarnings(res.Warnings...), outcomeInjected, reasonNone
}

// touchedPod is the part of a pod that injection may change, at the same
// JSON paths as in the pod. The patch is computed between this part of the
// typed pod before and after injection, not from the request's raw JSON:
// both sides then went through the same typed encoding, so the patch holds
// only the injection, never a removal of a field this build does not know
// (a newer API server's) or a re-encoding of an untouched one, and the
// library diffs far less JSON.
type touchedPod struct {
	Metadata struct {
		Annotations map[string]string `json:"annotations,omitempty"`
	} `json:"metadata"`
	Spec struct {
		ShareProcessNamespace *bool              `json:"shareProcessNamespace,omitempty"`
		InitContainers        []corev1.Container `json:"initContainers,omitempty"`
		Containers            []corev1.Container `json:"containers,omitempty"`
		Volumes               []corev1.Volume    `json:"volumes,omitempty"`
	} `json:"spec"`
}

func touched(p *corev1.Pod) touchedPod {
	var t touchedPod
	t.Metadata.Annotations = p.Annotations
	t.Spec.ShareProcessNamespace = p.Spec.ShareProcessNamespace
	t.Spec.InitContainers = p.Spec.InitContainers
	t.Spec.Containers = p.Spec.Containers
	t.Spec.Volumes = p.Spec.Volumes
	return t
}

func encodeError(log *slog.Logger, err error) (admission.Response, string, string) {
	err = fmt.Errorf("encoding the pod: %w", err)
	log.Error("injection failed", "error", err)
	return admission.Errored(http.StatusInternalServerError, err), outcomeError, reasonEncode
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
