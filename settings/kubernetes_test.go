package settings

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/heapwatch/heapwatch/internal/testkit"
)

// The settings parse quantities, byte counts and container names without
// apimachinery, so that the sidecar links none of it. These tests hold the
// local parsers to what apimachinery decided before (and decides at the
// webhook, for quantities).

var quantityInputs = []string{
	"0", "1", "20m", "500m", "0.5", ".5", "1.", "1.5Gi", "48Mi", "128Mi", "64Mi", "1Gi", "10Gi", "512Mi",
	"1k", "1K", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Ei", "8Ei", "9Ei", "1e3", "1E3", "1e-3", "2e9", "1e+3",
	"+5", "-5", "-0", "+0", "0.0", "00", "007", "1000m", "1500m", "1n", "1u", "0.0000000001", "1.0000000001",
	"", " ", "lots", "1 Mi", "1mi", "1KB", "1Ki1", "Mi", ".", "-", "1.2.3", "1e", "1e1.5", "0x10", "1_000",
	"9223372036854775807", "9223372036854775808", "99999999999999999999", "1e18", "1e19", "0e100", "1e-100",
}

// TestQuantityGrammarMatchesKubernetes: a quantity setting accepts exactly
// the positive quantities ParseQuantity accepts, so the webhook's parse of
// an accepted value cannot fail.
func TestQuantityGrammarMatchesKubernetes(t *testing.T) {
	for _, v := range quantityInputs {
		q, err := resource.ParseQuantity(v)
		want := err == nil && q.Sign() > 0
		c := Defaults()
		if got := CPULimit.Set(&c, v) == nil; got != want {
			t.Errorf("cpu-limit %q: accepted = %v, Kubernetes: %v (err %v)", v, got, want, err)
		}
	}
}

// TestBytesMatchKubernetes: byte settings accept every value, and render
// the text, the apimachinery-based parser did, so what an older webhook
// rendered into a sidecar's environment still parses the same. The local
// parser is exact where that one gave up (1.5Gi, 1Ei) and rejects a suffix
// without a number (Kubernetes read "Mi" as 0).
func TestBytesMatchKubernetes(t *testing.T) {
	for _, v := range quantityInputs {
		q, err := resource.ParseQuantity(v)
		if err != nil || !strings.ContainsAny(v, "0123456789") {
			continue
		}
		want, ok := q.AsInt64()
		if !ok || want < 0 {
			continue
		}
		if n, err := parseBytes(v, 0); err != nil || n != want {
			t.Errorf("parseBytes(%q) = %d, %v; Kubernetes: %d", v, n, err, want)
		}
	}
	for v, want := range map[string]int64{"1.5Gi": 3 << 29, "1000m": 1, "1Ei": 1 << 60, "0.0": 0, "1e-3": -1, "0.5": -1,
		"9223372036854775807": math.MaxInt64, "9223372036854775808": -1, "8Ei": -1, "-5": -1, "Mi": -1, ".": -1, "-": -1} {
		n, err := parseBytes(v, 0)
		if want < 0 && err == nil || want >= 0 && (err != nil || n != want) {
			t.Errorf("parseBytes(%q) = %d, %v; want %d (-1: an error)", v, n, err, want)
		}
	}
	values := []int64{0, 1, 999, 1000, 1001, 1023, 1024, 1025, 1536, 2000, 4096, 1 << 20, 16 << 20, 256 << 20,
		3 << 30, 10 << 30, 1<<40 + 1, 1 << 50, 1 << 60, 7 << 60, 1e9, 1e12, math.MaxInt64}
	for i := range int64(3000) {
		values = append(values, i, i*1000, i*1024, i*1024*1024+512)
	}
	for _, n := range values {
		want := resource.NewQuantity(n, resource.BinarySI).String()
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, Kubernetes: %q", n, got, want)
		}
		if back, err := parseBytes(formatBytes(n), 0); err != nil || back != n {
			t.Errorf("parseBytes(formatBytes(%d)) = %d, %v", n, back, err)
		}
	}
}

// TestContainerNamesMatchKubernetes: the containers setting rejects what
// validation.IsDNS1123Label rejects, with its message.
func TestContainerNamesMatchKubernetes(t *testing.T) {
	for _, v := range []string{"app", "a", "0", "a-b", "app-1", "Bad_Name", "-a", "a-", "a.b", "a..b", "A",
		strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("a.", 40), "ä", "a b"} {
		var want string
		if errs := validation.IsDNS1123Label(v); len(errs) > 0 {
			want = errs[0]
		}
		var got string
		if err := dnsLabel(v); err != nil {
			got = err.Error()
		}
		if got != want {
			t.Errorf("%q: %q, Kubernetes: %q", v, got, want)
		}
	}
}

// TestFromEnvReadsAnOlderWebhooksEnv: a sidecar upgraded before the webhook
// reads the environment the older webhook rendered (quantities for bytes,
// the sidecar's own resources as HEAPWATCH_CPU_REQUEST and the like, which
// it now ignores) without a problem and to the same values.
func TestFromEnvReadsAnOlderWebhooksEnv(t *testing.T) {
	old := map[string]string{
		"HEAPWATCH_THRESHOLDS": "60,75,90", "HEAPWATCH_THRESHOLD_BYTES": "1536Mi", "HEAPWATCH_INTERVAL": "100ms",
		"HEAPWATCH_COOLDOWN": "30s", "HEAPWATCH_MAX_PER_HOUR": "20", "HEAPWATCH_HORIZON": "2s",
		"HEAPWATCH_CONTAINERS": "", "HEAPWATCH_PORTS": "", "HEAPWATCH_PPROF_PATH": "/debug/pprof",
		"HEAPWATCH_PROFILES": "heap,goroutine", "HEAPWATCH_STORAGE": "file:///var/lib/heapwatch/captures",
		"HEAPWATCH_SPOOL_BYTES": "256Mi", "HEAPWATCH_SECURITY_MODE": "same-uid",
		"HEAPWATCH_CPU_REQUEST": "20m", "HEAPWATCH_CPU_LIMIT": "500m", "HEAPWATCH_MEMORY_REQUEST": "48Mi",
		"HEAPWATCH_MEMORY_LIMIT": "not-read-any-more", "GOMEMLIMIT": "114085068", "GOMAXPROCS": "1",
	}
	got, problems := Defaults().FromEnv(func(k string) (string, bool) { v, ok := old[k]; return v, ok })
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problems)
	}
	want := Defaults()
	want.ThresholdBytes = 1536 << 20
	want.SecurityMode = SecurityModeSameUID
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	// The new webhook renders the same text for what the sidecar reads, and
	// nothing for the webhook-only settings.
	for _, e := range got.Env() {
		if e.Value != old[e.Name] {
			t.Errorf("%s = %q, an older webhook rendered %q", e.Name, e.Value, old[e.Name])
		}
	}
	for _, s := range []Setting{CPURequest, CPULimit, MemoryRequest, MemoryLimit} {
		if !s.WebhookOnly || s.EnvVar() != "" {
			t.Errorf("%s: WebhookOnly %v, EnvVar %q; want a webhook-only setting without a variable", s.Key, s.WebhookOnly, s.EnvVar())
		}
	}
}

// TestLeaf keeps settings a contract both binaries can link: only the
// standard library and heapwatch's other leaves.
func TestLeaf(t *testing.T) {
	want := []string{"github.com/heapwatch/heapwatch/names", "github.com/heapwatch/heapwatch/settings", "github.com/heapwatch/heapwatch/store/storeurl"}
	got := testkit.Deps(t)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("settings depends on (-want +got):\n%s", diff)
	}
}
