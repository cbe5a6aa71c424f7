package pprof

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/source"
)

// Ports is the source of a pod's Go processes: each process's listening
// TCP ports, probed for the pprof index, profiles fetched over HTTP. It is
// the one owner of what is known about endpoints: per process the port
// found (for the life of the process) or the time it was found to have
// none, and, through its Client, per port the answer of the last probe.
type Ports struct {
	o PortsOptions

	mu    sync.Mutex
	procs map[int]procEndpoint
}

// PortsOptions configure a Ports source.
type PortsOptions struct {
	Client *Client
	Proc   procfs.FS
	// Ports limits which listening ports are probed; empty probes all.
	Ports []int
	// RediscoverAfter is how long a process found without a pprof port is
	// not looked at again, unless a capture asks (default 5 s): it may open
	// its port late.
	RediscoverAfter time.Duration
	Log             *slog.Logger
}

// DefaultRediscoverAfter is PortsOptions.RediscoverAfter's default.
const DefaultRediscoverAfter = 5 * time.Second

// procEndpoint is what was found for one process: listing a process's
// ports reads /proc/<pid>/net/tcp, which takes tens of milliseconds in a
// busy network namespace, so it is done ahead of captures and remembered.
type procEndpoint struct {
	start uint64 // the process's start time: a reused PID is another process
	ep    source.Endpoint
	ok    bool
	at    time.Time
}

var _ source.Source = (*Ports)(nil)

// NewPorts returns a source probing the processes' TCP ports with o.Client.
func NewPorts(o PortsOptions) *Ports {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.RediscoverAfter <= 0 {
		o.RediscoverAfter = DefaultRediscoverAfter
	}
	return &Ports{o: o, procs: make(map[int]procEndpoint)}
}

// LogValue names the pprof path and the ports probed.
func (s *Ports) LogValue() slog.Value {
	return slog.GroupValue(slog.String("path", s.o.Client.Path()), slog.Any("ports", s.o.Ports))
}

// Endpoints returns, per process, one listening port that serves pprof,
// from what was remembered when the process is the same one; recheck looks
// again at processes remembered without one.
func (s *Ports) Endpoints(ctx context.Context, pids []int, recheck bool) []source.Endpoint {
	var out []source.Endpoint
	for _, pid := range pids {
		if ep, ok := s.endpoint(ctx, pid, recheck); ok {
			out = append(out, ep)
		}
	}
	return out
}

func (s *Ports) endpoint(ctx context.Context, pid int, recheck bool) (source.Endpoint, bool) {
	p := s.o.Proc.Proc(pid)
	st, err := p.Stat()
	s.mu.Lock()
	pe, known := s.procs[pid]
	if err != nil {
		delete(s.procs, pid) // exited
	}
	s.mu.Unlock()
	if err != nil {
		return source.Endpoint{}, false
	}
	now := time.Now()
	if known && pe.start == st.StartTime && (pe.ok || !recheck && now.Sub(pe.at) < s.o.RediscoverAfter) {
		return pe.ep, pe.ok
	}
	pe = procEndpoint{start: st.StartTime, at: now}
	ls, err := p.ListeningPorts()
	if err != nil && !procfs.IsNotExist(err) {
		s.o.Log.Warn("cannot list listening ports", "pid", pid, "err", err)
	}
	var eps []source.Endpoint
	for _, l := range ls {
		if len(s.o.Ports) > 0 && !slices.Contains(s.o.Ports, int(l.Port)) {
			continue
		}
		eps = append(eps, source.Endpoint{PID: pid, StartTime: st.StartTime, Addr: l.DialAddr(), Port: int(l.Port)})
	}
	pe.ep, pe.ok = s.o.Client.Find(ctx, eps)
	if pe.ok {
		s.o.Log.Info("pprof endpoint found", "pid", pid, "addr", pe.ep.Addr, "path", s.o.Client.Path())
	}
	s.mu.Lock()
	// Answers about processes that are gone would otherwise accumulate
	// for the sidecar's lifetime.
	if len(s.procs) > 4096 {
		clear(s.procs)
	}
	s.procs[pid] = pe
	s.mu.Unlock()
	return pe.ep, pe.ok
}

// Fetch streams one profile from ep.
func (s *Ports) Fetch(ctx context.Context, ep source.Endpoint, profile string, w io.Writer) (int64, error) {
	return s.o.Client.Fetch(ctx, ep.Addr, profile, w)
}

// Forget drops both the process's and the port's remembered answers.
func (s *Ports) Forget(ep source.Endpoint) {
	s.o.Client.Forget(ep)
	s.mu.Lock()
	if pe, ok := s.procs[ep.PID]; ok && pe.start == ep.StartTime {
		delete(s.procs, ep.PID)
	}
	s.mu.Unlock()
}
