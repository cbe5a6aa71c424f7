package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/sidecar/podsim"
)

// shapes are the leak shapes of the issue, each leaking from its own
// function of examples/leaky.
var shapes = []struct {
	shape string
	fn    string
	args  []string
}{
	{"linear", "main.leakLinear", []string{"-rate", "20"}},
	{"doubling", "main.leakDoubling", []string{"-step", "400ms"}},
	{"burst", "main.leakBurst", []string{"-burst-rate", "400"}},
	{"jump", "main.leakJump", []string{"-jump-level", "0.45", "-jump-hold", "3s"}},
}

// expectFinalHeap waits for the OOM kill and checks the final capture.
func (r *podRun) expectFinalHeap(t *testing.T, fn string) {
	t.Helper()
	r.waitOOMKill(t, time.Minute)
	st := openStore(t, r.storage)
	m := finalCapture(t, st, 30*time.Second)
	checkFinalHeap(t, st, m, fn)
}

func TestOOMKillLeavesFinalHeapProfile(t *testing.T) {
	for _, tt := range shapes {
		t.Run(tt.shape, func(t *testing.T) {
			r := startPod(t, podOptions{shape: tt.shape, appArgs: tt.args})
			r.expectFinalHeap(t, tt.fn)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if code, err := r.app.Wait(ctx); err != nil || code != 137 {
				t.Errorf("app exit code %d (%v), want 137 (SIGKILL by the OOM killer)", code, err)
			}
			if r.sidecar.ExitCode() != -1 {
				t.Errorf("sidecar exited with %d; it must outlive the app's OOM kill", r.sidecar.ExitCode())
			}
		})
	}
}

// TestOOMKillSameUIDNoCapabilities: the leak shapes again, with app and
// sidecar both running as uid and gid 1000 with no capability at all and
// no_new_privs, as the webhook's same-uid mode runs them.
func TestOOMKillSameUIDNoCapabilities(t *testing.T) {
	for _, tt := range shapes {
		t.Run(tt.shape, func(t *testing.T) {
			r := startPod(t, podOptions{shape: tt.shape, appArgs: tt.args, user: &podsim.User{UID: 1000, GID: 1000}})
			r.expectFinalHeap(t, tt.fn)
			var start *logRecord
			for _, rec := range logRecords(r.logs.String()) {
				if rec.Msg == "heapwatch sidecar starting" {
					start = &rec
				}
			}
			if start == nil || start.SecurityMode != "same-uid" || start.UID != 1000 || start.GID != 1000 {
				t.Errorf("sidecar start log %+v, want securityMode same-uid as 1000:1000", start)
			}
		})
	}
}

func TestAwkwardTargets(t *testing.T) {
	tests := []struct {
		name string
		o    podOptions
	}{
		{"silent port beside pprof", podOptions{shape: "linear", appArgs: []string{"-silent-addr", "127.0.0.1:0"}}},
		{"pprof under a non-default path", podOptions{shape: "linear",
			appArgs: []string{"-pprof-path", "/internal/pprof"}, env: []string{"HEAPWATCH_PPROF_PATH=/internal/pprof"}}},
		// The first process serves HTTP, but not pprof under the configured
		// path; the second serves pprof and leaks.
		{"container with two processes", podOptions{appArgv: []string{"sh", "-c",
			leakyBin + " -shape none -addr 127.0.0.1:0 -pprof-path /elsewhere & exec " + strings.Join(leakyArgs("linear"), " ")}}},
		{"read-only cgroup view (no kernel notifications)", podOptions{shape: "linear", readOnlyCG: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startPod(t, tt.o)
			r.expectFinalHeap(t, "main.leakLinear")
		})
	}
}
