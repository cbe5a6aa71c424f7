// Package oomevents is the heapwatch controller: it watches injected pods,
// and for every OOM kill of a watched container that the kubelet records in
// the container's lastState it posts a Kubernetes Event on the pod naming
// the capture heapwatch stored for that kill (or saying why there is none),
// and counts the kill in heapwatch_oom_kills_total: the fleet's capture
// coverage.
//
// It never modifies pods. Idempotence comes from the Events themselves: an
// Event's name is derived from the pod UID, the container and the kill's
// finishedAt, so a second post of the same kill (a resync, a restart, a new
// leader) fails with AlreadyExists and is not counted again.
package oomevents

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/heapwatch/heapwatch/capture/catalog"
	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/store"
)

// Event reasons.
const (
	ReasonCaptured       = "HeapProfileCaptured"
	ReasonWithoutProfile = "OOMKilledWithoutProfile"
	// ReasonStoredInPod: the capture is in file:// storage inside the pod,
	// which the controller cannot read; the Event says where it is.
	ReasonStoredInPod = "HeapProfileStoredInPod"
)

// Event annotations: what the Event is about, for tools and for people
// reading `kubectl get events -o yaml`.
const (
	AnnotationContainer  = "heapwatch.io/container"
	AnnotationFinishedAt = "heapwatch.io/finished-at"
	AnnotationCapture    = "heapwatch.io/capture"
)

// Component is the Event source and the controller's name.
const Component = "heapwatch-controller"

// Causes: the reason label of heapwatch_oom_kills_total.
const (
	CauseFinal          = "final-capture"
	CauseStoredInPod    = "stored-in-pod"
	CauseNoSidecar      = "sidecar-not-running"
	CauseNoLimit        = "no-memory-limit"
	CauseStorage        = "storage-unreachable"
	CauseNotFinal       = "no-final-capture"
	CauseNone           = "none-found"
	oomKilled           = "OOMKilled"
	captureWaitInterval = 5 * time.Second
)

// Config configures the controller.
type Config struct {
	// Namespace limits the watch to one namespace; empty watches all.
	Namespace   string
	MetricsAddr string
	ProbeAddr   string
	// LeaderElection lets only one of several replicas post Events.
	LeaderElection          bool
	LeaderElectionNamespace string
	// Tolerance is how far the sidecar's kill time may be from finishedAt.
	Tolerance time.Duration
	// CaptureWait is how long after a kill the final capture may still be
	// on its way to storage; a kill without one is reported after it.
	CaptureWait time.Duration
	// MaxAge: kills older than this are not reported (Events expire after an
	// hour in most clusters, so an older kill may have been reported before).
	MaxAge time.Duration
	// OpenStore opens a pod's storage; store.Open when nil.
	OpenStore func(ctx context.Context, rawURL string) (store.Store, error)
}

// DefaultConfig is the controller's configuration without flags.
func DefaultConfig() Config {
	return Config{MetricsAddr: ":8080", ProbeAddr: ":8081", LeaderElection: true,
		Tolerance: catalog.DefaultTolerance, CaptureWait: 2 * time.Minute, MaxAge: 50 * time.Minute}
}

// Validate checks the configuration; messages name the flag.
func (c Config) Validate() error {
	var errs []error
	if c.Tolerance <= 0 {
		errs = append(errs, fmt.Errorf("--tolerance %v: must be positive", c.Tolerance))
	}
	if c.CaptureWait < 0 {
		errs = append(errs, fmt.Errorf("--capture-wait %v: must not be negative", c.CaptureWait))
	}
	if c.MaxAge <= c.CaptureWait {
		errs = append(errs, fmt.Errorf("--max-age %v: must be longer than --capture-wait %v", c.MaxAge, c.CaptureWait))
	}
	return errors.Join(errs...)
}

// Metrics are the fleet's capture coverage.
type Metrics struct {
	Kills    *prometheus.CounterVec
	LeadTime prometheus.Histogram
}

