package integration

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"

	"github.com/heapwatch/heapwatch/deploy"
	"github.com/heapwatch/heapwatch/internal/webhook"
)

// TestDeployManifestsApply applies every object of the kustomizations and the
// Helm chart users install with server-side apply in dry-run mode: the real
// API server, with cert-manager's CRDs from the cert-manager module,
// validates them all.
func TestDeployManifestsApply(t *testing.T) {
	ctx := t.Context()
	cs := kubernetes.NewForConfigOrDie(restConfig)
	dyn := dynamic.NewForConfigOrDie(restConfig)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discovery.NewDiscoveryClientForConfigOrDie(restConfig)))
	// Dry-run objects in a namespace need the namespace to exist.
	for _, ns := range []string{"heapwatch-system", "heapwatch-agent"} {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	// What users install: both kustomizations, and the Helm chart with its
	// defaults and with every value group changed.
	renders := map[string]func() ([]*unstructured.Unstructured, error){
		"kustomize/default": func() ([]*unstructured.Unstructured, error) {
			return deploy.Render("../../../deploy/kustomize/default")
		},
		"kustomize/fail-closed": func() ([]*unstructured.Unstructured, error) {
			return deploy.Render("../../../deploy/kustomize/fail-closed")
		},
		"kustomize/with-controller": func() ([]*unstructured.Unstructured, error) {
			return deploy.Render("../../../deploy/kustomize/with-controller")
		},
		"kustomize/with-agent": func() ([]*unstructured.Unstructured, error) {
			return deploy.Render("../../../deploy/kustomize/with-agent")
		},
		"helm/defaults": func() ([]*unstructured.Unstructured, error) {
			return deploy.RenderChart("../../../deploy/helm/heapwatch", "heapwatch", "heapwatch-system", nil)
		},
		"helm/tuned": func() ([]*unstructured.Unstructured, error) {
			return deploy.RenderChart("../../../deploy/helm/heapwatch", "prod", "heapwatch-system", map[string]any{
				"replicaCount": 3,
				"image":        map[string]any{"digest": "sha256:" + strings.Repeat("ab", 32)},
				"sidecar": map[string]any{"native": false, "credentialsSecret": "heapwatch-s3",
					"storage": "s3://captures/prod?region=eu-west-1", "defaults": map[string]any{"interval": "50ms"}},
				"webhook":      map[string]any{"failurePolicy": "Fail", "timeoutSeconds": 5},
				"resources":    map[string]any{"limits": map[string]any{"memory": "256Mi"}},
				"nodeSelector": map[string]any{"kubernetes.io/os": "linux"},
				"tolerations":  []any{map[string]any{"key": "dedicated", "operator": "Exists"}},
				"controller":   map[string]any{"enabled": true, "namespace": "shop", "credentialsSecret": "heapwatch-controller-s3"},
				// The PrometheusRule needs the Prometheus Operator's CRDs,
				// which this API server does not have.
				"agent": map[string]any{"enabled": true, "socketGroup": 1001, "flags": map[string]any{"interval": "5s"},
					"daemons":    []any{map[string]any{"name": "envoy", "exe": "envoy"}},
					"monitoring": map[string]any{"dashboard": true}},
			})
		},
	}
	for name, render := range renders {
		t.Run(name, func(t *testing.T) {
			objs, err := render()
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) < 8 {
				t.Fatalf("rendered only %d objects", len(objs))
			}
			// The controller is opt-in: rendered exactly where it is asked for.
			wantController := name == "kustomize/with-controller" || name == "helm/tuned"
			hasController := false
			for _, o := range objs {
				hasController = hasController || (o.GetKind() == "Deployment" && strings.HasSuffix(o.GetName(), "heapwatch-controller"))
			}
			if hasController != wantController {
				t.Errorf("controller Deployment rendered = %v, want %v", hasController, wantController)
			}
			// So is the node agent.
			wantAgent := name == "kustomize/with-agent" || name == "helm/tuned"
			hasAgent := slices.ContainsFunc(objs, func(o *unstructured.Unstructured) bool {
				return o.GetKind() == "DaemonSet" && strings.HasSuffix(o.GetName(), "heapwatch-agent")
			})
			if hasAgent != wantAgent {
				t.Errorf("agent DaemonSet rendered = %v, want %v", hasAgent, wantAgent)
			}
			for _, o := range objs {
				gvk := o.GroupVersionKind()
				m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
				if err != nil {
					t.Fatalf("%s: %v", gvk, err)
				}
				applied, err := dyn.Resource(m.Resource).Namespace(o.GetNamespace()).Apply(ctx, o.GetName(), o,
					metav1.ApplyOptions{FieldManager: "heapwatch-test", Force: true, DryRun: []string{metav1.DryRunAll}})
				if err != nil {
					t.Errorf("%s %s/%s: %v", gvk.Kind, o.GetNamespace(), o.GetName(), err)
					continue
				}
				if gvk.Kind == "MutatingWebhookConfiguration" {
					checkEntries(t, applied)
				}
			}
		})
	}
}

// checkEntries asserts the configuration as the API server accepted it has
// both entries: the privileged-capable one and the same-uid-only one.
func checkEntries(t *testing.T, cfg *unstructured.Unstructured) {
	t.Helper()
	hooks, _, _ := unstructured.NestedSlice(cfg.Object, "webhooks")
	var paths []string
	for _, h := range hooks {
		p, _, _ := unstructured.NestedString(h.(map[string]any), "clientConfig", "service", "path")
		paths = append(paths, p)
	}
	if want := []string{webhook.Path, webhook.SameUIDOnlyPath}; !slices.Equal(paths, want) {
		t.Errorf("applied webhook paths %v, want %v", paths, want)
	}
}
