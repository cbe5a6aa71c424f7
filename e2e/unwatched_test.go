package e2e

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/heapwatch/heapwatch/internal/podsim"
)

// TestSameUIDSidecarReportsUnreadableContainers: the same-uid sidecar
// (1000:1000, no capabilities) in a pod whose app runs as 1000:1000 beside
// a container of another uid (1001:1000) and a non-dumpable one
// (1000:1000, prctl PR_SET_DUMPABLE 0). The kernel refuses the sidecar both
// containers' /proc/<pid>/root: it logs one line for each, naming it and
// why, exposes both in heapwatch_unwatched_containers, and still captures
// the app's heap before its OOM kill. Nothing else is reported: not the
// pod's PID 1, which runs as root (standing for the pause process).
func TestSameUIDSidecarReportsUnreadableContainers(t *testing.T) {
	user, env := sameUIDSidecar(t)
	idle := func(name string, u podsim.User, extra ...string) podsim.ContainerSpec {
		return podsim.ContainerSpec{Name: name, Argv: leakyArgs("none", extra...), MemoryLimit: 64 * mib, User: &u}
	}
	// Both are running, the non-dumpable one already non-dumpable, before
	// the sidecar starts: a sidecar that saw the second one in the moment
	// between its exec and its prctl would rightly watch it.
	before := []podsim.ContainerSpec{
		idle("other-uid", podsim.User{UID: 1001, GID: 1000}),
		idle("non-dumpable", podsim.User{UID: 1000, GID: 1000}, "-non-dumpable"),
	}
	ready := func(pod *podsim.Pod) bool {
		for _, c := range before {
			pid, err := pod.Container(c.Name).PID()
			if err != nil {
				return false
			}
			// leaky by then, as the container's user; the files in
			// /proc/<pid> of a non-dumpable process belong to root.
			exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
			st, serr := os.Stat("/proc/" + strconv.Itoa(pid) + "/environ")
			if err != nil || serr != nil || exe != leakyBin {
				return false
			}
			want := uint32(c.User.UID)
			if c.Name == "non-dumpable" {
				want = 0
			}
			if st.Sys().(*syscall.Stat_t).Uid != want {
				return false
			}
		}
		return true
	}
	r := startPod(t, podOptions{shape: "linear", appArgs: []string{"-rate", "20"}, user: user, env: env,
		sharedNet: true, before: before, ready: ready})
	r.expectFinalHeap(t, "main.leakLinear")
	r.expectSameUIDStart(t)

	// Exactly one line per unreadable container over the whole run. Their
	// environ is unreadable too, so the sidecar names them by the leaf of
	// their cgroup path: a container ID in a real pod, the container's name
	// in podsim.
	lines := map[string][]logRecord{}
	for _, rec := range logRecords(r.logs.String()) {
		if rec.Msg == "container not watched" {
			lines[rec.Container] = append(lines[rec.Container], rec)
		}
	}
	wantDetail := map[string]string{
		"other-uid":    "different uid: the app runs as uid 1001, the sidecar as uid 1000 ",
		"non-dumpable": "non-dumpable process (uid 1000; ",
	}
	for name, recs := range lines {
		prefix, ok := wantDetail[name]
		switch {
		case !ok:
			t.Errorf("container %q reported not watched (%+v); only other-uid and non-dumpable are unreadable", name, recs)
		case len(recs) != 1:
			t.Errorf("%d lines for %s, want 1: %+v", len(recs), name, recs)
		case recs[0].Reason != "permission-denied" || !strings.HasPrefix(recs[0].Detail, prefix):
			t.Errorf("%s: reason %q detail %q, want permission-denied and a detail starting %q", name, recs[0].Reason, recs[0].Detail, prefix)
		}
	}
	for name := range wantDetail {
		if len(lines[name]) == 0 {
			t.Errorf("no \"container not watched\" line for %s", name)
		}
	}

	want := map[string]string{
		`heapwatch_unwatched_containers{container="non-dumpable",reason="permission-denied"}`: "1",
		`heapwatch_unwatched_containers{container="other-uid",reason="permission-denied"}`:    "1",
	}
	if diff := cmp.Diff(want, scrape(t, r.logs.String(), "heapwatch_unwatched_containers")); diff != "" {
		t.Errorf("sidecar /metrics (-want +got):\n%s", diff)
	}
}

// scrape fetches the /metrics of the sidecar or agent whose logs are given
// (at the address of its "serving metrics" line; a pod must share the
// test's network) and returns the samples of one metric, value by series.
func scrape(t *testing.T, logs, metric string) map[string]string {
	t.Helper()
	var addr string
	for _, rec := range logRecords(logs) {
		if rec.Msg == "serving metrics" {
			addr = rec.Addr
		}
	}
	if addr == "" {
		t.Fatal("no \"serving metrics\" line in the log")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	got := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		series, value, ok := strings.Cut(sc.Text(), " ")
		if ok && (series == metric || strings.HasPrefix(series, metric+"{")) {
			got[series] = value
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}
