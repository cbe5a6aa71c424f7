// Command webhook serves the heapwatch mutating admission webhook, which
// injects the heapwatch sidecar into pods of namespaces labelled
// heapwatch.io/inject=enabled.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/heapwatch/heapwatch/certs"
	"github.com/heapwatch/heapwatch/internal/webhook"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := run(os.Args[1:]); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "heapwatch-webhook:", err)
		os.Exit(1)
	}
}

// options are the command line: the webhook's configuration plus what only
// the binary needs.
type options struct {
	cfg        webhook.Config
	selfSigned string
	logLevel   string
}

func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("heapwatch-webhook", flag.ContinueOnError)
	o.cfg.AddFlags(fs)
	fs.StringVar(&o.selfSigned, "self-signed", o.selfSigned,
		"for local runs only: write a fresh self-signed CA and serving certificate for these comma-separated hosts into --cert-dir (ca.crt is the caBundle)")
	fs.StringVar(&o.logLevel, "log-level", o.logLevel, "debug, info, warn or error")
	return fs
}

func run(args []string) error {
	o := options{cfg: webhook.DefaultConfig(), logLevel: "info"}
	if err := newFlagSet(&o).Parse(args); err != nil {
		return err
	}
	cfg := o.cfg
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// One logger for our lines, controller-runtime's and client-go's.
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))
	klog.SetSlogLogger(log)

	if o.selfSigned != "" {
		hosts := strings.Split(o.selfSigned, ",")
		if _, err := certs.WriteSelfSigned(cfg.CertDir, hosts, 365*24*time.Hour); err != nil {
			return fmt.Errorf("--self-signed: %w", err)
		}
		log.Warn("serving a self-signed certificate; use cert-manager in clusters", "certDir", cfg.CertDir, "hosts", hosts)
	}
	mgr, err := webhook.NewManager(cfg, log)
	if err != nil {
		return err
	}
	log.Info("starting", "version", version, "image", cfg.Inject.Image, "nativeSidecar", cfg.Inject.NativeSidecar,
		"port", cfg.Port, "certDir", cfg.CertDir)
	return mgr.Start(ctrl.SetupSignalHandler())
}
