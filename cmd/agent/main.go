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
	acctReader, err := nodemem.NewReader(c.ProcRoot, c.CgroupRoot, "")
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

	uploadCtx, stopUpload := context.WithCancel(context.Background())
	uploaded := make(chan struct{})
	go func() {
		defer close(uploaded)
		upload(uploadCtx, log, sp, c.Storage)
	}()
	w := watch.New(watch.Options{
		Trigger:  triggerOptions(c),
		Discover: watch.NewHostDaemons(proc, c.NodeName, specs),
		OnSample: d.sample, NodeMemory: mem.MemTotal, ReadOnly: true, CgroupRoot: c.CgroupRoot, NoProbe: true, Rescan: c.Rescan,
	}, proc, d, log)
	if err := w.Run(ctx); err != nil && ctx.Err() == nil {
		log.Error("watching stopped; captures already taken are still uploaded", "err", err)
		<-ctx.Done()
	}

	log.Info("shutting down", "grace", c.Grace)
	deadline := time.Now().Add(c.Grace)
	d.close(c.Grace / 2)
	stopUpload()
	<-uploaded
	flushCtx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if st, err := store.Open(flushCtx, c.Storage); err == nil {
		if err := sp.Flush(flushCtx, st); err != nil {
			log.Warn("captures left in the spool for the next start", "err", err)
		}
	}
	ids, _ := sp.Pending()
	log.Info("stopped", "spooled", len(ids), "spoolBytes", sp.Bytes())
	return nil
}

// upload stores what the spool holds until ctx is done.
// TODO(l7): the shipping package replaces this (retry, backoff, drain).
func upload(ctx context.Context, log *slog.Logger, sp *spool.Spool, rawURL string) {
	st, err := store.Open(ctx, rawURL)
	if err != nil {
		log.Error("cannot open the storage; captures stay in the spool", "storage", store.RedactURL(rawURL), "err", err)
		return
	}
	sp.Run(ctx, st)
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
}

var _ watch.Handler = (*daemons)(nil)

func newDaemons(c config, proc procfs.FS, sp *spool.Spool, m *metrics.Metrics, acct *nodemem.Collector, log *slog.Logger) (*daemons, error) {
	d := &daemons{log: log, m: m, acct: acct, handlers: map[string]collect.Handler{}}
	observers := []collect.Observer{collect.LogObserver{Log: log}, collect.MetricsObserver{M: m}}
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

func (d *daemons) Capture(ev watch.Event) {
	if h, ok := d.handlers[ev.Container.Name]; ok {
		h.Capture(ev)
		return
	}
	d.log.Info("trigger fired for a daemon without a pprof endpoint: memory only", "daemon", ev.Container.Name,
		"kind", ev.Kind, "reason", ev.Reason)
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
