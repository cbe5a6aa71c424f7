// Package collect performs captures: for each triggered container it finds
// the process(es) serving pprof, fetches the configured profiles into a
// spool entry with the capture's metadata, and on an OOM kill marks the last
// capture before the kill as final.
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
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/metrics"
	"github.com/heapwatch/heapwatch/internal/pprof"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/spool"
	"github.com/heapwatch/heapwatch/settings"
)

// Pod names the pod the captures come from.
type Pod struct {
	Namespace, Name, UID, Node string
}

// serviceAccountNamespace is where Kubernetes mounts the pod's namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// PodFromEnv reads POD_NAME, POD_NAMESPACE, POD_UID and NODE_NAME (the
// downward API). Outside Kubernetes the pod and node fall back to the
// hostname and the namespace to the service account's, else "default".
func PodFromEnv(lookup func(string) (string, bool)) Pod {
	get := func(k string) string {
		v, _ := lookup(k)
		return strings.TrimSpace(v)
	}
	p := Pod{Namespace: get(settings.EnvPodNamespace), Name: get(settings.EnvPodName), UID: get(settings.EnvPodUID), Node: get(settings.EnvNodeName)}
	host, _ := os.Hostname()
	if p.Name == "" {
		p.Name = host
	}
	if p.Node == "" {
		p.Node = host
	}
	if p.Namespace == "" {
		if b, err := os.ReadFile(serviceAccountNamespace); err == nil {
			p.Namespace = strings.TrimSpace(string(b))
		}
	}
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	return p
}

// Request is one capture to perform.
type Request struct {
	Container string
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
	Pod      Pod
	Profiles []string // heap first
	// Ports limits which listening ports are probed; empty probes all.
	Ports   []int
	Proc    procfs.FS
	Pprof   *pprof.Client
	Spool   *spool.Spool
	Log     *slog.Logger
	Metrics *metrics.Metrics
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
	procs    map[int]procEndpoint // pprof endpoint (or none) per process
	last     *stored              // newest capture since the last kill
	held     *stored              // newest held capture, not uploaded
	lastTime time.Time
	logged   bool // "no pprof endpoint" logged since one was last found
}

// procEndpoint is what discovery found for one process: listing a
// process's ports reads /proc/<pid>/net/tcp, which takes tens of
// milliseconds in a busy network namespace, so it is done ahead of
// captures and remembered.
type procEndpoint struct {
	start uint64 // the process's start time: a reused PID is another process
	ep    pprof.Endpoint
	ok    bool
	at    time.Time
}

// Discovery timing: a process without a pprof endpoint is looked at again
// after rediscoverAfter (it may open its port late).
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
		w = &worker{c: c, name: name, log: c.o.Log.With("container", name), wake: make(chan struct{}, 1),
			procs: make(map[int]procEndpoint)}
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
		c.o.Metrics.Capture(r.Container, dropped.Kind, metrics.OutcomeCoalesced)
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
	c.o.Metrics.OOMKill(container)
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
			w.found(discover, len(w.endpoints(discover, false)) > 0)
		}
	}
}

// capture runs one request against every process of the container that
// serves pprof (normally one).
func (w *worker) capture(r Request) {
	defer func() {
		// A bug in one capture must not stop the sidecar.
		if p := recover(); p != nil {
			w.log.Error("capture panicked", "panic", fmt.Sprint(p))
			w.c.o.Metrics.Capture(r.Container, r.Kind, metrics.OutcomeFailed)
		}
	}()
	// A capture looks again at a process remembered without pprof: it may
	// have been seen before it opened its port (during exec, or while the
	// app starts), and a leak does not wait for rediscoverAfter.
	targets := w.endpoints(r.PIDs, true)
	w.found(r.PIDs, len(targets) > 0)
	if len(targets) == 0 {
		w.c.o.Metrics.Capture(r.Container, r.Kind, metrics.OutcomeNoPprof)
		return
	}
	for i, ep := range targets {
		if err := w.captureFrom(r, ep, i == 0); err != nil {
			w.c.o.Metrics.Capture(r.Container, r.Kind, metrics.OutcomeFailed)
			w.log.Error("capture failed", "trigger", r.Kind, "pid", ep.PID, "addr", ep.Addr, "err", err)
			w.c.o.Pprof.Forget(ep)
			delete(w.procs, ep.PID)
		}
	}
}

// found records whether the container has a pprof endpoint, and logs once
// when it has none.
func (w *worker) found(pids []int, ok bool) {
	w.mu.Lock()
	w.noPprof = !ok
	w.mu.Unlock()
	if ok {
		w.logged = false
		return
	}
	if !w.logged {
		w.logged = true
		w.log.Warn("no pprof endpoint found in container; captures will be skipped until one appears",
			"pids", pids, "path", w.c.o.Pprof.Path(), "ports", w.c.o.Ports)
	}
}

// endpoints returns, per process, one listening port that serves pprof,
// from what discovery remembered when the process is the same one; recheck
// looks again at processes remembered without one.
func (w *worker) endpoints(pids []int, recheck bool) []pprof.Endpoint {
	for pid := range w.procs {
		if !slices.Contains(pids, pid) {
			delete(w.procs, pid)
		}
	}
	var out []pprof.Endpoint
	for _, pid := range pids {
		if ep, ok := w.endpoint(pid, recheck); ok {
			out = append(out, ep)
		}
	}
	return out
}

