package main

import (
	"github.com/heapwatch/heapwatch/internal/collect"
	"github.com/heapwatch/heapwatch/internal/pprof"
	"github.com/heapwatch/heapwatch/internal/spool"
	"github.com/heapwatch/heapwatch/internal/trigger"
	"github.com/heapwatch/heapwatch/internal/watch"
	"github.com/heapwatch/heapwatch/settings"
)

// options are the per-pod settings mapped onto the options of the parts
// that consume them, in those parts' own types; run adds the wiring (logger,
// /proc, metrics, the spool itself). What the settings do not name keeps the
// parts' documented defaults. The webhook-only settings (the sidecar's
// resources) reach no option here: the webhook applied them.
type options struct {
	watch   watch.Options      // Trigger, Containers
	collect collect.Options    // Profiles
	client  pprof.Options      // Path
	ports   pprof.PortsOptions // Ports
	spool   spool.Options      // MaxBytes
	// storage is the URL captures are stored at.
	storage string
	// securityMode is logged at start: the webhook applied it to the
	// sidecar's security context.
	securityMode string
}

func newOptions(cfg settings.Config) options {
	return options{
		watch: watch.Options{
			Trigger: trigger.Options{
				Thresholds: cfg.Thresholds,
				Absolute:   uint64(max(cfg.ThresholdBytes, 0)),
				Horizon:    cfg.Horizon,
				Cooldown:   cfg.Cooldown,
				MaxPerHour: cfg.MaxPerHour,
				Interval:   cfg.Interval,
			},
			Containers: cfg.Containers,
		},
		collect:      collect.Options{Profiles: cfg.Profiles},
		client:       pprof.Options{Path: cfg.PprofPath},
		ports:        pprof.PortsOptions{Ports: cfg.Ports},
		spool:        spool.Options{MaxBytes: cfg.SpoolBytes},
		storage:      cfg.Storage,
		securityMode: cfg.SecurityMode,
	}
}
