package integration

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"

	"github.com/heapwatch/heapwatch/deploy"
)

// TestAgentApplied applies the node agent's objects of the kustomize
// component for real, then asks the API server what they allow: the
// agent's ServiceAccount may get nodes/proxy (the kubelet's pprof) and
// nothing else, and the agent's pod is admitted by Pod Security in its
// privileged namespace and refused in a restricted one.
func TestAgentApplied(t *testing.T) {
	ctx := t.Context()
	cs := kubernetes.NewForConfigOrDie(restConfig)
	dyn := dynamic.NewForConfigOrDie(restConfig)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discovery.NewDiscoveryClientForConfigOrDie(restConfig)))
	objs, err := deploy.Render("../../../deploy/kustomize/with-agent")
	if err != nil {
		t.Fatal(err)
	}
	var ds *unstructured.Unstructured
	var sa string
	for _, o := range objs {
		if o.GetNamespace() != "heapwatch-agent" && !strings.HasSuffix(o.GetName(), "heapwatch-agent") {
			continue // the webhook's objects
		}
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %v", gvk, err)
		}
		if _, err := dyn.Resource(m.Resource).Namespace(o.GetNamespace()).Apply(ctx, o.GetName(), o,
			metav1.ApplyOptions{FieldManager: "heapwatch-test", Force: true}); err != nil {
			t.Fatalf("apply %s %s/%s: %v", gvk.Kind, o.GetNamespace(), o.GetName(), err)
		}
		switch gvk.Kind {
		case "DaemonSet":
			ds = o
		case "ServiceAccount":
			sa = "system:serviceaccount:" + o.GetNamespace() + ":" + o.GetName()
		}
	}
	if ds == nil || sa == "" {
		t.Fatalf("DaemonSet %v, ServiceAccount %q: the agent was not rendered", ds != nil, sa)
	}

	for _, tt := range []struct {
		attrs authorizationv1.ResourceAttributes
		want  bool
	}{
		{authorizationv1.ResourceAttributes{Verb: "get", Resource: "nodes", Subresource: "proxy", Name: "node-a"}, true},
		{authorizationv1.ResourceAttributes{Verb: "create", Resource: "nodes", Subresource: "proxy", Name: "node-a"}, false},
		{authorizationv1.ResourceAttributes{Verb: "get", Resource: "nodes", Name: "node-a"}, false},
		{authorizationv1.ResourceAttributes{Verb: "list", Resource: "pods"}, false},
		{authorizationv1.ResourceAttributes{Verb: "get", Resource: "secrets", Namespace: "heapwatch-agent"}, false},
		{authorizationv1.ResourceAttributes{Verb: "get", Resource: "configmaps", Namespace: "heapwatch-agent"}, false},
	} {
		r, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: sa, Groups: []string{"system:serviceaccounts"}, ResourceAttributes: &tt.attrs},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != tt.want {
			t.Errorf("%s %s/%s: allowed %v, want %v (%s)", tt.attrs.Verb, tt.attrs.Resource, tt.attrs.Subresource, r.Status.Allowed, tt.want, r.Status.Reason)
		}
	}

	// The DaemonSet's pod, as its controller would create it.
	var typed appsv1.DaemonSet
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(ds.Object, &typed); err != nil {
		t.Fatal(err)
	}
	pod := corev1.Pod{ObjectMeta: typed.Spec.Template.ObjectMeta, Spec: typed.Spec.Template.Spec}
	pod.Name = "heapwatch-agent-test"
	pod.Spec.NodeName = "node-a"
	restricted := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "agent-restricted",
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, restricted, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for ns, admitted := range map[string]bool{"heapwatch-agent": true, "agent-restricted": false} {
		p := pod.DeepCopy()
		p.Namespace = ns
		_, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		switch {
		case admitted && err != nil:
			t.Errorf("the agent's pod in %s: %v", ns, err)
		case !admitted && (!apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "hostPID")):
			t.Errorf("the agent's pod in the restricted namespace %s: %v, want Forbidden by Pod Security (hostPID)", ns, err)
		}
	}
}
