package collect

import (
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/source"
)

// Outcome is what became of a capture request, or of the capture an OOM
// kill marks final.
type Outcome string

// Outcomes an Observer is told.
const (
	Stored    Outcome = "stored"    // committed to the spool for upload
	Held      Outcome = "held"      // kept locally until an OOM kill
	Final     Outcome = "final"     // the last capture before an OOM kill, marked final
	Failed    Outcome = "failed"    // fetch, spool or marking final failed
	Coalesced Outcome = "coalesced" // merged into a capture already queued
	// NoEndpoint: the target had no endpoint serving profiles; the
	// capture was skipped.
	NoEndpoint Outcome = "no_endpoint"
	// Missing: the target was found without an endpoint, after having
	// one or at its first look; said once until one appears.
	Missing Outcome = "missing"
	// Unmarked: an OOM kill came with no capture since the previous one.
	Unmarked Outcome = "unmarked"
)

// Event is one thing that happened to a target's captures.
type Event struct {
	Outcome Outcome
	// Target is the worker's name (the container's).
	Target string
	// Trigger and Reason are the request's, or the final capture's.
	Trigger, Reason string
	// Meta is the capture's metadata: Stored, Held, Final, and Failed
	// when marking final failed.
	Meta     *capture.Metadata
	Endpoint source.Endpoint // Stored, Held, Failed on a fetch
	PIDs     []int           // Missing
	Err      error           // Failed
	// DetectionLatency is from detection to the first fetch of the
	// request (Stored, Held); 0 when unknown or not the first fetch.
	DetectionLatency time.Duration
	// KilledAt is when the kill was seen (Final, Unmarked).
	KilledAt time.Time
	// WasHeld: the final capture was held until the kill (Final).
	WasHeld bool
	// Source says where profiles are looked for (Missing).
	Source source.Source
}

// Observer is told every Event, from the target's worker: it must return
// quickly. Metrics and logs subscribe; so can an Event reporter.
type Observer interface {
	Observe(Event)
}

func (c *Collector) notify(ev Event) {
	for _, o := range c.o.Observers {
		o.Observe(ev)
	}
}
