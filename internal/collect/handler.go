package collect

import (
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/metrics"
	"github.com/heapwatch/heapwatch/internal/watch"
)

// Handler adapts a Collector to the watcher's decisions; what the watcher
// sees beside captures (usage, kills, suppressed triggers, unwatched
// containers) goes to Metrics.
type Handler struct {
	C       *Collector
	Metrics *metrics.Metrics
}

var _ watch.Handler = Handler{}

// Capture queues a capture for the event's container.
func (h Handler) Capture(ev watch.Event) {
	h.C.Observe(ev.Container.Name, point(ev.Sample, ev.Kind))
	h.C.Enqueue(Request{
		Container: ev.Container.Name, Target: ev.Container.Target, PIDs: ev.Container.PIDs,
		Kind: ev.Kind, Reason: ev.Reason, Hold: ev.Hold, DetectedAt: ev.DetectedAt,
		Memory: capture.Memory{UsageBytes: ev.Sample.Usage, WorkingSetBytes: ev.Sample.WorkingSet, LimitBytes: ev.Sample.Limit},
		Stat:   ev.Stat, Pressure: pressure(ev.Pressure),
	})
}

// pressure copies the cgroup's PSI reading into the capture contract.
func pressure(p *cgroup.Pressure) *capture.Pressure {
	if p == nil {
		return nil
	}
	return &capture.Pressure{SomeAvg10: p.Some.Avg10, FullAvg10: p.Full.Avg10,
		SomeTotalMicros: p.Some.TotalMicros, FullTotalMicros: p.Full.TotalMicros}
}

// OOMKilled marks the container's last capture before the kill as final.
func (h Handler) OOMKilled(c watch.Container, at time.Time, _ watch.Sample) {
	h.Metrics.OOMKill(c.Name)
	h.C.Killed(c.Name, at)
}

// Suppressed counts a trigger stopped by cooldown or a cap.
func (h Handler) Suppressed(c watch.Container, kind, why string) {
	h.Metrics.Suppressed(c.Name, kind, why)
}

// ObserveSample (watch.Options.OnSample) records a sample in the usage
// metrics and lets the collector find pprof endpoints ahead of a capture.
func (h Handler) ObserveSample(c watch.Container, s watch.Sample) {
	h.Metrics.Usage(c.Name, s.WorkingSet, s.Usage, s.Limit)
	h.C.Seen(c.Name, c.PIDs)
	h.C.Observe(c.Name, point(s, ""))
}

func point(s watch.Sample, trigger string) capture.Point {
	return capture.Point{Time: s.Time, UsageBytes: s.Usage, WorkingSetBytes: s.WorkingSet, LimitBytes: s.Limit, Trigger: trigger}
}

// ObserveUnwatched (watch.Options.OnUnwatched) publishes the containers
// the watcher does not watch.
func (h Handler) ObserveUnwatched(list []watch.Unwatched) {
	reasons := make(map[string]string, len(list))
	for _, u := range list {
		reasons[u.Container] = u.Reason
	}
	h.Metrics.SetUnwatched(reasons)
}
