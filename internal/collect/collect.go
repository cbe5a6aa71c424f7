// Package collect performs captures: for each triggered target it asks its
// Source for the process(es) serving profiles, fetches the configured
// profiles into a spool entry with the capture's metadata, and on an OOM
// kill marks the last capture before the kill as final. What becomes of
// each capture is told to Observers (metrics, logs).
//
// Each container has one worker goroutine; requests that arrive while a
// capture runs are coalesced into one, so a burst of triggers costs one
// extra capture at most and the watch loop never waits.
package collect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/source"
	"github.com/heapwatch/heapwatch/internal/spool"
)

// Request is one capture to perform.
type Request struct {
	// Container names the worker; Target is the identity the capture's
	// keys and metadata take.
	Container string
	Target    capture.Target
	PIDs      []int
	Kind      string // trigger kind: threshold-75, predictive, growth, ...
	Reason    string
	// Hold keeps the capture locally until an OOM kill releases it.
	Hold       bool
	DetectedAt time.Time
	Memory     capture.Memory
	Stat       map[string]uint64
	Pressure   *capture.Pressure
}

// Options configure a Collector.
type Options struct {
	Profiles []string // heap first
	Source   source.Source
	Spool    *spool.Spool
	Log      *slog.Logger
	// Observers are told what becomes of every capture.
	Observers []Observer
}

// Collector performs captures. Its methods never block on a capture.
type Collector struct {
	o      Options
	ctx    context.Context // cancelled when Close's grace runs out
	cancel context.CancelFunc
	stop   chan struct{} // closed by Close: drain and exit
	wg     sync.WaitGroup

	mu      sync.Mutex
	workers map[string]*worker
	closed  bool
}

// New returns a Collector; Close stops it.
func New(o Options) *Collector {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Collector{o: o, ctx: ctx, cancel: cancel, stop: make(chan struct{}), workers: make(map[string]*worker)}
}

// worker serializes one container's captures and OOM handling.
type worker struct {
	c    *Collector
	name string
	log  *slog.Logger

	mu       sync.Mutex
	pending  *Request // coalesced captures waiting
	kills    []kill   // OOM kills waiting, handled after the pending capture
	discover []int    // PIDs to look for pprof endpoints in, ahead of a capture
	seenPIDs []int
	seenAt   time.Time
	noPprof  bool // the last look found no pprof endpoint
	wake     chan struct{}
	tl       timeline // the last minute of samples, for capture metadata

	// Owned by the worker goroutine:
	last     *stored // newest capture since the last kill
	held     *stored // newest held capture, not uploaded
	lastTime time.Time
	missing  bool // Missing told since an endpoint was last found
}

// rediscoverAfter is how often a target without an endpoint is asked for
// again from its samples (it may open its port late); what the Source
// remembers in between is its own.
const rediscoverAfter = 5 * time.Second

type kill struct{ at time.Time }

// stored is one committed capture.
type stored struct {
	entry string
	meta  *capture.Metadata
	held  bool
}

func (c *Collector) worker(name string) *worker {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	w, ok := c.workers[name]
	if !ok {
		w = &worker{c: c, name: name, log: c.o.Log.With("container", name), wake: make(chan struct{}, 1)}
		c.workers[name] = w
		c.wg.Add(1)
		go w.run()
	}
	return w
}

// Enqueue queues a capture; it returns at once.
func (c *Collector) Enqueue(r Request) {
	w := c.worker(r.Container)
	if w == nil {
		return
	}
	w.mu.Lock()
	var dropped *Request
	w.pending, dropped = coalesce(w.pending, &r)
	w.mu.Unlock()
	if dropped != nil {
		c.notify(Event{Outcome: Coalesced, Target: r.Container, Trigger: dropped.Kind, Reason: dropped.Reason})
	}
	w.poke()
}

// coalesce merges a new request into the queued one: one capture serves
// both, and it is shipped if either asked for that. The newer request wins,
// except that a held one never displaces a shipped one.
func coalesce(queued, r *Request) (keep, dropped *Request) {
	switch {
	case queued == nil:
		return r, nil
	case !queued.Hold && r.Hold:
		return queued, r
	default:
		return r, queued
	}
}

