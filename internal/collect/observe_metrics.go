package collect

import "github.com/heapwatch/heapwatch/internal/metrics"

// MetricsObserver counts capture outcomes and detection latency.
type MetricsObserver struct{ M *metrics.Metrics }

// outcomes maps an Outcome to its metrics label; Missing and Unmarked are
// not counted (the skipped captures are, as no_pprof).
var outcomes = map[Outcome]string{
	Stored: metrics.OutcomeStored, Held: metrics.OutcomeHeld, Final: metrics.OutcomeFinal,
	Failed: metrics.OutcomeFailed, Coalesced: metrics.OutcomeCoalesced, NoEndpoint: metrics.OutcomeNoPprof,
}

// Observe records ev.
func (o MetricsObserver) Observe(ev Event) {
	label, ok := outcomes[ev.Outcome]
	if !ok {
		return
	}
	if ev.DetectionLatency > 0 {
		o.M.DetectionLatency(ev.DetectionLatency)
	}
	o.M.Capture(ev.Target, ev.Trigger, label)
}
