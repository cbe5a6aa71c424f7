package deploy_test

import (
	"flag"
	"io"
	"slices"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/heapwatch/heapwatch/deploy"
	"github.com/heapwatch/heapwatch/internal/webhook"
	"github.com/heapwatch/heapwatch/names"
)

// rendered is the typed view of one kustomization's output.
type rendered struct {
	namespace  corev1.Namespace
	sa         corev1.ServiceAccount
	deployment appsv1.Deployment
	pdb        policyv1.PodDisruptionBudget
	service    corev1.Service
	config     admissionregistrationv1.MutatingWebhookConfiguration
	kinds      []string
}

func render(t *testing.T, dir string) rendered {
	t.Helper()
	objs, err := deploy.Render(dir)
	if err != nil {
		t.Fatal(err)
	}
	var r rendered
	into := map[string]any{
		"Namespace": &r.namespace, "ServiceAccount": &r.sa, "Deployment": &r.deployment,
		"PodDisruptionBudget": &r.pdb, "Service": &r.service, "MutatingWebhookConfiguration": &r.config,
	}
	for _, o := range objs {
		r.kinds = append(r.kinds, o.GetKind())
		if target, ok := into[o.GetKind()]; ok {
			decodeStrict(t, o, target)
		}
	}
	return r
}

// decodeStrict fails on fields the typed API does not know: a typo in the
// YAML would otherwise be dropped silently by the API server.
func decodeStrict(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, into, true); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
}

func TestWebhookConfiguration(t *testing.T) {
	for dir, policy := range map[string]admissionregistrationv1.FailurePolicyType{
		"kustomize/default":     admissionregistrationv1.Ignore,
		"kustomize/fail-closed": admissionregistrationv1.Fail,
	} {
		t.Run(dir, func(t *testing.T) {
			r := render(t, dir)
			if len(r.config.Webhooks) != 2 {
				t.Fatalf("%d webhooks, want 2 (privileged-capable, same-uid only)", len(r.config.Webhooks))
			}
			paths := []string{webhook.Path, webhook.SameUIDOnlyPath}
			selectors := make([]labels.Selector, 2)
			for i, wh := range r.config.Webhooks {
				if *wh.FailurePolicy != policy {
					t.Errorf("%s: failurePolicy = %s, want %s", wh.Name, *wh.FailurePolicy, policy)
				}
				if *wh.SideEffects != admissionregistrationv1.SideEffectClassNone || *wh.TimeoutSeconds > 5 ||
					*wh.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy || !slices.Equal(wh.AdmissionReviewVersions, []string{"v1"}) {
					t.Errorf("%s: sideEffects %s, timeoutSeconds %d, reinvocationPolicy %s, admissionReviewVersions %v",
						wh.Name, *wh.SideEffects, *wh.TimeoutSeconds, *wh.ReinvocationPolicy, wh.AdmissionReviewVersions)
				}
				if len(wh.Rules) != 1 || !slices.Equal(wh.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) ||
					!slices.Equal(wh.Rules[0].Resources, []string{"pods"}) || !slices.Equal(wh.Rules[0].APIGroups, []string{""}) {
					t.Errorf("%s: rules = %+v, want pod CREATE only", wh.Name, wh.Rules)
				}
				svc := wh.ClientConfig.Service
				if svc == nil || svc.Name != r.service.Name || svc.Namespace != r.service.Namespace || *svc.Path != paths[i] {
					t.Errorf("%s: clientConfig.service = %+v, want %s/%s path %s", wh.Name, svc, r.service.Namespace, r.service.Name, paths[i])
				}
				var err error
				if selectors[i], err = metav1.LabelSelectorAsSelector(wh.NamespaceSelector); err != nil {
					t.Fatal(err)
				}
				objSel, err := metav1.LabelSelectorAsSelector(wh.ObjectSelector)
				if err != nil {
					t.Fatal(err)
				}
				if objSel.Matches(labels.Set{names.InjectLabel: "disabled"}) || !objSel.Matches(labels.Set{"app": "x"}) {
					t.Errorf("%s: objectSelector must exclude exactly the pods labelled heapwatch.io/inject=disabled", wh.Name)
				}
			}
			const enforce = "pod-security.kubernetes.io/enforce"
			for _, tt := range []struct {
				labels map[string]string
				want   int // index of the one entry that serves the namespace, -1 for none
			}{
				{map[string]string{names.InjectLabel: "enabled", "kubernetes.io/metadata.name": "team-a"}, 0},
				{map[string]string{"kubernetes.io/metadata.name": "team-a"}, -1},
				{map[string]string{names.InjectLabel: "enabled", "kubernetes.io/metadata.name": "kube-system"}, -1},
				{map[string]string{names.InjectLabel: "enabled", "kubernetes.io/metadata.name": r.namespace.Name}, -1},
				{map[string]string{names.InjectLabel: "enabled", "kubernetes.io/metadata.name": "team-a", enforce: "privileged"}, 0},
				{map[string]string{names.InjectLabel: "enabled", "kubernetes.io/metadata.name": "team-a", enforce: "baseline"}, 1},
				{map[string]string{names.InjectLabel: "enabled", "kubernetes.io/metadata.name": "team-a", enforce: "restricted"}, 1},
				{map[string]string{"kubernetes.io/metadata.name": "team-a", enforce: "restricted"}, -1},
				{map[string]string{names.InjectLabel: "enabled", "kubernetes.io/metadata.name": "kube-system", enforce: "restricted"}, -1},
				{map[string]string{names.InjectLabel: "enabled", "kubernetes.io/metadata.name": r.namespace.Name, enforce: "restricted"}, -1},
			} {
				for i, sel := range selectors {
					if got := sel.Matches(labels.Set(tt.labels)); got != (i == tt.want) {
						t.Errorf("%s: namespaceSelector matches %v = %v, want %v", r.config.Webhooks[i].Name, tt.labels, got, i == tt.want)
					}
				}
			}
		})
	}
}

