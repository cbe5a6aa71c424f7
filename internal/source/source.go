// Package source is the seam between a capture and where its profiles come
// from: a Source finds the endpoint serving a target's profiles and fetches
// one profile kind from it. Go's net/http/pprof on the processes' TCP ports
// (internal/pprof) is one implementation; another transport (a unix
// socket, HTTPS with a token) is another type behind the same interface.
package source

import (
	"context"
	"errors"
	"io"
	"log/slog"
)

// ErrTooLarge reports a profile larger than the source's size cap; what was
// written before the cap is a truncated profile.
var ErrTooLarge = errors.New("profile exceeds size cap")

// Endpoint is where one process serves its profiles.
type Endpoint struct {
	PID int
	// StartTime (clock ticks since boot) tells a reused PID from the
	// process an answer was about.
	StartTime uint64
	// Addr is what the source dials: host:port, a socket path, a URL.
	Addr string
	// Port is the TCP port, 0 for other transports.
	Port int
}

// Source finds and fetches profiles. It owns whatever it remembers about
// endpoints (which ports serve, which do not, for how long) and is safe for
// concurrent use by the collector's workers.
type Source interface {
	// Endpoints returns one endpoint per process of pids that serves
	// profiles. recheck asks to look again now at processes remembered
	// without one: a capture needs them, and a process may have opened its
	// endpoint since it was last looked at.
	Endpoints(ctx context.Context, pids []int, recheck bool) []Endpoint
	// Fetch streams one profile kind ("heap", "goroutine", ...) from ep
	// into w and returns the bytes written; on ErrTooLarge w holds a
	// truncated profile.
	Fetch(ctx context.Context, ep Endpoint, profile string, w io.Writer) (int64, error)
	// Forget drops what is remembered about ep, after a fetch from it
	// failed.
	Forget(ep Endpoint)
	// LogValue says where the source looks, for the log line that reports
	// a target without an endpoint.
	slog.LogValuer
}
