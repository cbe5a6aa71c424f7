package collect

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/heapwatch/heapwatch/internal/metrics"
)

// TestMetricsObserver: outcomes are counted under today's labels
// (no_endpoint stays no_pprof), detection latency is observed, and the
// events that are not capture outcomes are not counted.
func TestMetricsObserver(t *testing.T) {
	m := metrics.New()
	o := MetricsObserver{M: m}
	for _, ev := range []Event{
		{Outcome: Stored, Target: "app", Trigger: "threshold-75", DetectionLatency: 30 * time.Millisecond},
		{Outcome: Held, Target: "app", Trigger: "growth"},
		{Outcome: Final, Target: "app", Trigger: "growth"},
		{Outcome: NoEndpoint, Target: "quiet", Trigger: "predictive"},
		{Outcome: Coalesced, Target: "app", Trigger: "predictive"},
		{Outcome: Failed, Target: "app", Trigger: "predictive"},
		{Outcome: Missing, Target: "quiet"},
		{Outcome: Unmarked, Target: "app"},
	} {
		o.Observe(ev)
	}
	want := `
# HELP heapwatch_captures_total Captures by trigger kind and outcome (stored, held, final, no_pprof, failed, coalesced).
# TYPE heapwatch_captures_total counter
heapwatch_captures_total{container="app",outcome="coalesced",trigger="predictive"} 1
heapwatch_captures_total{container="app",outcome="failed",trigger="predictive"} 1
heapwatch_captures_total{container="app",outcome="final",trigger="growth"} 1
heapwatch_captures_total{container="app",outcome="held",trigger="growth"} 1
heapwatch_captures_total{container="app",outcome="stored",trigger="threshold-75"} 1
heapwatch_captures_total{container="quiet",outcome="no_pprof",trigger="predictive"} 1
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "heapwatch_captures_total"); err != nil {
		t.Error(err)
	}
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var observed uint64
	for _, mf := range mfs {
		if mf.GetName() == "heapwatch_detection_latency_seconds" {
			observed = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if observed != 1 {
		t.Errorf("%d detection latencies observed, want the stored capture's", observed)
	}
}
