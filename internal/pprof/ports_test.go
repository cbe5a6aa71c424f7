package pprof

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/heapwatch/heapwatch/internal/procfs"
)

// TestPortsOwnsTheEndpointCache: the Ports source finds the test process's
// pprof port among its listening ports (not the silent one beside it),
// answers again from what it remembers without a request, also when a
// capture asks for a recheck, and probes again once told to forget.
func TestPortsOwnsTheEndpointCache(t *testing.T) {
	var probes atomic.Int32
	addr := serveHTTP(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == DefaultPath+"/" {
			probes.Add(1)
			pprof.Index(w, r)
			return
		}
		pprof.Handler(r.URL.Path[len(DefaultPath+"/"):]).ServeHTTP(w, r)
	}))
	silentAddr := rawServer(t, silent)
	port := func(a string) int {
		_, p, _ := net.SplitHostPort(a)
		n, _ := strconv.Atoi(p)
		return n
	}
	fs, err := procfs.NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	s := NewPorts(PortsOptions{Client: NewClient(Options{ProbeTimeout: fast.ProbeTimeout}), Proc: fs, Ports: []int{port(addr), port(silentAddr)}})
	ctx := context.Background()
	pid := os.Getpid()

	eps := s.Endpoints(ctx, []int{pid}, false)
	if len(eps) != 1 || eps[0].PID != pid || eps[0].Port != port(addr) {
		t.Fatalf("Endpoints = %+v, want the pprof port %s of %d", eps, addr, pid)
	}
	if n := probes.Load(); n != 1 {
		t.Fatalf("%d probes of the pprof port, want 1", n)
	}
	for _, recheck := range []bool{false, true} {
		if again := s.Endpoints(ctx, []int{pid}, recheck); len(again) != 1 || again[0] != eps[0] {
			t.Errorf("Endpoints(recheck %v) = %+v, want %+v", recheck, again, eps)
		}
	}
	if n := probes.Load(); n != 1 {
		t.Errorf("%d probes, want the remembered answer", n)
	}
	var b bytes.Buffer
	if _, err := s.Fetch(ctx, eps[0], "goroutine", &b); err != nil || !bytes.Contains(b.Bytes(), []byte("goroutine profile")) {
		t.Errorf("Fetch goroutine: %v, %q", err, b.String())
	}
	s.Forget(eps[0])
	if again := s.Endpoints(ctx, []int{pid}, false); len(again) != 1 || probes.Load() != 2 {
		t.Errorf("after Forget: %+v and %d probes, want the port probed again", again, probes.Load())
	}
	if none := s.Endpoints(ctx, []int{1 << 30}, true); len(none) != 0 {
		t.Errorf("Endpoints of a missing process = %+v", none)
	}
}
