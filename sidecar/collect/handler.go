package collect

import (
	"time"

	"github.com/heapwatch/heapwatch/sidecar/capture"
	"github.com/heapwatch/heapwatch/sidecar/watch"
)

// Handler adapts a Collector to the watcher's decisions.
type Handler struct{ C *Collector }

var _ watch.Handler = Handler{}

// Capture queues a capture for the event's container.
func (h Handler) Capture(ev watch.Event) {
	h.C.Enqueue(Request{
		Container: ev.Container.Name, PIDs: ev.Container.PIDs,
		Kind: ev.Kind, Reason: ev.Reason, Hold: ev.Hold, DetectedAt: ev.DetectedAt,
		Memory: capture.Memory{UsageBytes: ev.Sample.Usage, WorkingSetBytes: ev.Sample.WorkingSet, LimitBytes: ev.Sample.Limit},
		Stat:   ev.Stat,
	})
}

// OOMKilled marks the container's last capture before the kill as final.
func (h Handler) OOMKilled(c watch.Container, at time.Time, _ watch.Sample) {
	h.C.Killed(c.Name, at)
}

// Suppressed counts a trigger stopped by cooldown or a cap.
func (h Handler) Suppressed(c watch.Container, kind, why string) {
	h.C.o.Metrics.Suppressed(c.Name, kind, why)
}

// ObserveSample (watch.Options.OnSample) records a sample in the usage
// metrics and lets the collector find pprof endpoints ahead of a capture.
func (h Handler) ObserveSample(c watch.Container, s watch.Sample) {
	h.C.o.Metrics.Usage(c.Name, s.WorkingSet, s.Usage, s.Limit)
	h.C.Seen(c.Name, c.PIDs)
}

// ObserveUnwatched (watch.Options.OnUnwatched) publishes the containers
// the watcher does not watch.
func (h Handler) ObserveUnwatched(list []watch.Unwatched) {
	reasons := make(map[string]string, len(list))
	for _, u := range list {
		reasons[u.Container] = u.Reason
	}
	h.C.o.Metrics.SetUnwatched(reasons)
}
