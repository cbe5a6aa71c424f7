package watch

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/trigger"
)

// hostDaemon is a second kind of target: a named host process, keyed by
// node and daemon name.
type hostDaemon struct{ node, daemon string }

func (d hostDaemon) Segments() [3]string        { return [3]string{"_node", d.node, d.daemon} }
func (d hostDaemon) Describe(*capture.Metadata) {}

// fixedDaemon is a second Discoverer: one host process of a known PID,
// whatever its environment says, named as configured.
type fixedDaemon struct {
	pid   int
	path  string
	named int // Identify calls
}

func (d *fixedDaemon) Discover() (map[string]Group, error) {
	return map[string]Group{"daemon:containerd": {Path: d.path, PIDs: []int{d.pid}}}, nil
}

func (d *fixedDaemon) Identify(string, Group) (string, capture.Target, bool) {
	d.named++
	return "containerd", hostDaemon{node: "node-1", daemon: "containerd"}, true
}

// TestDiscovererYieldsOwnTargets: a Watcher given another Discoverer
// watches what it yields, under the name and identity it gives, and the
// capture event carries that identity; the pod strategy would have named
// the process "app" (its HEAPWATCH_CONTAINER_NAME) with a pod identity.
func TestDiscovererYieldsOwnTargets(t *testing.T) {
	root, cg := v2Pod(t)
	fsys, err := procfs.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	d := &fixedDaemon{pid: 20, path: "/../app"}
	rec := &recorder{}
	w := New(Options{Discover: d, Rescan: 50 * time.Millisecond, Trigger: trigger.Options{Thresholds: []float64{75}, GrowthFloor: 99}}, fsys, rec, testLogger(t))
	startWatcher(t, w)
	waitFor(t, 5*time.Second, "the daemon to be watched", func() bool { _, ok := find(w, "containerd"); return ok })
	if _, ok := find(w, "app"); ok {
		t.Fatal("the pod strategy ran: the app is watched under its container name")
	}
	st, _ := find(w, "containerd")
	want := hostDaemon{node: "node-1", daemon: "containerd"}
	if st.Container.Target != want || st.Container.PIDs[0] != 20 {
		t.Fatalf("daemon watched as %+v", st.Container)
	}
	if err := os.WriteFile(filepath.Join(cg, "memory.current"), []byte(strconv.Itoa(80*mib)), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the threshold capture", func() bool { c, _ := rec.snapshot(); return len(c) > 0 })
	if c, _ := rec.snapshot(); c[0].ev.Container.Target != want || c[0].ev.Container.Name != "containerd" {
		t.Errorf("capture of %+v, want the daemon's identity %+v", c[0].ev.Container, want)
	}
}

// TestPodContainersIdentity: the pod strategy gives each container the
// pod's identity with the container's name.
func TestPodContainersIdentity(t *testing.T) {
	root, _ := v2Pod(t)
	fsys, err := procfs.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	pod := capture.PodContainer{Namespace: "shop", Pod: "web-1", UID: "u1", Node: "n1"}
	d := NewPodContainers(fsys, pod)
	groups, err := d.Discover()
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 1 {
		t.Fatalf("groups %+v, want the app's only (not the sidecar's, not pause)", groups)
	}
	for key, g := range groups {
		name, target, sure := d.Identify(key, g)
		want := pod
		want.Container = "app"
		if name != "app" || !sure || target != want || g.PIDs[0] != 20 {
			t.Errorf("Identify(%q, %+v) = %q, %+v, %v; want app, %+v", key, g, name, target, sure, want)
		}
	}
}
