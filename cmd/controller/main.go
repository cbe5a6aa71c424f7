// Command controller posts a Kubernetes Event on every injected pod whose
// container was OOM-killed, naming the heap profile heapwatch captured for
// the kill or saying why there is none, and exports the fleet's capture
// coverage (heapwatch_oom_kills_total).
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/heapwatch/heapwatch/internal/oomevents"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := run(os.Args[1:]); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "heapwatch-controller:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cfg := oomevents.DefaultConfig()
	logLevel := "info"
	fs := flag.NewFlagSet("heapwatch-controller", flag.ContinueOnError)
	cfg.AddFlags(fs)
	fs.StringVar(&logLevel, "log-level", logLevel, "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))
	klog.SetSlogLogger(log)
	rc, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	mgr, err := oomevents.NewManager(rc, cfg, log)
	if err != nil {
		return err
	}
	log.Info("starting", "version", version, "namespace", cfg.Namespace, "leaderElection", cfg.LeaderElection)
	return mgr.Start(ctrl.SetupSignalHandler())
}
