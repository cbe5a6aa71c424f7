// Command agent is heapwatch's node agent: it watches the memory of host
// daemons (containerd, the kubelet, CRI-O, dockerd and any configured
// process) and captures heap profiles from their pprof endpoints as they
// grow, through the sidecar's pipeline (watch → trigger → collect → spool
// → store) with a daemon as the target. It runs as a DaemonSet with
// hostPID, configured by flags and a --config file (see config.go).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
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
	names := make([]string, len(c.Daemons))
	for i, d := range c.Daemons {
		names[i] = d.Name
	}
	log.Info("heapwatch agent starting", "version", version, "node", c.NodeName, "daemons", names, "interval", c.Interval)
	<-ctx.Done()
	return nil
}