// Seen tells the collector a container's current processes, on every
// sample: when they change, or while none serves pprof, the worker looks
// for their pprof endpoints before any capture needs them. It is cheap when
// nothing changed.
func (c *Collector) Seen(container string, pids []int) {
	w := c.worker(container)
	if w == nil {
		return
	}
	now := time.Now()
	w.mu.Lock()
	due := !slices.Equal(w.seenPIDs, pids) || (w.noPprof && now.Sub(w.seenAt) > rediscoverAfter)
	if due {
		w.seenPIDs, w.seenAt = slices.Clone(pids), now
		w.discover = w.seenPIDs
	}
	w.mu.Unlock()
	if due {
		w.poke()
	}
}

// Observe records a sample in the container's timeline; trigger, when not
// empty, marks the sample a trigger fired on.
func (c *Collector) Observe(container string, p capture.Point) {
	if w := c.worker(container); w != nil {
		if p.Trigger != "" {
			w.tl.mark(p.Time, p.Trigger, p)
		} else {
			w.tl.add(p)
		}
	}
}

// Killed queues the handling of an OOM kill seen at at.
func (c *Collector) Killed(container string, at time.Time) {
	w := c.worker(container)
	if w == nil {
		return
	}
	w.mu.Lock()
	w.kills = append(w.kills, kill{at: at})
	w.mu.Unlock()
	w.poke()
}

func (w *worker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Close stops taking requests, lets queued captures finish for up to grace,
// then cancels what still runs.
func (c *Collector) Close(grace time.Duration) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	close(c.stop)
	c.mu.Unlock()
	done := make(chan struct{})
	go func() {
		c.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		c.o.Log.Warn("captures still running at shutdown; cancelling them", "grace", grace)
		c.cancel()
		<-done
	}
	c.cancel()
}

func (w *worker) run() {
	defer w.c.wg.Done()
	for {
		select {
		case <-w.c.stop:
			// Finish what is queued: a kill must still mark its capture.
			w.drain()
			return
		case <-w.wake:
			w.drain()
		}
	}
}

func (w *worker) drain() {
	for {
		w.mu.Lock()
		req, kills, discover := w.pending, w.kills, w.discover
		w.pending, w.kills, w.discover = nil, nil, nil
		w.mu.Unlock()
		if req == nil && len(kills) == 0 && discover == nil {
			return
		}
		if req != nil {
			w.capture(*req)
		}
		for _, k := range kills {
			w.oomKilled(k.at)
		}
		if discover != nil {
			w.found(discover, len(w.c.o.Source.Endpoints(w.c.ctx, discover, false)) > 0)
		}
	}
}

// capture runs one request against every process of the container that
// serves pprof (normally one).
func (w *worker) capture(r Request) {
	defer func() {
		// A bug in one capture must not stop the sidecar.
		if p := recover(); p != nil {
			w.c.notify(Event{Outcome: Failed, Target: r.Container, Trigger: r.Kind, Reason: r.Reason, Err: fmt.Errorf("%v", p)})
		}
	}()
	// A capture looks again at a process remembered without an endpoint:
	// it may have been seen before it opened its port (during exec, or
	// while the app starts), and a leak does not wait for rediscoverAfter.
	targets := w.c.o.Source.Endpoints(w.c.ctx, r.PIDs, true)
	w.found(r.PIDs, len(targets) > 0)
	if len(targets) == 0 {
		w.c.notify(Event{Outcome: NoEndpoint, Target: r.Container, Trigger: r.Kind, Reason: r.Reason, PIDs: r.PIDs})
		return
	}
	for i, ep := range targets {
		if latency, err := w.captureFrom(r, ep, i == 0); err != nil {
			w.c.notify(Event{Outcome: Failed, Target: r.Container, Trigger: r.Kind, Reason: r.Reason, Endpoint: ep, Err: err, DetectionLatency: latency})
			w.c.o.Source.Forget(ep)
		}
	}
}

// found records whether the target has an endpoint, and tells Missing once
// when it has none.
func (w *worker) found(pids []int, ok bool) {
	w.mu.Lock()
	w.noPprof = !ok
	w.mu.Unlock()
	if ok {
		w.missing = false
		return
	}
	if !w.missing {
		w.missing = true
		w.c.notify(Event{Outcome: Missing, Target: w.name, PIDs: pids, Source: w.c.o.Source})
	}
}

