// Package metrics defines the sidecar's Prometheus metrics and serves them.
//
// Every method is safe on a nil *Metrics, so packages can report without
// caring whether metrics are enabled (tests pass nil).
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is the sidecar's default metrics listen address.
const DefaultAddr = ":9464"

// Capture outcomes.
const (
	OutcomeStored    = "stored"    // committed to the spool for upload
	OutcomeHeld      = "held"      // kept locally until an OOM kill
	OutcomeNoPprof   = "no_pprof"  // no pprof endpoint found
	OutcomeFailed    = "failed"    // fetch or spool failed
	OutcomeCoalesced = "coalesced" // merged into a capture already queued
	OutcomeFinal     = "final"     // marked final after an OOM kill
)

// Metrics holds the sidecar's collectors.
type Metrics struct {
	Registry *prometheus.Registry

	usageRatio     *prometheus.GaugeVec
	usageBytes     *prometheus.GaugeVec
	captures       *prometheus.CounterVec
	suppressed     *prometheus.CounterVec
	oomKills       *prometheus.CounterVec
	uploads        prometheus.Counter
	uploadFailures prometheus.Counter
	spoolBytes     prometheus.Gauge
	spoolDrops     prometheus.Counter
	spoolDropBytes prometheus.Counter
	detection      prometheus.Histogram
	unwatched      *prometheus.GaugeVec

	// usage caches each container's two usage gauges (container name to
	// *usageGauges): Usage runs at every sample, and resolving the label
	// values is most of its cost. Series are never deleted.
	usage sync.Map
}

type usageGauges struct{ ratio, bytes prometheus.Gauge }

// New registers every metric in a new registry, with the Go and process
// collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Metrics{
		Registry: reg,
		usageRatio: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "heapwatch_container_memory_usage_ratio",
			Help: "Memory usage of a watched container divided by its limit (0 when it has none).",
		}, []string{"container"}),
		usageBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "heapwatch_container_memory_working_set_bytes",
			Help: "Working set (usage minus inactive file) of a watched container.",
		}, []string{"container"}),
		captures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "heapwatch_captures_total",
			Help: "Captures by trigger kind and outcome (stored, held, final, no_pprof, failed, coalesced).",
		}, []string{"container", "trigger", "outcome"}),
		suppressed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "heapwatch_triggers_suppressed_total",
			Help: "Triggers that fired but did not capture (cooldown, hourly cap).",
		}, []string{"container", "trigger", "reason"}),
		oomKills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "heapwatch_container_oom_kills_total",
			Help: "OOM kills of watched containers seen by the sidecar.",
		}, []string{"container"}),
		uploads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "heapwatch_uploads_total",
			Help: "Spool entries stored to the storage URL.",
		}),
		uploadFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "heapwatch_upload_failures_total",
			Help: "Failed attempts to store a spool entry (retried with backoff).",
		}),
		spoolBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "heapwatch_spool_bytes",
			Help: "Bytes of captures in the local spool.",
		}),
		spoolDrops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "heapwatch_spool_dropped_total",
			Help: "Captures dropped from a full spool before they were stored.",
		}),
		spoolDropBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "heapwatch_spool_dropped_bytes_total",
			Help: "Bytes of captures dropped from a full spool.",
		}),
		detection: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "heapwatch_detection_latency_seconds",
			Help:    "Time from a trigger condition being seen to the profile fetch starting.",
			Buckets: []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1},
		}),
		unwatched: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "heapwatch_unwatched_containers",
			Help: "Containers of the pod the sidecar does not watch (1 each), by reason: no-limit, not-in-watch-list, permission-denied, cgroup-unreadable.",
		}, []string{"container", "reason"}),
	}
	for _, c := range []prometheus.Collector{m.usageRatio, m.usageBytes, m.captures, m.suppressed, m.oomKills,
		m.uploads, m.uploadFailures, m.spoolBytes, m.spoolDrops, m.spoolDropBytes, m.detection, m.unwatched,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	return m
}

// Usage records a container's memory sample.
func (m *Metrics) Usage(container string, workingSet, usage, limit uint64) {
	if m == nil {
		return
	}
	ratio := 0.0
	if limit > 0 {
		ratio = float64(usage) / float64(limit)
	}
	g, ok := m.usage.Load(container)
	if !ok {
		g, _ = m.usage.LoadOrStore(container, &usageGauges{m.usageRatio.WithLabelValues(container), m.usageBytes.WithLabelValues(container)})
	}
	u := g.(*usageGauges)
	u.ratio.Set(ratio)
	u.bytes.Set(float64(workingSet))
}

// SetUnwatched replaces the set of containers not watched: reason by
// container name.
func (m *Metrics) SetUnwatched(reasons map[string]string) {
	if m == nil {
		return
	}
	m.unwatched.Reset()
	for container, reason := range reasons {
		m.unwatched.WithLabelValues(container, reason).Set(1)
	}
}

// Capture counts one capture attempt's outcome.
func (m *Metrics) Capture(container, trigger, outcome string) {
	if m == nil {
		return
	}
	m.captures.WithLabelValues(container, trigger, outcome).Inc()
}

// Suppressed counts a trigger that did not capture.
func (m *Metrics) Suppressed(container, trigger, reason string) {
	if m == nil {
		return
	}
	m.suppressed.WithLabelValues(container, trigger, reason).Inc()
}

// OOMKill counts an OOM kill of a watched container.
func (m *Metrics) OOMKill(container string) {
	if m == nil {
		return
	}
	m.oomKills.WithLabelValues(container).Inc()
}

// DetectionLatency records the time from detection to fetch start.
func (m *Metrics) DetectionLatency(d time.Duration) {
	if m == nil {
		return
	}
	m.detection.Observe(d.Seconds())
}

// Uploaded counts one stored spool entry.
func (m *Metrics) Uploaded() {
	if m == nil {
		return
	}
	m.uploads.Inc()
}

// UploadFailed counts one failed upload attempt.
func (m *Metrics) UploadFailed() {
	if m == nil {
		return
	}
	m.uploadFailures.Inc()
}

// SpoolBytes sets the spool's current size.
func (m *Metrics) SpoolBytes(n int64) {
	if m == nil {
		return
	}
	m.spoolBytes.Set(float64(n))
}

// SpoolDropped counts an entry dropped from a full spool.
func (m *Metrics) SpoolDropped(bytes int64) {
	if m == nil {
		return
	}
	m.spoolDrops.Inc()
	m.spoolDropBytes.Add(float64(bytes))
}

// Serve serves /metrics on addr until ctx is done. A failure to listen is
// returned; the sidecar logs it and keeps capturing without metrics.
func (m *Metrics) Serve(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}