func (w *worker) endpoint(pid int, recheck bool) (pprof.Endpoint, bool) {
	p := w.c.o.Proc.Proc(pid)
	st, err := p.Stat()
	if err != nil {
		delete(w.procs, pid)
		return pprof.Endpoint{}, false // exited
	}
	now := time.Now()
	if pe, ok := w.procs[pid]; ok && pe.start == st.StartTime && (pe.ok || !recheck && now.Sub(pe.at) < rediscoverAfter) {
		return pe.ep, pe.ok
	}
	pe := procEndpoint{start: st.StartTime, at: now}
	ls, err := p.ListeningPorts()
	if err != nil && !procfs.IsNotExist(err) {
		w.log.Warn("cannot list listening ports", "pid", pid, "err", err)
	}
	var eps []pprof.Endpoint
	for _, l := range ls {
		if len(w.c.o.Ports) > 0 && !slices.Contains(w.c.o.Ports, int(l.Port)) {
			continue
		}
		eps = append(eps, pprof.Endpoint{PID: pid, StartTime: st.StartTime, Addr: l.DialAddr(), Port: int(l.Port)})
	}
	pe.ep, pe.ok = w.c.o.Pprof.Find(w.c.ctx, eps)
	if pe.ok {
		w.log.Info("pprof endpoint found", "pid", pid, "addr", pe.ep.Addr, "path", w.c.o.Pprof.Path())
	}
	w.procs[pid] = pe
	return pe.ep, pe.ok
}

// captureFrom captures one process; first says whether it is the
// request's first fetch, the one detection latency is measured to.
func (w *worker) captureFrom(r Request, ep pprof.Endpoint, first bool) error {
	o := w.c.o
	sw, err := o.Spool.Begin()
	if err != nil {
		return err
	}
	start := time.Now()
	// Two captures of one container must not share a key.
	if !start.Truncate(time.Millisecond).After(w.lastTime) {
		start = w.lastTime.Add(time.Millisecond)
	}
	w.lastTime = start.Truncate(time.Millisecond)
	if first && !r.DetectedAt.IsZero() {
		o.Metrics.DetectionLatency(start.Sub(r.DetectedAt))
	}
	meta := &capture.Metadata{
		SchemaVersion: capture.SchemaVersion,
		Namespace:     o.Pod.Namespace, Pod: o.Pod.Name, PodUID: o.Pod.UID, Node: o.Pod.Node,
		Container: r.Container, PID: ep.PID, Port: ep.Port,
		Trigger: r.Kind, Reason: r.Reason,
		DetectedAt: r.DetectedAt, CapturedAt: start,
		Memory: r.Memory, MemoryStat: r.Stat, Pressure: r.Pressure,
		Timeline: w.tl.snapshot(start),
	}
	name := meta.Name()
	meta.ID = name.ID()
	for _, profile := range o.Profiles {
		p := capture.Profile{Name: profile, Key: name.ProfileKey(profile)}
		n, err := w.fetch(sw, ep, profile)
		p.Bytes = n
		if err != nil {
			if profile == "heap" && !errors.Is(err, pprof.ErrTooLarge) {
				sw.Abort()
				return fmt.Errorf("heap profile: %w", err)
			}
			p.Error = err.Error()
			w.log.Warn("profile incomplete", "profile", profile, "pid", ep.PID, "err", err)
		}
		meta.Profiles = append(meta.Profiles, p)
	}
	meta.CompletedAt = time.Now()
	id, err := sw.Commit(meta, r.Hold)
	if err != nil {
		return err
	}
	s := &stored{entry: id, meta: meta, held: r.Hold}
	w.last = s
	outcome := metrics.OutcomeStored
	if r.Hold {
		outcome = metrics.OutcomeHeld
		if w.held != nil {
			o.Spool.Discard(w.held.entry) // superseded: keep only the newest
		}
		w.held = s
	}
	o.Metrics.Capture(r.Container, r.Kind, outcome)
	w.log.Info("captured", "id", meta.ID, "trigger", r.Kind, "reason", r.Reason, "held", r.Hold,
		"pid", ep.PID, "port", ep.Port, "usage", r.Memory.UsageBytes, "limit", r.Memory.LimitBytes,
		"detectToFetch", start.Sub(r.DetectedAt).String(), "took", meta.CompletedAt.Sub(start).String(),
		"bytes", meta.TotalBytes())
	return nil
}

func (w *worker) fetch(sw *spool.Writer, ep pprof.Endpoint, profile string) (int64, error) {
	f, err := sw.Create(profile)
	if err != nil {
		return 0, err
	}
	n, err := w.c.o.Pprof.Fetch(w.c.ctx, ep.Addr, profile, f)
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
		w.log.Warn("container OOM-killed with no capture since the previous kill", "killedAt", at)
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
	if err != nil {
		o.Metrics.Capture(w.name, last.meta.Trigger, metrics.OutcomeFailed)
		w.log.Error("could not mark the last capture before the OOM kill as final", "id", last.meta.ID, "err", err)
		return
	}
	o.Metrics.Capture(w.name, last.meta.Trigger, metrics.OutcomeFinal)
	w.log.Info("OOM kill: last capture before it marked final", "id", last.meta.ID, "killedAt", at,
		"leadTime", at.Sub(last.meta.CapturedAt).String(), "wasHeld", last.held)
}