// NewMetrics registers the controller's metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		Kills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "heapwatch_oom_kills_total",
			Help: "OOM kills of containers in injected pods, by whether heapwatch stored a capture for the kill and the cause.",
		}, []string{"namespace", "captured", "reason"}),
		LeadTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "heapwatch_oom_capture_lead_time_seconds",
			Help:    "Time from the final capture to the OOM kill it preceded.",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300},
		}),
	}
	// A second manager in one process (a restart in tests) shares the
	// registered series.
	var are prometheus.AlreadyRegisteredError
	if err := reg.Register(m.Kills); errors.As(err, &are) {
		m.Kills = are.ExistingCollector.(*prometheus.CounterVec)
	} else if err != nil {
		return nil, err
	}
	if err := reg.Register(m.LeadTime); errors.As(err, &are) {
		m.LeadTime = are.ExistingCollector.(prometheus.Histogram)
	} else if err != nil {
		return nil, err
	}
	return m, nil
}

// NewManager returns the controller's manager; Start runs it.
func NewManager(rc *rest.Config, c Config, log *slog.Logger) (manager.Manager, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.OpenStore == nil {
		c.OpenStore = store.Open
	}
	injected := labels.SelectorFromSet(labels.Set{names.StatusLabel: names.StatusInjected})
	byObject := cache.ByObject{Label: injected}
	if c.Namespace != "" {
		byObject.Namespaces = map[string]cache.Config{c.Namespace: {}}
	}
	mgr, err := manager.New(rc, manager.Options{
		Metrics:                 metricsserver.Options{BindAddress: c.MetricsAddr},
		HealthProbeBindAddress:  c.ProbeAddr,
		LeaderElection:          c.LeaderElection,
		LeaderElectionID:        "heapwatch-controller",
		LeaderElectionNamespace: c.LeaderElectionNamespace,
		// A replaced leader hands over at once rather than after the lease.
		LeaderElectionReleaseOnCancel: true,
		// Only injected pods are cached and watched: the API server filters
		// on the label the webhook sets.
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{&corev1.Pod{}: byObject}},
		// The binary runs one controller; a manager started again in the
		// same process (a restart) must not trip the name check.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return nil, fmt.Errorf("creating the manager: %w", err)
	}
	m, err := NewMetrics(crmetrics.Registry)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	r := &Reconciler{c: c, client: mgr.GetClient(), log: log, metrics: m, instance: host,
		handled: map[string]bool{}, stores: map[string]store.Store{}}
	err = builder.ControllerManagedBy(mgr).Named("oomevents").
		For(&corev1.Pod{}, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetLabels()[names.StatusLabel] == names.StatusInjected
		}))).
		Complete(r)
	if err != nil {
		return nil, fmt.Errorf("creating the controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return nil, err
	}
	return mgr, nil
}

// Reconciler posts one Event per OOM kill of a watched container.
type Reconciler struct {
	c        Config
	client   client.Client
	log      *slog.Logger
	metrics  *Metrics
	instance string

	mu      sync.Mutex
	handled map[string]bool        // Event names posted or found posted
	stores  map[string]store.Store // opened storage by URL
}

// Reconcile looks at every container's last termination.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var pod corev1.Pod
	if err := r.client.Get(ctx, req.NamespacedName, &pod); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	var requeue time.Duration
	for _, cs := range pod.Status.ContainerStatuses {
		t := cs.LastTerminationState.Terminated
		if cs.Name == names.SidecarName || t == nil || t.Reason != oomKilled {
			continue
		}
		age := time.Since(t.FinishedAt.Time)
		if age > r.c.MaxAge {
			continue
		}
		name := eventName(&pod, cs.Name, t.FinishedAt.Time)
		if r.isHandled(name) {
			continue
		}
		v := r.examine(ctx, &pod, cs.Name, t.FinishedAt.Time)
		if !v.captured && age < r.c.CaptureWait {
			// The sidecar uploads the final capture after the kill.
			wait := min(captureWaitInterval, r.c.CaptureWait-age)
			if requeue == 0 || wait < requeue {
				requeue = wait
			}
			continue
		}
		if err := r.post(ctx, &pod, cs.Name, t.FinishedAt.Time, name, v); err != nil {
			return reconcile.Result{}, err
		}
	}
	return reconcile.Result{RequeueAfter: requeue}, nil
}

