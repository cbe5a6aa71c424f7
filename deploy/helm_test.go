package deploy

import (
	"flag"
	"io"
	"os"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/heapwatch/heapwatch/internal/webhook"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata/")

const chartDir = "helm/heapwatch"

func renderChart(t *testing.T, values map[string]any) []*unstructured.Unstructured {
	t.Helper()
	objs, err := RenderChart(chartDir, "heapwatch", "heapwatch-system", values)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %q rendered", kind, name)
	return nil
}

func webhookArgs(t *testing.T, objs []*unstructured.Unstructured) []string {
	t.Helper()
	containers, _, _ := unstructured.NestedSlice(find(t, objs, "Deployment", "heapwatch-webhook").Object,
		"spec", "template", "spec", "containers")
	args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
	return args
}

func TestChartGolden(t *testing.T) {
	var out strings.Builder
	for _, o := range renderChart(t, nil) {
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		out.WriteString("---\n" + string(b))
	}
	golden := "testdata/helm-default.yaml"
	if *updateGolden {
		if err := os.WriteFile(golden, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./deploy -update)", err)
	}
	if out.String() != string(want) {
		t.Errorf("rendered chart differs from %s (run go test ./deploy -update and review the diff)", golden)
	}
}

// The chart's arguments must be flags the webhook binary accepts and a
// configuration it considers valid: a typo would crash-loop every replica.
func TestChartArgsAreValidWebhookFlags(t *testing.T) {
	for name, values := range map[string]map[string]any{
		"defaults": nil,
		"tuned": {"sidecar": map[string]any{
			"native": false, "credentialsSecret": "heapwatch-s3", "storage": "s3://dumps/prod?region=eu-west-1",
			"defaults": map[string]any{"thresholds": "50,70,90", "interval": "50ms", "memory-limit": "96Mi"},
		}},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := webhook.DefaultConfig()
			fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			cfg.AddFlags(fs)
			fs.String("log-level", "", "")
			if err := fs.Parse(webhookArgs(t, renderChart(t, values))); err != nil {
				t.Fatalf("rendered args rejected by the webhook: %v", err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("rendered args give an invalid config: %v", err)
			}
			if name == "tuned" {
				d := cfg.Inject.Defaults
				if cfg.Inject.NativeSidecar || cfg.Inject.CredentialsSecret != "heapwatch-s3" ||
					d.Storage != "s3://dumps/prod?region=eu-west-1" || d.Interval.String() != "50ms" ||
					!slices.Equal(d.Thresholds, []float64{50, 70, 90}) || d.MemoryLimit != "96Mi" {
					t.Errorf("values not carried into the webhook config: %+v", cfg.Inject)
				}
			}
		})
	}
}

func TestChartValues(t *testing.T) {
	objs := renderChart(t, map[string]any{
		"replicaCount": 3,
		"image":        map[string]any{"digest": "sha256:0123"},
		"webhook":      map[string]any{"failurePolicy": "Fail", "timeoutSeconds": 5, "excludeNamespaces": []any{"kube-system", "monitoring"}},
	})
	dep := find(t, objs, "Deployment", "heapwatch-webhook")
	if n, _, _ := unstructured.NestedInt64(dep.Object, "spec", "replicas"); n != 3 {
		t.Errorf("replicas = %d, want 3", n)
	}
	containers, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	if img := containers[0].(map[string]any)["image"]; img != "ghcr.io/heapwatch/heapwatch-webhook@sha256:0123" {
		t.Errorf("image = %v, want the digest reference", img)
	}
	hooks, _, _ := unstructured.NestedSlice(find(t, objs, "MutatingWebhookConfiguration", "heapwatch").Object, "webhooks")
	if len(hooks) != 2 {
		t.Fatalf("%d webhooks, want 2", len(hooks))
	}
	for _, h := range hooks {
		hook := h.(map[string]any)
		if hook["failurePolicy"] != "Fail" || hook["timeoutSeconds"] != int64(5) {
			t.Errorf("%s: failurePolicy/timeout = %v/%v", hook["name"], hook["failurePolicy"], hook["timeoutSeconds"])
		}
		exprs, _, _ := unstructured.NestedSlice(hook, "namespaceSelector", "matchExpressions")
		got, _, _ := unstructured.NestedStringSlice(exprs[0].(map[string]any), "values")
		if want := []string{"kube-system", "monitoring", "heapwatch-system"}; !slices.Equal(got, want) {
			t.Errorf("%s: excluded namespaces = %v, want %v", hook["name"], got, want)
		}
	}

	single := renderChart(t, map[string]any{"replicaCount": 1})
	for _, o := range single {
		if o.GetKind() == "PodDisruptionBudget" {
			t.Error("a PodDisruptionBudget with one replica would block every node drain")
		}
	}
}

func TestChartRejectsBadValues(t *testing.T) {
	for name, tt := range map[string]struct {
		values map[string]any
		want   string
	}{
		"failure policy": {map[string]any{"webhook": map[string]any{"failurePolicy": "Sometimes"}}, `failurePolicy must be Ignore or Fail, not "Sometimes"`},
		"timeout":        {map[string]any{"webhook": map[string]any{"timeoutSeconds": 30}}, "timeoutSeconds must be between 1 and 5"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := RenderChart(chartDir, "heapwatch", "heapwatch-system", tt.values)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// Helm and kustomize users must get the same webhook: the selection, policy
// and TLS wiring of both renderings are compared field by field.
func TestChartMatchesKustomize(t *testing.T) {
	chart := renderChart(t, nil)
	kust, err := Render("kustomize/default")
	if err != nil {
		t.Fatal(err)
	}
	same := func(kind, name string, fields ...string) {
		t.Helper()
		a, _, _ := unstructured.NestedFieldNoCopy(find(t, chart, kind, name).Object, fields...)
		b, _, _ := unstructured.NestedFieldNoCopy(find(t, kust, kind, name).Object, fields...)
		// Compare as YAML: the two renderers type numbers differently.
		ya, _ := yaml.Marshal(a)
		yb, _ := yaml.Marshal(b)
		if a == nil || string(ya) != string(yb) {
			t.Errorf("%s %s .%s differs:\nhelm:\n%s\nkustomize:\n%s", kind, name, strings.Join(fields, "."), ya, yb)
		}
	}
	same("MutatingWebhookConfiguration", "heapwatch", "webhooks")
	same("MutatingWebhookConfiguration", "heapwatch", "metadata", "annotations")
	same("Certificate", "heapwatch-webhook", "spec")
	same("Certificate", "heapwatch-ca", "spec", "issuerRef")
	same("Issuer", "heapwatch-ca", "spec")
	same("Deployment", "heapwatch-webhook", "spec", "template", "spec", "securityContext")
	same("Deployment", "heapwatch-webhook", "spec", "template", "spec", "volumes")
	same("Service", "heapwatch-webhook", "spec", "ports")
	same("ServiceAccount", "heapwatch-webhook", "automountServiceAccountToken")
}
