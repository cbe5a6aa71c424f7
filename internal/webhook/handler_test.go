package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/heapwatch/heapwatch/internal/webhook/inject"
	"github.com/heapwatch/heapwatch/internal/webhook/internal/podgen"
	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/settings"
)

func testOptions() inject.Options {
	return inject.Options{Image: "ghcr.io/heapwatch/heapwatch-sidecar:v1", Defaults: settings.Defaults(), NativeSidecar: true, CredentialsSecret: "heapwatch-s3"}
}

func testHandler() *Handler {
	return NewHandler(testOptions(), slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// request wraps raw pod JSON in a CREATE request as the API server sends it.
func request(raw []byte, namespace string) admission.Request {
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID:       types.UID("0d6f6b3e-5b7c-4a58-9bfb-1c2d3e4f5a6b"),
		Kind:      podKind,
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: namespace,
		Operation: admissionv1.Create,
		Object:    runtime.RawExtension{Raw: raw},
	}}
}

func podJSON(t testing.TB, p *corev1.Pod) []byte {
	t.Helper()
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// applyPatch applies the response's patch to the original JSON the way the
// API server does and returns the resulting JSON.
func applyPatch(t testing.TB, original []byte, resp admission.Response) []byte {
	t.Helper()
	if len(resp.Patches) == 0 {
		return original
	}
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type = %v, want JSONPatch", resp.PatchType)
	}
	ops, err := json.Marshal(resp.Patches)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := jsonpatch.DecodePatch(ops)
	if err != nil {
		t.Fatalf("decoding the patch: %v", err)
	}
	out, err := patch.Apply(original)
	if err != nil {
		t.Fatalf("applying the patch: %v", err)
	}
	return out
}

