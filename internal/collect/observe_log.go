package collect

import (
	"log/slog"
)

// LogObserver logs capture outcomes.
type LogObserver struct{ Log *slog.Logger }

// Observe logs ev at its level.
func (l LogObserver) Observe(ev Event) {
	log := l.Log.With("container", ev.Target)
	switch ev.Outcome {
	case Stored, Held:
		m := ev.Meta
		log.Info("captured", "id", m.ID, "trigger", m.Trigger, "reason", m.Reason, "held", ev.Outcome == Held,
			"pid", ev.Endpoint.PID, "port", ev.Endpoint.Port, "usage", m.Memory.UsageBytes, "limit", m.Memory.LimitBytes,
			"detectToFetch", m.CapturedAt.Sub(m.DetectedAt).String(), "took", m.CompletedAt.Sub(m.CapturedAt).String(),
			"bytes", m.TotalBytes())
	case Failed:
		switch {
		case ev.Meta != nil:
			log.Error("could not mark the last capture before the OOM kill as final", "id", ev.Meta.ID, "err", ev.Err)
		case ev.Endpoint.Addr != "":
			log.Error("capture failed", "trigger", ev.Trigger, "pid", ev.Endpoint.PID, "addr", ev.Endpoint.Addr, "err", ev.Err)
		default:
			log.Error("capture panicked", "panic", ev.Err.Error())
		}
	case Missing:
		log.Warn("no pprof endpoint found in container; captures will be skipped until one appears",
			"pids", ev.PIDs, "source", ev.Source)
	case Unmarked:
		log.Warn("container OOM-killed with no capture since the previous kill", "killedAt", ev.KilledAt)
	case Final:
		log.Info("OOM kill: last capture before it marked final", "id", ev.Meta.ID, "killedAt", ev.KilledAt,
			"leadTime", ev.KilledAt.Sub(ev.Meta.CapturedAt).String(), "wasHeld", ev.WasHeld)
	}
}
