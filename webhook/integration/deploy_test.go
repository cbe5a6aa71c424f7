package integration

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"

	"github.com/heapwatch/heapwatch/deploy"
)

// TestDeployManifestsApply applies every object of the kustomizations users
// install with server-side apply in dry-run mode: the real API server, with
// cert-manager's CRDs from the cert-manager module, validates them all.
func TestDeployManifestsApply(t *testing.T) {
	ctx := t.Context()
	cs := kubernetes.NewForConfigOrDie(restConfig)
	dyn := dynamic.NewForConfigOrDie(restConfig)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discovery.NewDiscoveryClientForConfigOrDie(restConfig)))
	// Dry-run objects in a namespace need the namespace to exist.
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "heapwatch-system"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for _, dir := range []string{"default", "fail-closed"} {
		t.Run(dir, func(t *testing.T) {
			objs, err := deploy.Render("../../deploy/kustomize/" + dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range objs {
				gvk := o.GroupVersionKind()
				m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
				if err != nil {
					t.Fatalf("%s: %v", gvk, err)
				}
				_, err = dyn.Resource(m.Resource).Namespace(o.GetNamespace()).Apply(ctx, o.GetName(), o,
					metav1.ApplyOptions{FieldManager: "heapwatch-test", Force: true, DryRun: []string{metav1.DryRunAll}})
				if err != nil {
					t.Errorf("%s %s/%s: %v", gvk.Kind, o.GetNamespace(), o.GetName(), err)
				}
			}
		})
	}
}