// captureFrom captures one process; first says whether it is the
// request's first fetch, the one detection latency is measured to, which
// it returns.
func (w *worker) captureFrom(r Request, ep source.Endpoint, first bool) (latency time.Duration, err error) {
	o := w.c.o
	if r.Target == nil {
		return 0, errors.New("capture request without a target identity")
	}
	sw, err := o.Spool.Begin()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	// Two captures of one container must not share a key.
	if !start.Truncate(time.Millisecond).After(w.lastTime) {
		start = w.lastTime.Add(time.Millisecond)
	}
	w.lastTime = start.Truncate(time.Millisecond)
	if first && !r.DetectedAt.IsZero() {
		latency = start.Sub(r.DetectedAt)
	}
	meta := &capture.Metadata{
		SchemaVersion: capture.SchemaVersion,
		PID:           ep.PID, Port: ep.Port,
		Trigger: r.Kind, Reason: r.Reason,
		DetectedAt: r.DetectedAt, CapturedAt: start,
		Memory: r.Memory, MemoryStat: r.Stat, Pressure: r.Pressure,
		Timeline: w.tl.snapshot(start),
	}
	r.Target.Describe(meta)
	name := meta.Name()
	meta.ID = name.ID()
	for _, profile := range o.Profiles {
		p := capture.Profile{Name: profile, Key: name.ProfileKey(profile)}
		n, err := w.fetch(sw, ep, profile)
		p.Bytes = n
		if err != nil {
			if profile == "heap" && !errors.Is(err, source.ErrTooLarge) {
				sw.Abort()
				return latency, fmt.Errorf("heap profile: %w", err)
			}
			p.Error = err.Error()
			w.log.Warn("profile incomplete", "profile", profile, "pid", ep.PID, "err", err)
		}
		meta.Profiles = append(meta.Profiles, p)
	}
	meta.CompletedAt = time.Now()
	id, err := sw.Commit(meta, r.Hold)
	if err != nil {
		return latency, err
	}
	s := &stored{entry: id, meta: meta, held: r.Hold}
	w.last = s
	outcome := Stored
	if r.Hold {
		outcome = Held
		if w.held != nil {
			o.Spool.Discard(w.held.entry) // superseded: keep only the newest
		}
		w.held = s
	}
	w.c.notify(Event{Outcome: outcome, Target: r.Container, Trigger: r.Kind, Reason: r.Reason, Meta: meta, Endpoint: ep, DetectionLatency: latency})
	return latency, nil
}

func (w *worker) fetch(sw *spool.Writer, ep source.Endpoint, profile string) (int64, error) {
	f, err := sw.Create(profile)
	if err != nil {
		return 0, err
	}
	n, err := w.c.o.Source.Fetch(w.c.ctx, ep, profile, f)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("spool: %w", cerr)
	}
	return n, err
}

// oomKilled marks the newest capture before the kill as final: a held one
// is released with its metadata amended; one already queued or stored gets
// its metadata re-stored (the upload order puts it after the first).
func (w *worker) oomKilled(at time.Time) {
	o := w.c.o
	last, held := w.last, w.held
	w.last, w.held = nil, nil
	if last == nil {
		w.c.notify(Event{Outcome: Unmarked, Target: w.name, KilledAt: at})
		return
	}
	mark := func(m *capture.Metadata) {
		m.Final = true
		killed := at.UTC()
		m.OOMKilledAt = &killed
		m.Timeline = w.tl.snapshot(at)
	}
	var err error
	if last.held {
		err = o.Spool.Release(last.entry, mark)
	} else {
		if held != nil {
			o.Spool.Discard(held.entry) // older than the final capture
		}
		meta := *last.meta
		mark(&meta)
		_, err = o.Spool.Amend(&meta)
	}
	ev := Event{Outcome: Final, Target: w.name, Trigger: last.meta.Trigger, Reason: last.meta.Reason, Meta: last.meta,
		KilledAt: at, WasHeld: last.held}
	if err != nil {
		ev.Outcome, ev.Err = Failed, err
	}
	w.c.notify(ev)
}
