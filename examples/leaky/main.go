// Command leaky is a small Go program that leaks memory in a chosen shape
// while serving net/http/pprof. It is the target of the sidecar's end-to-end
// tests and of `make demo`.
//
// Each shape leaks from its own function (leakLinear, leakDoubling,
// leakBurst, leakJump) so the top in-use function of a heap profile names the
// shape that was running; shmem grows a tmpfs file instead of the Go heap.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const mib = 1 << 20

type options struct {
	addr       string
	socket     string
	pprofPath  string
	silentAddr string
	shape      string
	delay      time.Duration
	rateMB     float64
	burstMB    float64
	step       time.Duration
	limit      int64
	jumpLevel  float64
	jumpHold   time.Duration
	shmFile    string
	// nonDumpable: prctl(PR_SET_DUMPABLE, 0) first, so only a reader with
	// CAP_SYS_PTRACE may open /proc/<pid>/{root,fd,environ} (the e2e
	// tests' container a same-uid sidecar cannot read).
	nonDumpable bool
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "127.0.0.1:6060", "listen address of the pprof server; empty disables it")
	flag.StringVar(&o.socket, "pprof-socket", "", "also serve pprof on this unix socket, as a host daemon's debug socket (containerd's [debug] address)")
	flag.StringVar(&o.pprofPath, "pprof-path", "/debug/pprof", "URL path under which pprof is served")
	flag.StringVar(&o.silentAddr, "silent-addr", "", "also listen here, accept connections and never answer (a port the sidecar must not hang on)")
	flag.StringVar(&o.shape, "shape", "linear", "leak shape: linear, doubling, burst, jump, shmem or none")
	flag.DurationVar(&o.delay, "delay", 2*time.Second, "wait this long before leaking, so a watcher can find the pprof port first")
	flag.Float64Var(&o.rateMB, "rate", 20, "linear: MiB leaked per second")
	flag.Float64Var(&o.burstMB, "burst-rate", 400, "burst: MiB leaked per second")
	flag.DurationVar(&o.step, "step", 400*time.Millisecond, "doubling: time between two doublings")
	flag.Int64Var(&o.limit, "limit", 0, "jump: the memory limit in bytes; 0 reads it from /sys/fs/cgroup/memory (v1) or /sys/fs/cgroup/memory.max (v2)")
	flag.Float64Var(&o.jumpLevel, "jump-level", 0.45, "jump: fraction of the limit to sit at before the jump")
	flag.DurationVar(&o.jumpHold, "jump-hold", 3*time.Second, "jump: how long to sit at jump-level before the one allocation past the limit")
	flag.StringVar(&o.shmFile, "shm-file", "/dev/shm/leaky", "shmem: the tmpfs file to grow (a memory-backed emptyDir or /dev/shm in a pod)")
	flag.BoolVar(&o.nonDumpable, "non-dumpable", false, "make the process non-dumpable (prctl PR_SET_DUMPABLE 0) before anything else")
	flag.Parse()

	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(log, o); err != nil {
		log.Error("leaky", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, o options) error {
	if o.nonDumpable {
		if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
			return fmt.Errorf("prctl PR_SET_DUMPABLE: %w", err)
		}
	}
	leak, err := leakFunc(o)
	if err != nil {
		return err
	}
	if o.addr != "" {
		ln, err := net.Listen("tcp", o.addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", o.addr, err)
		}
		go serve(log, ln, pprofMux(o.pprofPath))
		log.Info("serving pprof", "addr", ln.Addr().String(), "path", o.pprofPath)
	}
	if o.socket != "" {
		_ = os.Remove(o.socket) // a socket left by a previous run
		ln, err := net.Listen("unix", o.socket)
		if err != nil {
			return fmt.Errorf("listen %s: %w", o.socket, err)
		}
		defer ln.Close()
		go serve(log, ln, pprofMux(o.pprofPath))
		log.Info("serving pprof", "socket", o.socket, "path", o.pprofPath)
	}
	if o.silentAddr != "" {
		ln, err := net.Listen("tcp", o.silentAddr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", o.silentAddr, err)
		}
		go acceptSilently(ln)
		log.Info("silent port", "addr", ln.Addr().String())
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-time.After(o.delay):
	case <-stop:
		return nil
	}
	log.Info("leaking", "shape", o.shape)
	go leak()
	<-stop
	return nil
}

