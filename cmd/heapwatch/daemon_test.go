package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/store"
)

// putDaemon stores a host daemon's capture as the node agent does.
func putDaemon(t testing.TB, st store.Store, node, daemon, trigger string, at time.Time, usage uint64, profiles map[string][]byte) string {
	t.Helper()
	m := capture.Metadata{PID: 812, Trigger: trigger, Reason: "test capture", DetectedAt: at, CapturedAt: at,
		CompletedAt: at.Add(30 * time.Millisecond), Memory: capture.Memory{UsageBytes: usage, WorkingSetBytes: usage}}
	capture.Daemon{Node: node, Name: daemon}.Describe(&m)
	return putMeta(t, st, m, profiles)
}

// daemonSeries stores, besides a pod's ladder, the series of containerd on
// node-a (baseline then growth steps), one of its kubelet and one of
// containerd on node-b.
func daemonSeries(t *testing.T, st store.Store) {
	const gib = 1 << 30
	prof := map[string][]byte{"heap": bytes.Repeat([]byte("h"), 1500)}
	for _, c := range ladder() {
		c.put(t, st)
	}
	putDaemon(t, st, "node-a", "containerd", "baseline", t0.Add(-2*time.Hour), 2*gib, prof)
	putDaemon(t, st, "node-a", "containerd", "step", t0.Add(-time.Hour), 5*gib/2, prof)
	putDaemon(t, st, "node-a", "containerd", "step", t0.Add(30*time.Second), 25*gib/8, prof)
	putDaemon(t, st, "node-a", "kubelet", "baseline", t0.Add(-90*time.Minute), gib/4, prof)
	putDaemon(t, st, "node-b", "containerd", "baseline", t0.Add(-30*time.Minute), gib, prof)
}

// TestLsDaemons: --node and --daemon list host daemons' captures, in
// time order per daemon, apart from pods' captures.
func TestLsDaemons(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		st := openStore(t, url)
		daemonSeries(t, st)
		r := heapwatch(t, "--storage", url, "ls", "--node", "node-a").mustSucceed(t)
		golden(t, "ls_node.golden", r.stdout)
		for _, tc := range []struct {
			args []string
			want []string
		}{
			{[]string{"--node", "node-a", "--daemon", "containerd"}, []string{
				"_node/node-a/containerd/20261123T140132.123Z-step",
				"_node/node-a/containerd/20261123T130102.123Z-step",
				"_node/node-a/containerd/20261123T120102.123Z-baseline"}},
			{[]string{"--daemon", "containerd"}, []string{
				"_node/node-a/containerd/20261123T140132.123Z-step",
				"_node/node-b/containerd/20261123T133102.123Z-baseline",
				"_node/node-a/containerd/20261123T130102.123Z-step",
				"_node/node-a/containerd/20261123T120102.123Z-baseline"}},
			{[]string{"--node", "node-a", "--daemon", "kubelet"}, []string{"_node/node-a/kubelet/20261123T123102.123Z-baseline"}},
			{[]string{"--node", "node-c"}, nil},
			{[]string{"--daemon", "crio"}, nil},
			// A pod's filters never list daemons, and a pod named like a node is not one.
			{[]string{"--pod", "node-a"}, nil},
			{[]string{"--namespace", "shop", "--pod", "worker-1"}, []string{"shop/worker-1/app/20261123T140202.123Z-threshold-bytes"}},
		} {
			r := heapwatch(t, append([]string{"--storage", url, "ls", "-q"}, tc.args...)...).mustSucceed(t)
			if got := strings.Fields(r.stdout); strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("ls -q %v = %q, want %q", tc.args, got, tc.want)
			}
		}
		all := heapwatch(t, "--storage", url, "ls", "-q", "--limit", "0").mustSucceed(t)
		if n := len(strings.Fields(all.stdout)); n != len(ladder())+5 {
			t.Errorf("ls lists %d captures, want every pod's and daemon's (%d)", n, len(ladder())+5)
		}
		r = heapwatch(t, "--storage", url, "ls", "--node", "node-c").mustSucceed(t)
		if !strings.Contains(r.stderr, "matching node=node-c") {
			t.Errorf("empty listing: stderr %q", r.stderr)
		}
		for _, args := range [][]string{{"--node", "node-a", "-n", "shop"}, {"--daemon", "containerd", "--container", "app"}} {
			r := heapwatch(t, append([]string{"--storage", url, "ls"}, args...)...)
			if r.code != exitUsage || !strings.Contains(r.stderr, "--node and --daemon select host daemons' captures") {
				t.Errorf("ls %v: exit %d, %s", args, r.code, r.stderr)
			}
		}

		r = heapwatch(t, "--storage", url, "--output", "json", "ls", "--node", "node-b").mustSucceed(t)
		var out []captureJSON
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			t.Fatal(err)
		}
		if len(out) != 1 || out[0].Node != "node-b" || out[0].Daemon != "containerd" || out[0].Namespace != "" ||
			out[0].Pod != "" || out[0].Container != "" || out[0].Metadata == nil || out[0].Metadata.Daemon != "containerd" {
			t.Errorf("json = %+v", out)
		}
	})
}

// TestDaemonSeriesDiff: top, diff and get take a daemon's capture IDs (or
// prefixes): the diff of its first and latest capture names what grew.
func TestDaemonSeriesDiff(t *testing.T) {
	url := "file://" + t.TempDir()
	st := openStore(t, url)
	oh, nh := heapProfiles(t)
	first := putDaemon(t, st, "node-a", "containerd", "baseline", t0, 2<<30, map[string][]byte{"heap": oh})
	last := putDaemon(t, st, "node-a", "containerd", "step", t0.Add(time.Hour), 3<<30, map[string][]byte{"heap": nh})
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"top", "--native", first}, "leakyAllocation"},
		{[]string{"top", "--native", "_node/node-a/containerd/20261123T150102"}, "growingAllocation"},
		{[]string{"diff", "--native", first, last}, "growingAllocation"},
		{[]string{"diff", first, last}, "growingAllocation"},
	} {
		r := heapwatch(t, append([]string{"--storage", url}, append(tc.args, "-o", t.TempDir())...)...).mustSucceed(t)
		if got := topFunction(t, r.stdout); !strings.HasSuffix(got, "."+tc.want) {
			t.Errorf("%v: top function %q, want %s\n%s", tc.args, got, tc.want, r.stdout)
		}
	}
	r := heapwatch(t, "--storage", url, "get", "_node/node-a/containerd/20261123T14", "-o", t.TempDir()).mustSucceed(t)
	if !strings.Contains(r.stdout, first+" -> ") {
		t.Errorf("get by prefix: %s", r.stdout)
	}
}
