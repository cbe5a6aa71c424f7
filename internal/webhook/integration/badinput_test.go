package integration

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/heapwatch/heapwatch/internal/webhook"
	"github.com/heapwatch/heapwatch/internal/webhook/internal/podgen"
)

func review(t *testing.T, kind metav1.GroupVersionKind, object any) []byte {
	t.Helper()
	raw, err := json.Marshal(object)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "6c0f0c8e-1e0b-4d4a-8f3e-2b1f4a1c9d70", Kind: kind, Namespace: "team-a",
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// TestBadInputOverHTTPS sends what no API server would straight to the
// running HTTPS server: every request gets a clear AdmissionReview answer,
// and the server neither panics nor stops being ready.
func TestBadInputOverHTTPS(t *testing.T) {
	pod := metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}
	valid := review(t, pod, podgen.Pod("p"))
	huge := review(t, pod, podgen.Pod("p", podgen.Annotations("blob", strings.Repeat("x", 3<<20))))
	tests := []struct {
		name        string
		contentType string
		body        []byte
		allowed     bool
		code        int32  // status code in the AdmissionResponse; 0 for none
		message     string // substring of the status message
	}{
		{"empty body", "application/json", nil, false, http.StatusBadRequest, "request body is empty"},
		{"malformed JSON", "application/json", []byte(`{"apiVersion":`), false, http.StatusBadRequest, "json"},
		{"truncated review", "application/json", valid[:len(valid)/2], false, http.StatusBadRequest, ""},
		{"JSON array", "application/json", []byte(`[]`), false, http.StatusBadRequest, ""},
		{"review without request", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), false, http.StatusBadRequest, "v1 Pods only"},
		{"wrong content type", "text/plain", valid, false, http.StatusBadRequest, "contentType=text/plain"},
		{"a Deployment", "application/json", review(t, metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}, map[string]any{"spec": map[string]any{}}), false, http.StatusBadRequest, "got kind apps/v1/Deployment"},
		{"a Secret as Pod", "application/json", review(t, pod, map[string]any{"kind": "Secret", "apiVersion": "v1", "data": 1}), false, http.StatusBadRequest, "decoding the pod"},
		{"pod of 3 MiB", "application/json", huge, true, 0, ""},
		{"body over 7 MiB", "application/json", append(bytes.Repeat([]byte(" "), 7<<20), valid...), false, http.StatusRequestEntityTooLarge, "too large"},
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	httpClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	panicsBefore := main.metric(t, "controller_runtime_webhook_panics_total")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := httpClient.Post(main.url()+webhook.Path, tt.contentType, bytes.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			var ar admissionv1.AdmissionReview
			if err := json.Unmarshal(body, &ar); err != nil || ar.Response == nil {
				t.Fatalf("HTTP %d, body %.200q: not an AdmissionReview (%v)", resp.StatusCode, body, err)
			}
			r := ar.Response
			if r.Allowed != tt.allowed {
				t.Fatalf("allowed = %v, want %v (result %+v)", r.Allowed, tt.allowed, r.Result)
			}
			if tt.code == 0 {
				if len(r.Patch) == 0 {
					t.Error("allowed without a patch")
				}
				return
			}
			if r.Result == nil || r.Result.Code != tt.code || !strings.Contains(r.Result.Message, tt.message) {
				t.Errorf("result = %+v, want code %d with %q", r.Result, tt.code, tt.message)
			}
		})
	}
	if n := main.metric(t, "controller_runtime_webhook_panics_total") - panicsBefore; n != 0 {
		t.Errorf("%v panics recovered while serving bad input", n)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", main.probePort))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("readyz after bad input: HTTP %d", resp.StatusCode)
	}
}

// TestMetricsEndpoint checks the series operators alert on are served by the
// manager's metrics endpoint and move with admissions.
func TestMetricsEndpoint(t *testing.T) {
	const injected = `heapwatch_webhook_admissions_total{outcome="injected",reason="none"}`
	const hostPID = `heapwatch_webhook_admissions_total{outcome="skipped",reason="host-pid"}`
	const latency = `heapwatch_webhook_admission_duration_seconds_count`
	before := map[string]float64{}
	for _, s := range []string{injected, hostPID, latency} {
		before[s] = main.metric(t, s)
	}
	cs, _ := client(t)
	ns := enabled(t, cs)
	for _, p := range []struct {
		name    string
		hostPID bool
	}{{"m1", false}, {"m2", true}} {
		opts := []podgen.Option{}
		if p.hostPID {
			opts = append(opts, podgen.HostPID())
		}
		if _, err := cs.CoreV1().Pods(ns).Create(t.Context(), podgen.Pod(p.name, opts...), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for s, want := range map[string]float64{injected: 1, hostPID: 1, latency: 2} {
		if got := main.metric(t, s) - before[s]; got != want {
			t.Errorf("%s rose by %v, want %v", s, got, want)
		}
	}
}
