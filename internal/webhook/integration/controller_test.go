package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/oomevents"
	"github.com/heapwatch/heapwatch/internal/testenv"
	"github.com/heapwatch/heapwatch/internal/webhook/internal/podgen"
	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/store"
	"github.com/heapwatch/heapwatch/store/s3test"
)

// startController runs the controller over all namespaces, electing its
// leader with a Lease in leaseNS.
func startController(t *testing.T, leaseNS string) *testenv.Controller {
	t.Helper()
	cfg := oomevents.DefaultConfig()
	cfg.LeaderElectionNamespace = leaseNS
	cfg.CaptureWait = 3 * time.Second
	c, err := testenv.StartController(restConfig, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	return c
}

// heapProfile is a real pprof heap profile (the format the sidecar fetches)
// whose top in-use function is fn with inuse bytes.
func heapProfile(t *testing.T, fn string, inuse int64) []byte {
	t.Helper()
	f1 := &profile.Function{ID: 1, Name: fn}
	f2 := &profile.Function{ID: 2, Name: "main.handle"}
	l1 := &profile.Location{ID: 1, Address: 0x1000, Line: []profile.Line{{Function: f1}}}
	l2 := &profile.Location{ID: 2, Address: 0x2000, Line: []profile.Line{{Function: f2}}}
	p := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "alloc_objects", Unit: "count"}, {Type: "alloc_space", Unit: "bytes"},
			{Type: "inuse_objects", Unit: "count"}, {Type: "inuse_space", Unit: "bytes"}},
		Sample: []*profile.Sample{
			{Location: []*profile.Location{l1, l2}, Value: []int64{10, inuse, 10, inuse}},
			{Location: []*profile.Location{l2}, Value: []int64{1, 1 << 20, 1, 1 << 20}},
		},
		Location: []*profile.Location{l1, l2}, Function: []*profile.Function{f1, f2},
		PeriodType: &profile.ValueType{Type: "space", Unit: "bytes"}, Period: 512 * 1024,
	}
	var b bytes.Buffer
	if err := p.Write(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// storeFinal stores a capture of the container marked final for a kill at
// killedAt, as the sidecar does, and returns its ID.
func storeFinal(t *testing.T, st store.Store, pod *corev1.Pod, container string, killedAt time.Time, lead time.Duration, top string) string {
	t.Helper()
	at := killedAt.Add(-lead).Truncate(time.Millisecond).UTC()
	n := capture.Name{Namespace: pod.Namespace, Pod: pod.Name, Container: container, Time: at, Trigger: "threshold-90"}
	heap := heapProfile(t, top, 880<<20)
	killed := killedAt.UTC()
	m := capture.Metadata{SchemaVersion: capture.SchemaVersion, ID: n.ID(), Namespace: pod.Namespace, Pod: pod.Name,
		PodUID: string(pod.UID), Container: container, Trigger: n.Trigger, Reason: "working set crossed 90%",
		DetectedAt: at, CapturedAt: at, CompletedAt: at.Add(50 * time.Millisecond),
		Memory:   capture.Memory{UsageBytes: 950 << 20, WorkingSetBytes: 940 << 20, LimitBytes: 1 << 30},
		Profiles: []capture.Profile{{Name: "heap", Key: n.ProfileKey("heap"), Bytes: int64(len(heap))}},
		Final:    true, OOMKilledAt: &killed,
		MemoryStat: map[string]uint64{"anon": 900 << 20, "file": 30 << 20, "shmem": 0, "kernel": 20 << 20}}
	for i := range 10 {
		ws := uint64(500+50*i) << 20
		m.Timeline = append(m.Timeline, capture.Point{Time: at.Add(time.Duration(i-9) * time.Second), UsageBytes: ws,
			WorkingSetBytes: ws, LimitBytes: 1 << 30, Trigger: map[bool]string{true: n.Trigger}[i == 9]})
	}
	meta, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := st.Put(ctx, n.ProfileKey("heap"), bytes.NewReader(heap), int64(len(heap))); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, n.MetadataKey(), bytes.NewReader(meta), int64(len(meta))); err != nil {
		t.Fatal(err)
	}
	return n.ID()
}

// oomKill records a kill of the app container in the pod's status, as the
// kubelet does, and returns the updated pod.
func oomKill(t *testing.T, cs kubernetes.Interface, pod *corev1.Pod, restarts int32, finished time.Time) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	p, err := cs.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(finished.Add(time.Second))}}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Image: "leaky", RestartCount: restarts, Ready: true, State: running,
		LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			Reason: "OOMKilled", ExitCode: 137, FinishedAt: metav1.NewTime(finished), StartedAt: metav1.NewTime(finished.Add(-time.Minute))}}}}
	if sidecarOf(p) != nil {
		p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: names.SidecarName, Image: sidecarImage, State: running, Ready: true}}
	}
	p, err = cs.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// eventsOf lists the controller's Events on a pod, oldest first.