func leakFunc(o options) (func(), error) {
	switch o.shape {
	case "linear":
		if o.rateMB <= 0 {
			return nil, errors.New("-rate must be positive")
		}
		return func() { leakLinear(o.rateMB) }, nil
	case "doubling":
		if o.step <= 0 {
			return nil, errors.New("-step must be positive")
		}
		return func() { leakDoubling(o.step) }, nil
	case "burst":
		if o.burstMB <= 0 {
			return nil, errors.New("-burst-rate must be positive")
		}
		return func() { leakBurst(o.burstMB) }, nil
	case "jump":
		limit := o.limit
		if limit <= 0 {
			var err error
			if limit, err = cgroupLimit(); err != nil {
				return nil, fmt.Errorf("jump needs -limit: %w", err)
			}
		}
		if o.jumpLevel <= 0 || o.jumpLevel >= 1 {
			return nil, errors.New("-jump-level must be between 0 and 1")
		}
		return func() { leakJump(limit, o.jumpLevel, o.jumpHold) }, nil
	case "shmem":
		if o.rateMB <= 0 || o.shmFile == "" {
			return nil, errors.New("shmem needs a positive -rate and a -shm-file")
		}
		return func() { leakShmem(o.shmFile, o.rateMB) }, nil
	case "none":
		return func() {}, nil
	}
	return nil, fmt.Errorf("unknown -shape %q (linear, doubling, burst, jump, shmem, none)", o.shape)
}

func pprofMux(path string) *http.ServeMux {
	path = strings.TrimRight(path, "/")
	mux := http.NewServeMux()
	// pprof.Index serves named profiles by stripping "/debug/pprof/" from the
	// URL, so under another path each profile gets its own handler.
	mux.HandleFunc(path+"/", func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, path+"/")
		switch name {
		case "":
			pprof.Index(w, r)
		case "cmdline":
			pprof.Cmdline(w, r)
		case "profile":
			pprof.Profile(w, r)
		case "symbol":
			pprof.Symbol(w, r)
		case "trace":
			pprof.Trace(w, r)
		default:
			pprof.Handler(name).ServeHTTP(w, r)
		}
	})
	return mux
}

func serve(log *slog.Logger, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	if err := srv.Serve(ln); err != nil {
		log.Error("pprof server", "err", err)
	}
}

// acceptSilently holds every connection open without reading or writing,
// until the listener closes.
func acceptSilently(ln net.Listener) {
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		held = append(held, c)
	}
}

// leaked keeps every leaked chunk reachable.
var leaked [][]byte

// touch writes one byte per page so the chunk is resident, not just reserved.
func touch(b []byte) []byte {
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	return b
}

// leakLinear leaks rateMB MiB per second in 1 MiB chunks.
func leakLinear(rateMB float64) {
	every := time.Duration(float64(time.Second) / rateMB)
	for range time.Tick(every) {
		leaked = append(leaked, touch(make([]byte, mib)))
	}
}

// leakDoubling doubles the leaked total every step: it sits low for a long
// time, then crosses half the limit and the limit on two consecutive steps.
func leakDoubling(step time.Duration) {
	leaked = append(leaked, touch(make([]byte, mib)))
	total := mib
	for range time.Tick(step) {
		leaked = append(leaked, touch(make([]byte, total)))
		total *= 2
	}
}

// leakBurst leaks burstMB MiB per second in 4 MiB chunks, as fast as a
// runaway loop would.
func leakBurst(burstMB float64) {
	const chunk = 4 * mib
	every := time.Duration(float64(time.Second) * chunk / mib / burstMB)
	next := time.Now()
	for {
		leaked = append(leaked, touch(make([]byte, chunk)))
		next = next.Add(every)
		time.Sleep(time.Until(next))
	}
}

// leakJump rises to level×limit, sits there for hold, then makes one
// allocation as large as the limit.
func leakJump(limit int64, level float64, hold time.Duration) {
	target := int(float64(limit) * level)
	for total := 0; total < target; total += 4 * mib {
		leaked = append(leaked, touch(make([]byte, 4*mib)))
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(hold)
	leaked = append(leaked, touch(make([]byte, limit)))
}

// leakShmem grows a file on tmpfs by rateMB MiB per second: the pages are
// shmem charged to the container's cgroup, so the working set grows while
// the Go heap stays as it was (one reused 1 MiB buffer).
func leakShmem(path string, rateMB float64) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		slog.Error("shmem leak", "err", err)
		return
	}
	buf := touch(make([]byte, mib))
	every := time.Duration(float64(time.Second) / rateMB)
	for range time.Tick(every) {
		if _, err := f.Write(buf); err != nil {
			slog.Error("shmem leak", "err", err)
			return
		}
	}
}

// cgroupLimit reads the memory limit of the cgroup the process sees at
// /sys/fs/cgroup (the container's own view under a container runtime).
func cgroupLimit() (int64, error) {
	for _, p := range []string{"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := strings.TrimSpace(string(b))
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 || n >= 1<<60 {
			return 0, fmt.Errorf("%s: no limit (%q)", p, s)
		}
		return n, nil
	}
	return 0, errors.New("no cgroup memory limit file found")
}
