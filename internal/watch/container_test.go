package watch

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/trigger"
)

// TestModeChangeKeepsTriggerState: when a container's notification mode
// changes (its notifier stopped, or a registration was refused) the
// watcher only changes how long it may sleep: the disarmed rung stays
// disarmed and the cooldown of the last shipped capture still demotes the
// next rung to a held capture. The samples are real reads of a v2 fixture
// cgroup, taken by tick as the sampler does; only who changes the mode is
// the test (it records another mode than the notifier reports, which is
// what the watcher sees when notifications stop).
func TestModeChangeKeepsTriggerState(t *testing.T) {
	root, cg := v2Pod(t)
	fsys, err := procfs.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := cgroup.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := mem.Sample()
	if err != nil {
		t.Fatal(err)
	}
	n := mem.Notify()
	rec := &recorder{}
	w := New(Options{Trigger: trigger.Options{Thresholds: []float64{75, 90}, GrowthFloor: 99, Cooldown: time.Hour}}, fsys, rec, testLogger(t))
	c := &watched{w: w, mem: mem, notifier: n, trig: trigger.New(w.o.Trigger),
		c: Container{Name: "app", PIDs: []int{20}, Version: cgroup.V2, Notify: n.Mode()}, last: s, oomKills: s.OOMKills, stop: make(chan struct{})}
	defer c.close()
	type got struct {
		Kind, Suppressed string
		Hold             bool
	}
	tickAt := func(usageMiB int) []got {
		t.Helper()
		if err := os.WriteFile(filepath.Join(cg, "memory.current"), []byte(strconv.Itoa(usageMiB*mib)), 0o600); err != nil {
			t.Fatal(err)
		}
		before, _ := rec.snapshot()
		if err := c.tick(time.Time{}); err != nil {
			t.Fatal(err)
		}
		after, _ := rec.snapshot()
		var out []got
		for _, e := range after[len(before):] {
			out = append(out, got{e.ev.Kind, e.ev.Suppressed, e.ev.Hold})
		}
		return out
	}
	if diff := cmp.Diff([]got{{Kind: "threshold-75"}}, tickAt(80)); diff != "" {
		t.Fatalf("first crossing (-want +got):\n%s", diff)
	}
	c.mu.Lock()
	c.c.Notify = cgroup.ModeEventfd
	c.mu.Unlock()
	if diff := cmp.Diff([]got(nil), tickAt(72)); diff != "" { // above 75-5: the rung stays disarmed
		t.Errorf("at the mode change (-want +got):\n%s", diff)
	}
	if m := c.container().Notify; m != n.Mode() {
		t.Fatalf("mode after the change: %s, want the notifier's %s", m, n.Mode())
	}
	if diff := cmp.Diff([]got(nil), tickAt(80)); diff != "" {
		t.Errorf("75 again after the mode change (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]got{{Kind: "threshold-90", Suppressed: trigger.SuppressedCooldown, Hold: true}}, tickAt(95)); diff != "" {
		t.Errorf("90 within the cooldown (-want +got):\n%s", diff)
	}
}
