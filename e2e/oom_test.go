package e2e

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/heapwatch/heapwatch/internal/podsim"
	"github.com/heapwatch/heapwatch/internal/webhook/inject"
	"github.com/heapwatch/heapwatch/settings"
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

// TestOOMKillLeavesFinalHeapProfile runs every shape with kernel
// notifications (a writable cgroup view) and with polling only (read-only,
// as in every real pod).
func TestOOMKillLeavesFinalHeapProfile(t *testing.T) {
	for _, mode := range []struct {
		name     string
		readOnly bool
	}{{"notify", false}, {"polling", true}} {
		for _, tt := range shapes {
			t.Run(mode.name+"/"+tt.shape, func(t *testing.T) {
				testShape(t, podOptions{shape: tt.shape, appArgs: tt.args, readOnlyCG: mode.readOnly}, tt.fn)
			})
		}
	}
}

// testShape runs one pod to the app's OOM kill and checks the final capture.
func testShape(t *testing.T, o podOptions, fn string) {
	r := startPod(t, o)
	r.expectFinalHeap(t, fn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if code, err := r.app.Wait(ctx); err != nil || code != 137 {
		t.Errorf("app exit code %d (%v), want 137 (SIGKILL by the OOM killer)", code, err)
	}
	if r.sidecar.ExitCode() != -1 {
		t.Errorf("sidecar exited with %d; it must outlive the app's OOM kill", r.sidecar.ExitCode())
	}
}

// TestOOMKillSameUIDNoCapabilities: the leak shapes again, with app and
// sidecar both running as uid and gid 1000 with no capability at all and
// no_new_privs, as the webhook injects the sidecar of such a pod in a
// namespace enforcing Pod Security restricted.
func TestOOMKillSameUIDNoCapabilities(t *testing.T) {
	user, env := sameUIDSidecar(t)
	for _, tt := range shapes {
		t.Run(tt.shape, func(t *testing.T) {
			r := startPod(t, podOptions{shape: tt.shape, appArgs: tt.args, user: user, env: env})
			r.expectFinalHeap(t, tt.fn)
			r.expectSameUIDStart(t)
		})
	}
}

// sameUIDSidecar is the sidecar the webhook injects beside an app running
// as 1000:1000 in a namespace enforcing Pod Security restricted, as podsim
// runs it: its uid and gid, and its security-mode environment variable.
func sameUIDSidecar(t *testing.T) (*podsim.User, []string) {
	t.Helper()
	app := corev1.Container{Name: "app", SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](1000), RunAsGroup: ptr.To[int64](1000)}}
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{app}}}
	res := inject.Inject(pod, inject.Options{Image: "heapwatch", Defaults: settings.Defaults(), NativeSidecar: true, SameUIDOnly: true})
	if !res.Injected || res.Mode != settings.SecurityModeSameUID {
		t.Fatalf("webhook verdict %+v, want a same-uid sidecar", res)
	}
	sc := pod.Spec.InitContainers[0].SecurityContext
	if len(sc.Capabilities.Add) != 0 || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || *sc.AllowPrivilegeEscalation {
		t.Fatalf("the same-uid sidecar is not what podsim.User models (no capabilities, no escalation): %+v", sc)
	}
	user := &podsim.User{UID: int(*sc.RunAsUser), GID: int(*sc.RunAsGroup)}
	setting, _ := settings.Lookup("security-mode")
	return user, []string{setting.EnvVar() + "=" + res.Mode}
}

// expectSameUIDStart checks the sidecar's start-up line names the same-uid
// mode and 1000:1000.
func (r *podRun) expectSameUIDStart(t *testing.T) {
	t.Helper()
	var start *logRecord
	for _, rec := range logRecords(r.logs.String()) {
		if rec.Msg == "heapwatch sidecar starting" {
			start = &rec
		}
	}
	if start == nil || start.SecurityMode != "same-uid" || start.UID != 1000 || start.GID != 1000 {
		t.Errorf("sidecar start log %+v, want securityMode same-uid as 1000:1000", start)
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

// startWithSidecar is a pod whose app starts leaking at once, started at the
// same moment as the sidecar: its exec chain (nsenter, unshare, sh, the app,
// all under one PID) runs while the sidecar makes its first scans, the
// window in which a sidecar that cached an empty command line lost the app
// for good.
var startWithSidecar = podOptions{shape: "linear", appArgs: []string{"-rate", "60", "-delay", "0s"}}

// TestAppStartsWithSidecar runs that pod to its OOM kill several times;
// every kill must leave a final heap profile (BenchmarkAppStartsWithSidecar
// runs it more often).
func TestAppStartsWithSidecar(t *testing.T) {
	for i := range 12 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			r := startPod(t, startWithSidecar)
			r.expectFinalHeap(t, "main.leakLinear")
		})
	}
}