func TestDeployment(t *testing.T) {
	r := render(t, "kustomize/default")
	for _, k := range r.kinds {
		if k == "Role" || k == "ClusterRole" || k == "RoleBinding" || k == "ClusterRoleBinding" {
			t.Errorf("renders a %s: the webhook needs no API access", k)
		}
	}
	d := r.deployment
	spec := d.Spec.Template.Spec
	if *d.Spec.Replicas != 2 || spec.Affinity == nil || spec.Affinity.PodAntiAffinity == nil {
		t.Error("want 2 replicas with pod anti-affinity")
	}
	pdbSel, err := metav1.LabelSelectorAsSelector(r.pdb.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if !pdbSel.Matches(labels.Set(d.Spec.Template.Labels)) || r.pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Error("the PodDisruptionBudget must keep one webhook pod")
	}
	if !labels.SelectorFromSet(r.service.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Error("the Service does not select the webhook pods")
	}
	if *spec.AutomountServiceAccountToken || *r.sa.AutomountServiceAccountToken || spec.ServiceAccountName != r.sa.Name {
		t.Error("the service-account token must not be mounted")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if !*spec.SecurityContext.RunAsNonRoot || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
		spec.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("the webhook container is not hardened (non-root, no escalation, read-only root, no capabilities, RuntimeDefault seccomp)")
	}

	// The args are the binary's own flags and pass its validation.
	cfg := webhook.DefaultConfig()
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.AddFlags(fs)
	if err := fs.Parse(c.Args); err != nil {
		t.Fatalf("args %q: %v", c.Args, err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("args %q: %v", c.Args, err)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["webhook"] != int32(cfg.Port) {
		t.Errorf("container port webhook = %d, --webhook-port = %d", ports["webhook"], cfg.Port)
	}
	var svcTarget string
	for _, p := range r.service.Spec.Ports {
		if p.Port == *r.config.Webhooks[0].ClientConfig.Service.Port {
			svcTarget = p.TargetPort.StrVal
		}
	}
	if svcTarget != "webhook" {
		t.Errorf("the Service port the webhook configuration calls targets %q, want the webhook port", svcTarget)
	}
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Error("probes must use /readyz and /healthz")
	}
	mounted := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == cfg.CertDir && m.ReadOnly })
	if !mounted {
		t.Errorf("nothing mounted read-only at --cert-dir %s", cfg.CertDir)
	}
}