func eventsOf(t *testing.T, cs kubernetes.Interface, pod *corev1.Pod) []corev1.Event {
	t.Helper()
	list, err := cs.CoreV1().Events(pod.Namespace).List(context.Background(), metav1.ListOptions{
		FieldSelector: fields.Set{"involvedObject.uid": string(pod.UID), "source": oomevents.Component}.String()})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

func waitEvents(t *testing.T, cs kubernetes.Interface, pod *corev1.Pod, n int) []corev1.Event {
	t.Helper()
	var evs []corev1.Event
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		evs = eventsOf(t, cs, pod)
		return len(evs) >= n, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s: %d event(s) after 30s, want %d: %+v", pod.Namespace, pod.Name, len(evs), n, evs)
	}
	return evs
}

func findEvent(evs []corev1.Event, finished time.Time) *corev1.Event {
	for i := range evs {
		if evs[i].Annotations[oomevents.AnnotationFinishedAt] == finished.UTC().Format(time.RFC3339) {
			return &evs[i]
		}
	}
	return nil
}

func createPod(t *testing.T, cs kubernetes.Interface, ns, name string, opts ...podgen.Option) *corev1.Pod {
	t.Helper()
	p, err := cs.CoreV1().Pods(ns).Create(context.Background(), podgen.Pod(name, opts...), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestControllerPostsOOMEvents: a kill recorded in an injected pod's status
// gets an Event naming its final capture in the real S3 server, or a Warning
// without one; a second kill a second Event; a restarted controller repeats
// none; a pod that was not injected is never watched.
func TestControllerPostsOOMEvents(t *testing.T) {
	srv := s3test.Start(t)
	srv.Setenv(t)
	cs, _ := client(t)
	ns := enabled(t, cs)
	other, err := namespaceFor(context.Background(), cs, nil) // not opted in
	if err != nil {
		t.Fatal(err)
	}
	url := srv.URL("fleet")
	st, err := store.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	s3pod := podgen.Annotations("heapwatch.io/storage", url)
	captured := createPod(t, cs, ns, "api-captured", s3pod)
	if captured.Labels[names.StatusLabel] != names.StatusInjected {
		t.Fatalf("injected pod labels = %v, want %s=%s", captured.Labels, names.StatusLabel, names.StatusInjected)
	}
	uncaptured := createPod(t, cs, ns, "api-uncaptured", s3pod)
	inPod := createPod(t, cs, ns, "api-file") // default file:// storage inside the pod
	plain := createPod(t, cs, other, "api-plain")
	if _, ok := plain.Labels[names.StatusLabel]; ok || sidecarOf(plain) != nil {
		t.Fatalf("pod in a namespace not opted in was injected: %v", plain.Labels)
	}

	ctl := startController(t, ns)
	// Whole seconds, as the kubelet reports finishedAt.
	kill1 := time.Now().Add(-10 * time.Second).Truncate(time.Second)
	id1 := storeFinal(t, st, captured, "app", kill1.Add(400*time.Millisecond), 1500*time.Millisecond, "main.serializeJSON")
	oomKill(t, cs, plain, 1, kill1)
	captured = oomKill(t, cs, captured, 1, kill1)
	uncaptured = oomKill(t, cs, uncaptured, 1, kill1)
	inPod = oomKill(t, cs, inPod, 1, kill1)

	ev := waitEvents(t, cs, captured, 1)[0]
	if ev.Reason != oomevents.ReasonCaptured || ev.Type != corev1.EventTypeNormal {
		t.Errorf("event = %s %s: %s; want Normal %s", ev.Type, ev.Reason, ev.Message, oomevents.ReasonCaptured)
	}
	for _, want := range []string{id1, "main.serializeJSON 880 MiB", "1.5s before the OOM kill", "working set 940 MiB of 1024 MiB"} {
		if !strings.Contains(ev.Message, want) {
			t.Errorf("event message %q lacks %q", ev.Message, want)
		}
	}
	if ev.InvolvedObject.UID != captured.UID || ev.Annotations[oomevents.AnnotationCapture] != id1 {
		t.Errorf("event on %s annotated %v; want on pod %s with capture %s", ev.InvolvedObject.UID, ev.Annotations, captured.UID, id1)
	}

	warn := waitEvents(t, cs, uncaptured, 1)[0]
	if warn.Reason != oomevents.ReasonWithoutProfile || warn.Type != corev1.EventTypeWarning || !strings.Contains(warn.Message, "no capture of app") {
		t.Errorf("uncaptured pod's event = %s %s: %q; want Warning %s saying no capture was found", warn.Type, warn.Reason, warn.Message, oomevents.ReasonWithoutProfile)
	}
	where := waitEvents(t, cs, inPod, 1)[0]
	if where.Reason != oomevents.ReasonStoredInPod || !strings.Contains(where.Message, "/var/lib/heapwatch/captures") ||
		!strings.Contains(where.Message, "kubectl cp") {
		t.Errorf("file:// pod's event = %s: %q; want %s saying where the capture is", where.Reason, where.Message, oomevents.ReasonStoredInPod)
	}

	// A second kill of the same container: a second Event, for its own capture.
	kill2 := kill1.Add(5 * time.Second)
	id2 := storeFinal(t, st, captured, "app", kill2.Add(300*time.Millisecond), 700*time.Millisecond, "main.cacheRows")
	captured = oomKill(t, cs, captured, 2, kill2)
	evs := waitEvents(t, cs, captured, 2)
	if e := findEvent(evs, kill2); e == nil || !strings.Contains(e.Message, id2) || !strings.Contains(e.Message, "main.cacheRows") {
		t.Errorf("second kill's event = %+v; want one naming %s and main.cacheRows", e, id2)
	}
	series := fmt.Sprintf(`heapwatch_oom_kills_total{captured="true",namespace="%s",reason="final-capture"}`, ns)
	if got := metricAt(t, ctl.MetricsPort, series); got != 2 {
		t.Errorf("%s = %v, want 2", series, got)
	}
	if got := metricAt(t, ctl.MetricsPort, fmt.Sprintf(`heapwatch_oom_kills_total{captured="false",namespace="%s",reason="none-found"}`, ns)); got != 1 {
		t.Errorf("uncaptured kills = %v, want 1", got)
	}
	if got := metricAt(t, ctl.MetricsPort, "heapwatch_oom_capture_lead_time_seconds_count"); got < 2 {
		t.Errorf("lead-time observations = %v, want at least 2", got)
	}

	// A restarted controller sees the same kills in the pods' status and
	// posts nothing again; a kill after the restart proves it is running.
	ctl.Stop()
	ctl = startController(t, ns)
	late := createPod(t, cs, ns, "api-late", s3pod)
	kill3 := time.Now().Add(-5 * time.Second).Truncate(time.Second)
	storeFinal(t, st, late, "app", kill3, time.Second, "main.serializeJSON")
	late = oomKill(t, cs, late, 1, kill3)
	waitEvents(t, cs, late, 1)
	for _, p := range []*corev1.Pod{captured, uncaptured, inPod} {
		evs := eventsOf(t, cs, p)
		want := map[string]int{captured.Name: 2}[p.Name]
		if want == 0 {
			want = 1
		}
		if len(evs) != want {
			t.Errorf("pod %s: %d events after the restart, want %d: %+v", p.Name, len(evs), want, evs)
		}
		for _, e := range evs {
			if e.Count != 1 {
				t.Errorf("pod %s: event %s count %d, want 1", p.Name, e.Name, e.Count)
			}
		}
	}
	// The counter lives on in this process: two kills before, the late one.
	if got := metricAt(t, ctl.MetricsPort, series); got != 3 {
		t.Errorf("after the restart %s = %v, want 3 (2 before it, none again, 1 new)", series, got)
	}
	if evs := eventsOf(t, cs, plain); len(evs) != 0 {
		t.Errorf("pod that was not injected got events: %+v", evs)
	}

	// From the Event to the line: the CLI lists the namespace's kills from
	// the API server with a kubeconfig, and explains the pod.
	hw := buildCLI(t)
	kubeconfig := writeKubeconfig(t)
	out := runCLI(t, hw, "--storage", url, "explain", "--kubeconfig", kubeconfig, "-n", ns)
	rows := map[string]string{} // pod/container: the rest of its row
	for line := range strings.SplitSeq(out, "\n") {
		if f := strings.Fields(line); len(f) >= 4 {
			rows[f[2]] = strings.Join(f[3:], " ")
		}
	}
	for pod, want := range map[string]string{"api-captured/app": "2 " + id2, "api-uncaptured/app": "1 - (none in", "api-late/app": "1 " + ns + "/api-late/app/"} {
		if !strings.HasPrefix(rows[pod], want) {
			t.Errorf("explain -n %s: row of %s is %q, want it to start with %q:\n%s", ns, pod, rows[pod], want, out)
		}
	}
	if _, ok := rows["api-plain/app"]; ok {
		t.Errorf("explain -n %s lists a pod of another namespace:\n%s", ns, out)
	}
	out = runCLI(t, hw, "--storage", url, "explain", "--kubeconfig", kubeconfig, "-n", ns, "api-captured")
	for _, want := range []string{"Capture   " + id2 + " (final before the OOM kill)", "after the capture; 2 restarts", "Verdict   the Go heap explains",
		"Timeline  working set (#) against the limit (-), 10 samples", "main.cacheRows", "open " + id2} {
		if !strings.Contains(out, want) {
			t.Errorf("explain %s/api-captured lacks %q:\n%s", ns, want, out)
		}
	}
}

// buildCLI builds cmd/heapwatch for the test.
func buildCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "heapwatch")
	if out, err := exec.Command("go", "build", "-o", bin, "../../../cmd/heapwatch").CombinedOutput(); err != nil {
		t.Fatalf("go build cmd/heapwatch: %v\n%s", err, out)
	}
	return bin
}

func runCLI(t *testing.T, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, append(args, "-o", t.TempDir())...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("heapwatch %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// writeKubeconfig writes a kubeconfig for the test API server, as a user
// would have one.
func writeKubeconfig(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := testenv.WriteKubeconfig(restConfig, path); err != nil {
		t.Fatal(err)
	}
	return path
}
