// Command agent is heapwatch's node agent: it watches the memory of host
// daemons (containerd, the kubelet, CRI-O, dockerd and any configured
// process) and captures heap profiles from their pprof endpoints as they
// grow, through the sidecar's pipeline (watch → trigger → collect → spool
// → store) with a daemon as the target (capture.Daemon, found by
// watch.HostDaemons, fetched by pprof.URL). It runs as a DaemonSet with
// hostPID, configured by flags and a --config file (see config.go). It
// never writes to a daemon or its cgroup: cgroups are only read, and v1
// notifications (registered by a write) are not used.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/heapwatch/heapwatch/internal/collect"
	"github.com/heapwatch/heapwatch/internal/metrics"
	"github.com/heapwatch/heapwatch/internal/nodemem"
	"github.com/heapwatch/heapwatch/internal/pprof"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/ship"
	"github.com/heapwatch/heapwatch/internal/spool"
	"github.com/heapwatch/heapwatch/internal/trigger"
	"github.com/heapwatch/heapwatch/internal/watch"
	"github.com/heapwatch/heapwatch/store"
)

var version = "dev"

func main() {
	c, err := parseFlags(os.Args[1:], os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(2)
	}
	if c.ShowVersion {
		fmt.Println(version)
		return
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: c.LogLevel}))
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, log, c); err != nil {
		log.Error("agent stopped", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, c config) error {
	proc, err := procfs.NewFS(c.ProcRoot)
	if err != nil {
		return err
	}
	acctReader, err := nodemem.NewReader(c.ProcRoot, c.CgroupRoot, c.PodsCgroup)
	if err != nil {
		return err
	}
	mem, err := acctReader.Meminfo()
	if err != nil {
		return err
	}
	m := metrics.New()
	acct := nodemem.NewCollector(acctReader, log)
	m.Registry.MustRegister(acct)
	if c.MetricsAddr != "" {
		go func() {
			if err := m.Serve(ctx, c.MetricsAddr, log); err != nil {
				log.Error("metrics endpoint unavailable; capturing continues without it", "err", err)
			}
		}()
	}
	sp, err := spool.Open(c.SpoolDir, spool.Options{MaxBytes: c.SpoolBytes, Log: log, Metrics: m})
	if err != nil {
		return err
	}
	d, err := newDaemons(c, proc, sp, m, acct, log)
	if err != nil {
		return err
	}
	specs := make([]watch.DaemonSpec, len(c.Daemons))
	names := make([]string, len(c.Daemons))
	for i, dc := range c.Daemons {
		specs[i], names[i] = dc.DaemonSpec, dc.Name
	}
	log.Info("heapwatch agent starting", "version", version, "node", c.NodeName, "daemons", names,
		"storage", store.RedactURL(c.Storage), "interval", c.Interval, "growthStep", c.GrowthStep,
		"thresholdBytes", c.ThresholdBytes, "horizon", c.Horizon, "memTotal", mem.MemTotal)

	shipper := ship.Start(sp, ship.Options{Storage: c.Storage, Log: log})
	w := watch.New(watch.Options{
		Trigger:  triggerOptions(c),
		Discover: watch.NewHostDaemons(proc, c.NodeName, specs),
		OnSample: d.sample, OnGone: d.gone, NodeMemory: mem.MemTotal, ReadOnly: true, CgroupRoot: c.CgroupRoot, NoProbe: true, Rescan: c.Rescan,
	}, proc, d, log)
	if err := w.Run(ctx); err != nil && ctx.Err() == nil {
		log.Error("watching stopped; captures already taken are still uploaded", "err", err)
		<-ctx.Done()
	}

	shipper.Shutdown(c.Grace, d.close)
	return nil
}

// triggerOptions: daemons usually have no limit, so what fires is the
// absolute threshold, the growth steps from a baseline, and the prediction
// against node memory (the watcher's NodeMemory stands in for the limit);
// the rate is taken over a minute, as daemons leak slowly.
func triggerOptions(c config) trigger.Options {
	return trigger.Options{
		Absolute:    c.ThresholdBytes,
		StepRatio:   c.GrowthStep.Ratio,
		StepBytes:   c.GrowthStep.Bytes,
		Horizon:     c.Horizon,
		Window:      time.Minute,
		Cooldown:    c.Cooldown,
		MaxPerHour:  c.MaxPerHour,
		Interval:    c.Interval,
		MinInterval: max(c.Interval/10, 10*time.Millisecond),
	}
}

// daemons routes the watcher's decisions to each daemon's collector: one
// collector per daemon, as each has its own profile source (a socket, a
// URL), sharing the spool and the observers.
type daemons struct {
	log      *slog.Logger
	m        *metrics.Metrics
	acct     *nodemem.Collector
	handlers map[string]collect.Handler // by daemon name; no entry: memory only

	mu        sync.Mutex
	baselines map[string]*baseline // by daemon name, until one is stored
}

// baseline is a daemon's baseline capture not stored yet. A daemon found
// just after it (re)started may not listen on its pprof endpoint yet, and
// its series is diffed against its first capture: so until a baseline is
// stored, a baseline skipped for want of an endpoint is asked again every
// baselineRetry (for up to baselineFor), and any other trigger's capture
// after such a miss is taken as the baseline, which keeps it first.
type baseline struct {
	ev       watch.Event
	since    time.Time
	missed   bool // the last request for it found no endpoint
	retrying bool // a retry is scheduled
}

const baselineFor = 2 * time.Minute

var baselineRetry = time.Second // a variable for tests

var _ watch.Handler = (*daemons)(nil)

func newDaemons(c config, proc procfs.FS, sp *spool.Spool, m *metrics.Metrics, acct *nodemem.Collector, log *slog.Logger) (*daemons, error) {
	d := &daemons{log: log, m: m, acct: acct, handlers: map[string]collect.Handler{}, baselines: map[string]*baseline{}}
	observers := []collect.Observer{collect.LogObserver{Log: log}, collect.MetricsObserver{M: m}, d}
	for _, dc := range c.Daemons {
		src, err := dc.source(pprof.Options{MaxBytes: c.MaxProfile}, proc, log.With("daemon", dc.Name))
		if err != nil {
			return nil, fmt.Errorf("daemon %s: %w", dc.Name, err)
		}
		if src == nil {
			continue
		}
		col := collect.New(collect.Options{Profiles: c.Profiles, Source: src, Spool: sp, Log: log, Observers: observers})
		d.handlers[dc.Name] = collect.Handler{C: col, Metrics: m}
	}
	return d, nil
}

// sample (watch.Options.OnSample) feeds the daemon's collector, the usage
// metrics and the node accounting.
func (d *daemons) sample(c watch.Container, s watch.Sample) {
	d.acct.SetDaemon(c.Name, s.WorkingSet)
	if h, ok := d.handlers[c.Name]; ok {
		h.ObserveSample(c, s)
		return
	}
	d.m.Usage(c.Name, s.WorkingSet, s.Usage, s.Limit)
}

// gone (watch.Options.OnGone) drops a daemon whose processes are gone from
// the node accounting; a restart adds it back at its first sample.
func (d *daemons) gone(c watch.Container) { d.acct.RemoveDaemon(c.Name) }

func (d *daemons) Capture(ev watch.Event) {
	if h, ok := d.handlers[ev.Container.Name]; ok {
		d.mu.Lock()
		if ev.Kind == string(trigger.KindBaseline) {
			d.baselines[ev.Container.Name] = &baseline{ev: ev, since: time.Now()}
		} else if b := d.baselines[ev.Container.Name]; b != nil && b.missed {
			b.missed = false
			ev.Reason = fmt.Sprintf("%s; taken as the baseline, which could not be captured at %s", ev.Reason, b.since.UTC().Format(time.TimeOnly))
			ev.Kind = string(trigger.KindBaseline)
		}
		d.mu.Unlock()
		h.Capture(ev)
		return
	}
	d.log.Info("trigger fired for a daemon without a pprof endpoint: memory only", "daemon", ev.Container.Name,
		"kind", ev.Kind, "reason", ev.Reason)
}

// Observe (collect.Observer) asks again for a baseline skipped for want of
// an endpoint, and forgets it once stored (or failed otherwise: the
// series goes on without it). A baseline merged into a later request
// stays pending: that request was made a baseline too.
func (d *daemons) Observe(ev collect.Event) {
	if ev.Trigger != string(trigger.KindBaseline) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	b := d.baselines[ev.Target]
	switch {
	case b == nil, ev.Outcome == collect.Coalesced:
	case ev.Outcome == collect.NoEndpoint && time.Since(b.since) < baselineFor:
		b.missed = true
		if b.retrying {
			return // the scheduled retry asks again
		}
		b.retrying = true
		time.AfterFunc(baselineRetry, func() {
			d.mu.Lock()
			current := d.baselines[ev.Target] == b
			b.retrying, b.missed = false, false
			d.mu.Unlock()
			if current { // neither stored nor replaced by a restart's baseline
				d.handlers[ev.Target].Capture(b.ev)
			}
		})
	default:
		delete(d.baselines, ev.Target)
	}
}

func (d *daemons) OOMKilled(c watch.Container, at time.Time, last watch.Sample) {
	if h, ok := d.handlers[c.Name]; ok {
		h.OOMKilled(c, at, last)
		return
	}
	d.m.OOMKill(c.Name)
}

func (d *daemons) Suppressed(c watch.Container, kind, why string) { d.m.Suppressed(c.Name, kind, why) }

// close closes every collector at once, each with the same grace.
func (d *daemons) close(grace time.Duration) {
	var wg sync.WaitGroup
	for _, h := range d.handlers {
		wg.Go(func() { h.C.Close(grace) })
	}
	wg.Wait()
}