func unmarshalPod(t testing.TB, raw []byte) *corev1.Pod {
	t.Helper()
	var p corev1.Pod
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

func findContainer(cs []corev1.Container, name string) *corev1.Container {
	i := slices.IndexFunc(cs, func(c corev1.Container) bool { return c.Name == name })
	if i < 0 {
		return nil
	}
	return &cs[i]
}

func TestHandlePatchesPod(t *testing.T) {
	tests := []struct {
		name      string
		pod       *corev1.Pod
		namespace string
		check     func(t *testing.T, got *corev1.Pod)
	}{
		{
			name:      "named pod",
			pod:       podgen.Pod("leaky", podgen.Namespace("team-a")),
			namespace: "team-a",
		},
		{
			name:      "generateName pod without namespace in the object",
			pod:       podgen.Pod("", podgen.GenerateName("leaky-5f7c9-")),
			namespace: "team-a",
			check: func(t *testing.T, got *corev1.Pod) {
				if got.Name != "" || got.GenerateName != "leaky-5f7c9-" {
					t.Errorf("name = %q, generateName = %q: must stay for the API server to fill in", got.Name, got.GenerateName)
				}
			},
		},
		{
			name:      "pod with init container and two app containers",
			pod:       podgen.Pod("leaky", podgen.InitContainer("migrate"), podgen.Containers("worker")),
			namespace: "team-a",
			check: func(t *testing.T, got *corev1.Pod) {
				if got := []string{got.Spec.InitContainers[0].Name, got.Spec.InitContainers[1].Name}; !slices.Equal(got, []string{"migrate", names.SidecarName}) {
					t.Errorf("init containers = %v", got)
				}
				if v := got.Spec.Containers[1].Env[len(got.Spec.Containers[1].Env)-1]; v.Name != names.ContainerNameEnv || v.Value != "worker" {
					t.Errorf("worker's last env = %+v", v)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := podJSON(t, tt.pod)
			resp := testHandler().Handle(context.Background(), request(raw, tt.namespace))
			if !resp.Allowed {
				t.Fatalf("not allowed: %+v", resp.Result)
			}
			got := unmarshalPod(t, applyPatch(t, raw, resp))
			sc := findContainer(got.Spec.InitContainers, names.SidecarName)
			if sc == nil {
				t.Fatal("no sidecar after patching")
			}
			if sc.EnvFrom[0].SecretRef.Name != "heapwatch-s3" || !*sc.EnvFrom[0].SecretRef.Optional {
				t.Errorf("credentials envFrom = %+v", sc.EnvFrom)
			}
			if !*got.Spec.ShareProcessNamespace || got.Annotations[names.StatusAnnotation] != names.StatusInjected {
				t.Error("shareProcessNamespace or status annotation missing")
			}
			if app := findContainer(got.Spec.Containers, "app"); app == nil || app.Env[0].Name != "LOG_LEVEL" {
				t.Error("the app container's own env was not kept")
			}
			if tt.check != nil {
				tt.check(t, got)
			}
			// A second admission of the result changes nothing.
			again := testHandler().Handle(context.Background(), request(applyPatch(t, raw, resp), tt.namespace))
			if !again.Allowed || len(again.Patches) != 0 || len(again.Warnings) != 0 {
				t.Errorf("second admission: allowed=%v patches=%v warnings=%q", again.Allowed, again.Patches, again.Warnings)
			}
		})
	}
}

// TestPatchEqualsInjection guards the touched-part diff: for every pod shape
// and option set, the patch applied to the request's JSON must give exactly
// the pod inject.Inject produces, so a change that Inject makes outside the
// diffed part cannot be lost silently.
func TestPatchEqualsInjection(t *testing.T) {
	apiServer, err := os.ReadFile("testdata/apiserver-pod.json")
	if err != nil {
		t.Fatal(err)
	}
	pods := map[string][]byte{
		"api server pod":     apiServer,
		"plain":              podJSON(t, podgen.Pod("p")),
		"init and volumes":   podJSON(t, podgen.Pod("p", podgen.InitContainer("migrate"), podgen.Volume("data"), podgen.Containers("worker"))),
		"annotated":          podJSON(t, podgen.Pod("p", podgen.Annotations("heapwatch.io/containers", "worker", "heapwatch.io/memory-request", "1Gi"), podgen.Containers("worker"))),
		"stale name env":     podJSON(t, podgen.Pod("p", podgen.Env("app", names.ContainerNameEnv, "old"))),
		"file storage":       podJSON(t, podgen.Pod("p", podgen.Annotations("heapwatch.io/storage", "file:///data/prof"))),
		"explicit share pns": podJSON(t, podgen.Pod("p", podgen.ShareProcessNamespace(true))),
		"same-uid":           podJSON(t, podgen.Pod("p", podgen.RunAs(1000, 1000), podgen.Restricted())),
	}
	for _, native := range []bool{true, false} {
		opts := testOptions()
		opts.NativeSidecar = native
		h := NewHandler(opts, slog.New(slog.NewTextHandler(io.Discard, nil)))
		for name, raw := range pods {
			t.Run(fmt.Sprintf("%s/native=%v", name, native), func(t *testing.T) {
				want := unmarshalPod(t, raw)
				if r := inject.Inject(want, opts); !r.Injected {
					t.Fatalf("not injected: %s", r.Reason)
				}
				got := unmarshalPod(t, applyPatch(t, raw, h.Handle(context.Background(), request(raw, "team-a"))))
				if !equality.Semantic.DeepEqual(got, want) {
					t.Errorf("patched pod differs from the injected pod:\n got %+v\nwant %+v", got.Spec, want.Spec)
				}
			})
		}
	}
}

// TestHandleRawShapes feeds pods whose JSON differs from what this build
// would encode: unknown fields from a newer API server, explicit nulls and
// empty objects. The patch must apply to that raw JSON and keep the rest.
func TestHandleRawShapes(t *testing.T) {
	tests := []struct{ name, raw string }{
		{"unknown fields", `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","futureMeta":1},"spec":{"futureField":{"x":1},
			"containers":[{"name":"app","image":"app:1","futureContainerField":true}]}}`},
		{"nulls", `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":null},"spec":{"shareProcessNamespace":null,
			"initContainers":null,"volumes":null,"containers":[{"name":"app","image":"app:1","env":null}]}}`},
		{"empty objects", `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":{}},"spec":{"initContainers":[],"volumes":[],
			"containers":[{"name":"app","image":"app:1","env":[],"resources":{}}]},"status":{}}`},
	}
	apiServer, err := os.ReadFile("testdata/apiserver-pod.json")
	if err != nil {
		t.Fatal(err)
	}
	tests = append(tests, struct{ name, raw string }{"as a real API server sends it", string(apiServer)})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := []byte(tt.raw)
			resp := testHandler().Handle(context.Background(), request(raw, "team-a"))
			patched := applyPatch(t, raw, resp)
			got := unmarshalPod(t, patched)
			if findContainer(got.Spec.InitContainers, names.SidecarName) == nil || !*got.Spec.ShareProcessNamespace ||
				got.Annotations[names.StatusAnnotation] != names.StatusInjected {
				t.Fatalf("not injected: %s", patched)
			}
			if app := findContainer(got.Spec.Containers, "app"); app == nil || app.Env[len(app.Env)-1].Name != names.ContainerNameEnv {
				t.Errorf("app env after patch: %s", patched)
			}
			var before, after map[string]any
			if err := json.Unmarshal(raw, &before); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(patched, &after); err != nil {
				t.Fatal(err)
			}
			// Every field the injection does not own is untouched.
			for _, path := range [][]string{{"metadata", "futureMeta"}, {"spec", "futureField"}, {"status"}} {
				if b, a := dig(before, path...), dig(after, path...); fmt.Sprint(a) != fmt.Sprint(b) {
					t.Errorf("%v changed from %v to %v", path, b, a)
				}
			}
			// Existing containers change only in env; existing init
			// containers and volumes not at all.
			for _, list := range []string{"containers", "initContainers", "volumes"} {
				was, _ := dig(before, "spec", list).([]any)
				now, _ := dig(after, "spec", list).([]any)
				for i := range was {
					w, n := was[i].(map[string]any), now[i].(map[string]any)
					if list == "containers" {
						w, n = maps.Clone(w), maps.Clone(n)
						delete(w, "env")
						delete(n, "env")
					}
					if !reflect.DeepEqual(w, n) {
						t.Errorf("spec.%s[%d] changed:\n was %v\n now %v", list, i, w, n)
					}
				}
			}
		})
	}
}

