package webhook

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"

	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/heapwatch/heapwatch/internal/webhook/inject"
	"github.com/heapwatch/heapwatch/settings"
)

// Config is everything the webhook binary is configured with.
type Config struct {
	Inject inject.Options
	// CertDir holds tls.crt and tls.key; it is watched and reloaded when the
	// files change (cert-manager renewals), without a restart.
	CertDir     string
	Host        string
	Port        int
	MetricsAddr string
	ProbeAddr   string
}

// DefaultConfig returns the flag defaults.
func DefaultConfig() Config {
	return Config{
		Inject:      inject.Options{Defaults: settings.Defaults(), NativeSidecar: true},
		CertDir:     "/etc/heapwatch/tls",
		Port:        9443,
		MetricsAddr: ":8080",
		ProbeAddr:   ":8081",
	}
}

// AddFlags registers every flag of the webhook binary on fs, writing into c.
func (c *Config) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Inject.Image, "sidecar-image", c.Inject.Image, "sidecar image to inject (required), pinned by tag or digest")
	fs.StringVar(&c.Inject.CredentialsSecret, "credentials-secret", c.Inject.CredentialsSecret,
		"name of a Secret in the pod's namespace whose keys become the sidecar's environment (e.g. AWS_ACCESS_KEY_ID); optional: a missing Secret does not stop the pod")
	fs.BoolVar(&c.Inject.NativeSidecar, "native-sidecar", c.Inject.NativeSidecar,
		"inject a native sidecar (init container with restartPolicy Always, Kubernetes >= 1.29); false adds a regular container for older clusters")
	settings.AddFlags(fs, "default-", &c.Inject.Defaults)
	fs.StringVar(&c.CertDir, "cert-dir", c.CertDir, "directory holding tls.crt and tls.key; reloaded when the files change")
	fs.StringVar(&c.Host, "webhook-host", c.Host, "address the webhook server listens on (empty: all)")
	fs.IntVar(&c.Port, "webhook-port", c.Port, "HTTPS port of the webhook server")
	fs.StringVar(&c.MetricsAddr, "metrics-bind-address", c.MetricsAddr, "address of the Prometheus /metrics endpoint (0 disables it)")
	fs.StringVar(&c.ProbeAddr, "health-probe-bind-address", c.ProbeAddr, "address of the /healthz and /readyz endpoints")
}

// Validate checks the configuration; messages name the flag.
func (c Config) Validate() error {
	errs := []error{c.Inject.Validate()}
	if c.CertDir == "" {
		errs = append(errs, errors.New("--cert-dir is required"))
	}
	if c.Port < 1 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("--webhook-port %d is not a TCP port", c.Port))
	}
	if c.ProbeAddr == "" {
		errs = append(errs, errors.New("--health-probe-bind-address is required: the Deployment's probes use it"))
	}
	return errors.Join(errs...)
}

// noAPIServer is the manager's REST config. The webhook never calls the API
// server: it reads nothing, writes nothing and needs no leader election, so
// it runs without a service-account token and without RBAC. The manager
// wants a config anyway; it builds lazy clients from it that are never used.
var noAPIServer = &rest.Config{Host: "https://api-server-not-used.invalid"}

// NewManager builds the manager serving the webhook, its probes and metrics.
// Readiness means the HTTPS server is up and presenting a certificate.
func NewManager(c Config, log *slog.Logger) (manager.Manager, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	mgr, err := manager.New(noAPIServer, manager.Options{
		Metrics:                metricsserver.Options{BindAddress: c.MetricsAddr},
		HealthProbeBindAddress: c.ProbeAddr,
		WebhookServer:          crwebhook.NewServer(crwebhook.Options{Host: c.Host, Port: c.Port, CertDir: c.CertDir}),
	})
	if err != nil {
		return nil, fmt.Errorf("creating the manager: %w", err)
	}
	// GetWebhookServer also adds the server to the manager's runnables.
	server := mgr.GetWebhookServer()
	server.Register(Path, &admission.Webhook{Handler: NewHandler(c.Inject, log), RecoverPanic: ptr.To(true)})
	sameUIDOnly := c.Inject
	sameUIDOnly.SameUIDOnly = true
	server.Register(SameUIDOnlyPath, &admission.Webhook{Handler: NewHandler(sameUIDOnly, log.With("path", SameUIDOnlyPath)), RecoverPanic: ptr.To(true)})
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, fmt.Errorf("adding the health check: %w", err)
	}
	// StartedChecker dials the server over TLS: ready only once it listens
	// and has loaded a certificate.
	if err := mgr.AddReadyzCheck("webhook", server.StartedChecker()); err != nil {
		return nil, fmt.Errorf("adding the readiness check: %w", err)
	}
	return mgr, nil
}
