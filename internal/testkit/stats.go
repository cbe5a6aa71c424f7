package testkit

import (
	"slices"
	"time"
)

// Percentile is the p-th percentile (nearest rank) of ds, which must not be
// empty: the benchmarks' latency summaries.
func Percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Sorted(slices.Values(ds))
	return s[max(0, min(len(s)-1, (len(s)*p+99)/100-1))]
}

// Millis is d in milliseconds, for b.ReportMetric.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
