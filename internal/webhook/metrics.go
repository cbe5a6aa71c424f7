package webhook

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/heapwatch/heapwatch/internal/webhook/inject"
)

// Outcomes and the reasons that are not inject.Reason values, as metric
// label values.
const (
	outcomeInjected = "injected"
	outcomeSkipped  = "skipped"
	outcomeError    = "error"

	reasonNone      = "none"
	reasonNotCreate = "not-create"
	reasonWrongKind = "wrong-kind"
	reasonDecode    = "decode"
	reasonEncode    = "encode"
)

var (
	admissions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "heapwatch_webhook_admissions_total",
		Help: "Pod admissions by outcome (injected, skipped, error) and reason.",
	}, []string{"outcome", "reason"})
	admissionSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "heapwatch_webhook_admission_duration_seconds",
		Help:    "Time to decide and compute the patch for one admission, excluding HTTP and TLS.",
		Buckets: []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .1},
	})
)

func init() {
	// controller-runtime's registry is what the manager's metrics endpoint
	// serves.
	ctrlmetrics.Registry.MustRegister(admissions, admissionSeconds)
	// Every series exists from the start, so rate() and alerts see zeros
	// instead of absent series.
	admissions.WithLabelValues(outcomeInjected, reasonNone)
	for _, r := range inject.Reasons {
		admissions.WithLabelValues(outcomeSkipped, string(r))
	}
	admissions.WithLabelValues(outcomeSkipped, reasonNotCreate)
	for _, r := range []string{reasonWrongKind, reasonDecode, reasonEncode} {
		admissions.WithLabelValues(outcomeError, r)
	}
}

func observe(outcome, reason string, d time.Duration) {
	admissions.WithLabelValues(outcome, reason).Inc()
	admissionSeconds.Observe(d.Seconds())
}
