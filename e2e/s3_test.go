package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/testkit"
	"github.com/heapwatch/heapwatch/store"
	"github.com/heapwatch/heapwatch/store/s3test"
)

// spooled counts the captures waiting in the sidecar's spool directory.
func spooled(t testing.TB, spoolDir string) int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(spoolDir, "entries"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(entries)
}

// logRecord is one JSON log line of the sidecar.
type logRecord struct {
	Msg         string `json:"msg"`
	ID          string `json:"id"`
	Held        bool   `json:"held"`
	Credentials bool   `json:"credentials"`
	Err         string `json:"err"`
	// Of the start-up line.
	SecurityMode string `json:"securityMode"`
	UID          int    `json:"uid"`
	GID          int    `json:"gid"`
	// Of "container not watched".
	Container string `json:"container"`
	Reason    string `json:"reason"`
	Detail    string `json:"detail"`
	// Of "serving metrics".
	Addr string `json:"addr"`
}

func logRecords(logs string) []logRecord {
	var out []logRecord
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r logRecord
		if json.Unmarshal(sc.Bytes(), &r) == nil {
			out = append(out, r)
		}
	}
	return out
}

var keyLayout = regexp.MustCompile(`^e2e/leaky-0/app/\d{8}T\d{6}\.\d{3}Z-[a-z0-9-]+(\.json|-heap\.pb\.gz|-goroutine\.txt)$`)

func TestS3Storage(t *testing.T) {
	requirePods(t)
	srv := s3test.Start(t)
	srv.Setenv(t) // for the test's own reads
	r := startPod(t, podOptions{shape: "linear", storage: srv.URL("captures"), env: srv.Env(), sharedNet: true})
	r.expectFinalHeap(t, "main.leakLinear")
	st := openStore(t, r.storage)
	var keys []string
	if err := st.List(t.Context(), "", func(o store.Object) error { keys = append(keys, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !keyLayout.MatchString(k) {
			t.Errorf("key %q not in the layout <namespace>/<pod>/<container>/<time>-<trigger>[-<profile>]", k)
		}
	}
	for _, m := range captures(t, st) {
		for _, p := range m.Profiles {
			if p.Error == "" && p.Bytes > 0 {
				if b, err := testkit.ReadObject(st, p.Key); err != nil || int64(len(b)) != p.Bytes {
					t.Errorf("profile %s: %d bytes (%v), metadata says %d", p.Key, len(b), err, p.Bytes)
				}
			}
		}
	}
}

func TestS3DownMidRunLosesNothing(t *testing.T) {
	requirePods(t)
	srv := s3test.Start(t)
	srv.Setenv(t) // for the test's own reads
	r := startPod(t, podOptions{shape: "linear", storage: srv.URL("captures"), env: srv.Env(), sharedNet: true})
	// Down before the leak starts: every capture must wait in the spool.
	srv.Stop()
	r.waitOOMKill(t, time.Minute)
	waitUntil(t, 30*time.Second, "a final capture spooled", func() bool {
		return strings.Contains(r.logs.String(), "marked final") && spooled(t, r.spoolDir) > 0
	})
	srv.Start()
	waitUntil(t, time.Minute, "the spool drained after the server came back", func() bool { return spooled(t, r.spoolDir) == 0 })

	st := openStore(t, r.storage)
	stored := map[string]*capture.Metadata{}
	for _, m := range captures(t, st) {
		stored[m.ID] = m
	}
	var want []string
	for _, rec := range logRecords(r.logs.String()) {
		if rec.Msg == "captured" && !rec.Held {
			want = append(want, rec.ID)
		}
	}
	if len(want) == 0 {
		t.Fatal("the sidecar logged no uploaded capture")
	}
	for _, id := range want {
		if stored[id] == nil {
			t.Errorf("capture %s lost: not in storage after the server came back", id)
		}
	}
	checkFinalHeap(t, st, finalCapture(t, st, time.Second), "main.leakLinear")
}

func TestS3WrongCredentialsKeepsSpool(t *testing.T) {
	requirePods(t)
	srv := s3test.Start(t)
	srv.Setenv(t) // for the test's own reads
	env := append(srv.Env(), "AWS_SECRET_ACCESS_KEY=not-the-secret")
	r := startPod(t, podOptions{shape: "linear", storage: srv.URL("captures"), env: env, sharedNet: true})
	r.waitOOMKill(t, time.Minute)
	waitUntil(t, 30*time.Second, "a clear credentials error", func() bool {
		for _, rec := range logRecords(r.logs.String()) {
			if rec.Credentials && strings.Contains(rec.Err, "credentials") {
				return true
			}
		}
		return false
	})
	waitUntil(t, 30*time.Second, "the final capture in the spool", func() bool {
		return strings.Contains(r.logs.String(), "marked final")
	})
	if n := spooled(t, r.spoolDir); n == 0 {
		t.Error("spool is empty: captures were dropped on a credentials error")
	}
	if n := len(captures(t, openStore(t, r.storage))); n != 0 {
		t.Errorf("%d captures stored with wrong credentials", n)
	}
}

var waitUntil = testkit.WaitFor