func dig(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func TestHandleSkipsWithoutPatch(t *testing.T) {
	tests := []struct {
		name        string
		pod         *corev1.Pod
		sameUIDOnly bool
		reason      inject.Reason
		warning     string
	}{
		{"opt-out annotation", podgen.Pod("p", podgen.Annotations(names.InjectAnnotation, "false")), false, inject.ReasonOptOut, "opted out"},
		{"hostPID", podgen.Pod("p", podgen.HostPID()), false, inject.ReasonHostPID, "hostPID"},
		{"windows", podgen.Pod("p", podgen.OS(corev1.Windows)), false, inject.ReasonWindows, "Windows"},
		{"already injected", podgen.Pod("p", podgen.Annotations(names.StatusAnnotation, names.StatusInjected)), false, inject.ReasonAlreadyInjected, ""},
		{"same-uid only, no runAsUser", podgen.Pod("p"), true, inject.ReasonNeedsSameUID, "set runAsUser and runAsGroup"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			counter := admissions.WithLabelValues(outcomeSkipped, string(tt.reason))
			before := testutil.ToFloat64(counter)
			opts := testOptions()
			opts.SameUIDOnly = tt.sameUIDOnly
			h := NewHandler(opts, slog.New(slog.NewTextHandler(io.Discard, nil)))
			resp := h.Handle(context.Background(), request(podJSON(t, tt.pod), "team-a"))
			if !resp.Allowed || len(resp.Patches) != 0 || resp.PatchType != nil {
				t.Fatalf("allowed=%v patches=%v, want allowed without patch", resp.Allowed, resp.Patches)
			}
			if tt.warning == "" && len(resp.Warnings) != 0 || tt.warning != "" && (len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], tt.warning)) {
				t.Errorf("warnings = %q, want one containing %q", resp.Warnings, tt.warning)
			}
			if got := testutil.ToFloat64(counter) - before; got != 1 {
				t.Errorf("metric skipped/%s rose by %v, want 1", tt.reason, got)
			}
		})
	}
}

