//go:build node

package node_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/capture/catalog"
	"github.com/heapwatch/heapwatch/internal/testkit"
)

// benchShapes are the leak shapes the node's capture rate is measured for:
// doubling (the story's) and burst (400 MiB/s, the hardest to beat).
var benchShapes = []struct {
	shape, fn string
	args      []string
}{
	{"doubling", "main.leakDoubling", []string{"-step", "400ms"}},
	{"burst", "main.leakBurst", []string{"-burst-rate", "400"}},
}

// BenchmarkNodeCaptureRate runs examples/leaky to its OOM kill on the real
// node, HEAPWATCH_NODE_KILLS times per leak shape (default 10; b.N when
// larger), each kill in a new pod (restartPolicy Never: no CrashLoopBackOff
// between kills), and reports the share of kills whose final capture in S3
// names the leaking function (capture-%), the capture's lead before the
// kill, and the time from the app's start (containerd's record) to the
// sidecar's "watching container" (start-to-watch).
func BenchmarkNodeCaptureRate(b *testing.B) {
	c := startCluster(b)
	kills := 10
	if v := os.Getenv("HEAPWATCH_NODE_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("HEAPWATCH_NODE_KILLS=%q: want a positive number", v)
		}
		kills = n
	}
	for _, tt := range benchShapes {
		b.Run(tt.shape, func(b *testing.B) {
			runs := max(kills, b.N)
			var ok int
			var lead, toWatch []time.Duration
			for i := range runs {
				r, err := c.oneKill(b, fmt.Sprintf("bench-%s-%d", tt.shape, i), append(slices.Clone(tt.args), "-shape", tt.shape, "-delay", "5s"), tt.fn)
				if r.toWatch > 0 {
					toWatch = append(toWatch, r.toWatch)
				}
				if err != nil {
					b.Logf("kill %d: %v", i, err)
					continue
				}
				ok++
				lead = append(lead, r.lead)
			}
			summary.kills += runs
			summary.captured += ok
			b.ReportMetric(100*float64(ok)/float64(runs), "capture-%")
			b.ReportMetric(float64(runs), "kills")
			if len(lead) > 0 {
				b.ReportMetric(testkit.Millis(testkit.Percentile(lead, 50)), "lead-p50-ms")
				b.ReportMetric(testkit.Millis(slices.Min(lead)), "lead-min-ms")
			}
			if len(toWatch) > 0 {
				b.ReportMetric(testkit.Millis(testkit.Percentile(toWatch, 50)), "start-to-watch-p50-ms")
				b.ReportMetric(testkit.Millis(slices.Max(toWatch)), "start-to-watch-max-ms")
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// killResult is what one kill on the node measured.
type killResult struct {
	lead, toWatch time.Duration
}

// oneKill creates a leaky pod with args, waits for its OOM kill and its
// final capture, checks the capture names fn, and deletes the pod. Errors
// are a missed capture; the node failing is fatal.
func (c *cluster) oneKill(b *testing.B, name string, args []string, fn string) (killResult, error) {
	b.Helper()
	ctx := b.Context()
	p := leakyPod(name, leakyAnnotations)
	p.Spec.RestartPolicy = corev1.RestartPolicyNever
	p.Spec.Containers[0].Args = args
	pod, err := c.cs.CoreV1().Pods(namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = c.cs.CoreV1().Pods(namespace).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	}()
	var term *corev1.ContainerStateTerminated
	waitFor(b, 5*time.Minute, name+": the app's end", func() (bool, error) {
		got, err := c.cs.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod, term = got, appStatus(got).State.Terminated
		return term != nil, nil
	})
	var r killResult
	exit, err := c.n.ContainerExit(ctx, term.ContainerID)
	if err != nil {
		b.Fatal(err)
	}
	recs, _ := sidecarLog(ctx, b, c.n, pod)
	for _, rec := range recs {
		if rec["msg"] != "watching container" {
			continue
		}
		if at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(rec["time"])); err == nil {
			r.toWatch = at.Sub(exit.StartedAt)
			break
		}
	}
	if term.Reason != "OOMKilled" {
		return r, fmt.Errorf("the app ended %s (exit %d), not OOMKilled", term.Reason, term.ExitCode)
	}
	var m *capture.Metadata
	deadline := time.Now().Add(90 * time.Second)
	for m == nil {
		entries, err := catalog.Scan(ctx, c.captures, capture.Prefix(namespace, name, "app"), func(capture.Name) bool { return true })
		if err == nil {
			err = catalog.LoadMetadata(ctx, c.captures, entries)
		}
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range entries {
			if e.Meta != nil && e.Meta.Final {
				m = e.Meta
			}
		}
		if m == nil && time.Now().After(deadline) {
			return r, fmt.Errorf("no capture marked final within 90 s of the kill (%d captures)", len(entries))
		}
		time.Sleep(time.Second)
	}
	if err := testkit.FinalHeap(c.captures, m, fn); err != nil {
		return r, err
	}
	r.lead = m.OOMKilledAt.Sub(m.CapturedAt)
	return r, nil
}