func (r *Reconciler) isHandled(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.handled[name]
}

func (r *Reconciler) setHandled(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.handled[name] = true
}

// verdict is what the controller can tell about one kill.
type verdict struct {
	captured  bool
	cause     string
	eventType string
	reason    string
	message   string
	capture   string
	lead      time.Duration
}

// eventName is unique per kill and stable across restarts and replicas.
func eventName(pod *corev1.Pod, container string, finished time.Time) string {
	h := sha256.Sum256([]byte(string(pod.UID) + "/" + container + "/" + finished.UTC().Format(time.RFC3339Nano)))
	name := pod.Name
	if len(name) > 200 {
		name = strings.TrimRight(name[:200], "-.") // a label must end alphanumeric
	}
	return name + ".heapwatch-" + hex.EncodeToString(h[:8])
}

func (r *Reconciler) post(ctx context.Context, pod *corev1.Pod, container string, finished time.Time, name string, v verdict) error {
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: pod.Namespace, Annotations: map[string]string{
			AnnotationContainer: container, AnnotationFinishedAt: finished.UTC().Format(time.RFC3339),
		}},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name,
			UID: pod.UID, ResourceVersion: pod.ResourceVersion, FieldPath: fieldPath(pod, container)},
		Reason: v.reason, Message: v.message, Type: v.eventType,
		Source:         corev1.EventSource{Component: Component},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "heapwatch.io/controller", ReportingInstance: r.instance,
	}
	if v.capture != "" {
		ev.Annotations[AnnotationCapture] = v.capture
	}
	err := r.client.Create(ctx, ev)
	switch {
	case apierrors.IsAlreadyExists(err):
		r.setHandled(name) // posted before a restart, or by another leader
		return nil
	case err != nil:
		return fmt.Errorf("posting event %s/%s: %w", pod.Namespace, name, err)
	}
	r.setHandled(name)
	r.metrics.Kills.WithLabelValues(pod.Namespace, fmt.Sprint(v.captured), v.cause).Inc()
	if v.captured && v.lead > 0 {
		r.metrics.LeadTime.Observe(v.lead.Seconds())
	}
	r.log.Info("OOM kill reported", "namespace", pod.Namespace, "pod", pod.Name, "container", container,
		"finishedAt", finished, "reason", v.reason, "cause", v.cause, "capture", v.capture)
	return nil
}

func fieldPath(pod *corev1.Pod, container string) string {
	for _, c := range pod.Spec.Containers {
		if c.Name == container {
			return fmt.Sprintf("spec.containers{%s}", c.Name)
		}
	}
	return ""
}

// storeFor opens (once) the storage a URL names.
func (r *Reconciler) storeFor(ctx context.Context, rawURL string) (store.Store, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st, ok := r.stores[rawURL]; ok {
		return st, nil
	}
	st, err := r.c.OpenStore(ctx, rawURL)
	if err != nil {
		return nil, err
	}
	r.stores[rawURL] = st
	return st, nil
}

// AddFlags binds the configuration to command-line flags.
func (c *Config) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Namespace, "namespace", c.Namespace, "watch injected pods of this namespace only (default: all namespaces)")
	fs.StringVar(&c.MetricsAddr, "metrics-bind-address", c.MetricsAddr, "address of the /metrics endpoint")
	fs.StringVar(&c.ProbeAddr, "health-probe-bind-address", c.ProbeAddr, "address of /healthz and /readyz")
	fs.BoolVar(&c.LeaderElection, "leader-elect", c.LeaderElection, "elect a leader so that only one replica posts Events")
	fs.StringVar(&c.LeaderElectionNamespace, "leader-election-namespace", c.LeaderElectionNamespace, "namespace of the leader election Lease (default: the controller's own)")
	fs.DurationVar(&c.Tolerance, "tolerance", c.Tolerance, "how far the sidecar's kill time may be from the kubelet's finishedAt")
	fs.DurationVar(&c.CaptureWait, "capture-wait", c.CaptureWait, "how long after a kill to wait for its final capture to reach storage")
	fs.DurationVar(&c.MaxAge, "max-age", c.MaxAge, "ignore kills older than this (their Events may have expired already)")
}