func TestHandleBadRequests(t *testing.T) {
	pod := podJSON(t, podgen.Pod("p"))
	tests := []struct {
		name    string
		req     admission.Request
		allowed bool
		code    int32
		reason  string
		message string
	}{
		{"deployment", func() admission.Request {
			r := request(pod, "team-a")
			r.Kind = metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
			return r
		}(), false, http.StatusBadRequest, reasonWrongKind, "got kind apps/v1/Deployment"},
		{"pod subresource", func() admission.Request {
			r := request(pod, "team-a")
			r.SubResource = "ephemeralcontainers"
			return r
		}(), false, http.StatusBadRequest, reasonWrongKind, `subresource "ephemeralcontainers"`},
		{"update", func() admission.Request {
			r := request(pod, "team-a")
			r.Operation = admissionv1.Update
			return r
		}(), true, 0, reasonNotCreate, ""},
		{"object is not a pod", request([]byte(`{"apiVersion":"v1","kind":"Pod","spec":{"containers":"app"}}`), "team-a"), false, http.StatusBadRequest, reasonDecode, "decoding the pod"},
		{"truncated object", request(pod[:len(pod)/2], "team-a"), false, http.StatusBadRequest, reasonDecode, "decoding the pod"},
		{"no object", request(nil, "team-a"), false, http.StatusBadRequest, reasonDecode, "decoding the pod"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			outcome := outcomeError
			if tt.allowed {
				outcome = outcomeSkipped
			}
			counter := admissions.WithLabelValues(outcome, tt.reason)
			before := testutil.ToFloat64(counter)
			resp := testHandler().Handle(context.Background(), tt.req)
			if resp.Allowed != tt.allowed || len(resp.Patches) != 0 {
				t.Fatalf("allowed=%v patches=%d, want allowed=%v without patch", resp.Allowed, len(resp.Patches), tt.allowed)
			}
			if !tt.allowed && (resp.Result == nil || resp.Result.Code != tt.code || !strings.Contains(resp.Result.Message, tt.message)) {
				t.Errorf("result = %+v, want code %d with %q", resp.Result, tt.code, tt.message)
			}
			if got := testutil.ToFloat64(counter) - before; got != 1 {
				t.Errorf("metric %s/%s rose by %v, want 1", outcome, tt.reason, got)
			}
		})
	}
}

func TestHandleHugePod(t *testing.T) {
	// 3 MiB of annotations: the API server checks annotation size only
	// after mutating admission, so the webhook sees such pods.
	p := podgen.Pod("p", podgen.Annotations("blob", strings.Repeat("x", 3<<20), "heapwatch.io/interval", strings.Repeat("1", 1<<20)))
	raw := podJSON(t, p)
	resp := testHandler().Handle(context.Background(), request(raw, "team-a"))
	if !resp.Allowed || len(resp.Warnings) != 1 || len(resp.Warnings[0]) > 256 {
		t.Fatalf("allowed=%v warnings=%d (first %d bytes), want allowed with one short warning", resp.Allowed, len(resp.Warnings), len(resp.Warnings[0]))
	}
	got := unmarshalPod(t, applyPatch(t, raw, resp))
	if len(got.Annotations["blob"]) != 3<<20 || findContainer(got.Spec.InitContainers, names.SidecarName) == nil {
		t.Error("huge pod not injected intact")
	}
}
