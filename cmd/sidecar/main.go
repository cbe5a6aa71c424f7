// Command sidecar watches the memory of the other containers of its pod and
// captures heap profiles from their pprof endpoints before they are
// OOM-killed. It runs as an ordinary process in the same PID namespace as its
// targets (shareProcessNamespace in Kubernetes), configured by HEAPWATCH_*
// environment variables (see settings) and a few flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/heapwatch/heapwatch/internal/collect"
	"github.com/heapwatch/heapwatch/internal/metrics"
	"github.com/heapwatch/heapwatch/internal/pprof"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/ship"
	"github.com/heapwatch/heapwatch/internal/spool"
	"github.com/heapwatch/heapwatch/internal/watch"
	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/settings"
	"github.com/heapwatch/heapwatch/store"
)

var version = "dev"

// Defaults of the sidecar's own flags.
const (
	defaultGrace = 10 * time.Second
)

type flags struct {
	spoolDir    string
	metricsAddr string
	procRoot    string
	grace       time.Duration
	logLevel    slog.Level
	maxProfile  int64
}

func main() {
	var f flags
	fs := flag.NewFlagSet("sidecar", flag.ExitOnError)
	fs.StringVar(&f.spoolDir, "spool-dir", names.SpoolDir, "directory holding captures until they are stored (an emptyDir in Kubernetes)")
	fs.StringVar(&f.metricsAddr, "metrics-addr", metrics.DefaultAddr, "listen address of the Prometheus /metrics endpoint; empty disables it")
	fs.StringVar(&f.procRoot, "proc", "/proc", "the proc file system of the pod's shared PID namespace")
	fs.DurationVar(&f.grace, "shutdown-grace", defaultGrace, "on SIGTERM, time to finish running captures and uploads; the rest stays in the spool")
	fs.TextVar(&f.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	fs.Int64Var(&f.maxProfile, "max-profile-bytes", pprof.DefaultMaxBytes, "size cap of one fetched profile")
	showVersion := fs.Bool("version", false, "print the version and exit")
	_ = fs.Parse(os.Args[1:])
	if *showVersion {
		fmt.Println(version)
		return
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: f.logLevel}))
	slog.SetDefault(log)
	if err := run(log, f); err != nil {
		log.Error("sidecar stopped", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, f flags) error {
	cfg, problems := settings.Defaults().FromEnv(os.LookupEnv)
	for _, p := range problems {
		log.Warn("invalid setting; using the default for it", "variable", p.Source, "value", p.Value, "using", p.Used, "err", errors.Unwrap(p.Err))
	}
	o := newOptions(cfg)
	pod := watch.PodFromEnv(os.LookupEnv)
	log.Info("heapwatch sidecar starting", "version", version, "namespace", pod.Namespace, "pod", pod.Pod,
		"node", pod.Node, "storage", store.RedactURL(o.storage), "thresholds", o.watch.Trigger.Thresholds, "interval", o.watch.Trigger.Interval,
		"horizon", o.watch.Trigger.Horizon, "profiles", o.collect.Profiles, "pprofPath", o.client.Path, "spoolDir", f.spoolDir,
		"securityMode", o.securityMode, "uid", os.Getuid(), "gid", os.Getgid())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	m := metrics.New()
	if f.metricsAddr != "" {
		go func() {
			if err := m.Serve(ctx, f.metricsAddr, log); err != nil {
				log.Error("metrics endpoint unavailable; capturing continues without it", "err", err)
			}
		}()
	}
	proc, err := procfs.NewFS(f.procRoot)
	if err != nil {
		return err // nothing can be watched without /proc
	}
	sp, err := openSpool(log, f.spoolDir, o.spool.MaxBytes, m)
	if err != nil {
		return err
	}
	shipper := ship.Start(sp, ship.Options{Storage: o.storage, Log: log})

	o.client.MaxBytes = f.maxProfile
	o.ports.Client, o.ports.Proc, o.ports.Log = pprof.NewClient(o.client), proc, log
	o.collect.Source = pprof.NewPorts(o.ports)
	o.collect.Spool, o.collect.Log = sp, log
	o.collect.Observers = []collect.Observer{collect.LogObserver{Log: log}, collect.MetricsObserver{M: m}}
	col := collect.New(o.collect)
	h := collect.Handler{C: col, Metrics: m}
	o.watch.OnSample, o.watch.OnUnwatched, o.watch.Discover = h.ObserveSample, h.ObserveUnwatched, watch.NewPodContainers(proc, pod)
	w := watch.New(o.watch, proc, h, log)
	watchErr := w.Run(ctx)
	if watchErr != nil && ctx.Err() == nil {
		log.Error("watching stopped; captures already taken are still uploaded", "err", watchErr)
		<-ctx.Done()
	}

	shipper.Shutdown(f.grace, col.Close)
	return nil
}

// openSpool opens the spool directory, falling back to a temporary one so
// that a bad volume costs durability across restarts, not the captures.
func openSpool(log *slog.Logger, dir string, bound int64, m *metrics.Metrics) (*spool.Spool, error) {
	sp, err := spool.Open(dir, spool.Options{MaxBytes: bound, Log: log, Metrics: m})
	if err == nil {
		return sp, nil
	}
	fallback := filepath.Join(os.TempDir(), "heapwatch-spool")
	log.Error("cannot use the spool directory; using a temporary one (captures will not survive a restart)",
		"spoolDir", dir, "fallback", fallback, "err", err)
	sp, err2 := spool.Open(fallback, spool.Options{MaxBytes: bound, Log: log, Metrics: m})
	if err2 != nil {
		return nil, fmt.Errorf("no usable spool directory: %w", errors.Join(err, err2))
	}
	return sp, nil
}
