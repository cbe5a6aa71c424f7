package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/store"
	"github.com/heapwatch/heapwatch/store/s3test"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// backend is a fresh, empty storage of one kind and its URL.
type backend struct {
	name  string
	start func(t testing.TB) string
}

var backends = []backend{
	{"file", func(t testing.TB) string { return "file://" + t.TempDir() + "/captures" }},
	{"s3", func(t testing.TB) string {
		srv := s3test.Start(t)
		srv.Setenv(t)
		return srv.URL("heapwatch")
	}},
}

func forEachBackend(t *testing.T, test func(t *testing.T, url string)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { test(t, b.start(t)) })
	}
}

// result is one run of the CLI.
type result struct {
	code           int
	stdout, stderr string
}

func heapwatch(t testing.TB, args ...string) result {
	t.Helper()
	return heapwatchCtx(context.Background(), args...)
}

func heapwatchCtx(ctx context.Context, args ...string) result {
	var out, errOut bytes.Buffer
	code := run(ctx, args, &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

func (r result) mustSucceed(t testing.TB) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	return r
}

func openStore(t testing.TB, url string) store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// capt describes a capture to store.
type capt struct {
	ns, pod, container, trigger string
	at                          time.Time
	usage, limit                uint64
	final                       bool
	profiles                    map[string][]byte
}

func (c capt) name() capture.Name {
	return capture.Name{Namespace: c.ns, Pod: c.pod, Container: c.container, Time: c.at, Trigger: c.trigger}
}

// put stores a capture the way the sidecar does: profiles, then metadata.
func (c capt) put(t testing.TB, st store.Store) string {
	t.Helper()
	m := capture.Metadata{
		Namespace: c.ns, Pod: c.pod, Container: c.container,
		PID: 42, Port: 6060, Trigger: c.trigger, Reason: "test capture",
		DetectedAt: c.at, CapturedAt: c.at, CompletedAt: c.at.Add(30 * time.Millisecond),
		Memory: capture.Memory{UsageBytes: c.usage, WorkingSetBytes: c.usage, LimitBytes: c.limit},
		Final:  c.final,
	}
	if c.final {
		killed := c.at.Add(400 * time.Millisecond)
		m.OOMKilledAt = &killed
	}
	return putMeta(t, st, m, c.profiles)
}

var t0 = time.Date(2026, 11, 23, 14, 1, 2, 123e6, time.UTC)

// ladder is a pod's captures along a threshold ladder up to its OOM kill,
// plus another pod and namespace.
func ladder() []capt {
	const mib = 1 << 20
	prof := map[string][]byte{"heap": bytes.Repeat([]byte("h"), 1500), "goroutine": []byte("goroutine profile: total 1\n")}
	return []capt{
		{"shop", "api-7d9f", "app", "threshold-60", t0, 77 * mib, 128 * mib, false, prof},
		{"shop", "api-7d9f", "app", "threshold-75", t0.Add(2 * time.Second), 96 * mib, 128 * mib, false, prof},
		{"shop", "api-7d9f", "app", "predictive", t0.Add(3 * time.Second), 120 * mib, 128 * mib, true, prof},
		{"shop", "api-7d9f", "proxy", "threshold-90", t0.Add(-time.Hour), 60 * mib, 64 * mib, false, prof},
		{"shop", "worker-1", "app", "threshold-bytes", t0.Add(time.Minute), 600 * mib, 0, false, prof},
		{"batch", "job-x", "main", "threshold-60", t0.Add(-24 * time.Hour), 700 * mib, 1024 * mib, false, prof},
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run with -update if intended)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestLsEmptyStorage(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		r := heapwatch(t, "--storage", url, "ls").mustSucceed(t)
		if r.stdout != "" || !strings.Contains(r.stderr, "no captures in "+openStore(t, url).String()) {
			t.Errorf("stdout %q, stderr %q; want nothing and a 'no captures in' line", r.stdout, r.stderr)
		}
		r = heapwatch(t, "--storage", url, "ls", "--namespace", "shop", "--output", "json").mustSucceed(t)
		if strings.TrimSpace(r.stdout) != "[]" || !strings.Contains(r.stderr, "matching namespace=shop") {
			t.Errorf("json: stdout %q, stderr %q", r.stdout, r.stderr)
		}
		for _, args := range [][]string{{"get", "shop/api"}, {"top", "shop/api", "--native"}} {
			r := heapwatch(t, append([]string{"--storage", url}, args...)...)
			if r.code != 1 || !strings.Contains(r.stderr, `no capture matches "shop/api"`) {
				t.Errorf("%v: exit %d, stderr %q; want 1 and 'no capture matches'", args, r.code, r.stderr)
			}
		}
	})
}

func TestLs(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		st := openStore(t, url)
		for _, c := range ladder() {
			c.put(t, st)
		}
		r := heapwatch(t, "--storage", url, "ls").mustSucceed(t)
		golden(t, "ls.golden", r.stdout)
		if r.stderr != "" {
			t.Errorf("stderr: %s", r.stderr)
		}

		for _, tc := range []struct {
			args []string
			want []string // IDs, newest first
		}{
			{[]string{"--namespace", "shop", "--pod", "api-7d9f", "--container", "app"}, []string{
				"shop/api-7d9f/app/20261123T140105.123Z-predictive",
				"shop/api-7d9f/app/20261123T140104.123Z-threshold-75",
				"shop/api-7d9f/app/20261123T140102.123Z-threshold-60"}},
			{[]string{"-n", "shop", "--pod", "api-7d9f", "--limit", "2"}, []string{
				"shop/api-7d9f/app/20261123T140105.123Z-predictive",
				"shop/api-7d9f/app/20261123T140104.123Z-threshold-75"}},
			{[]string{"--container", "main"}, []string{"batch/job-x/main/20261122T140102.123Z-threshold-60"}},
			{[]string{"--pod", "worker-1"}, []string{"shop/worker-1/app/20261123T140202.123Z-threshold-bytes"}},
			{[]string{"--namespace", "nope"}, nil},
		} {
			r := heapwatch(t, append([]string{"--storage", url, "ls", "-q"}, tc.args...)...).mustSucceed(t)
			if got := strings.Fields(r.stdout); strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("ls -q %v = %q, want %q", tc.args, got, tc.want)
			}
		}

		// JSON carries the metadata for scripts.
		r = heapwatch(t, "--storage", url, "--output", "json", "ls", "--pod", "api-7d9f", "-c", "app").mustSucceed(t)
		var out []captureJSON
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			t.Fatalf("ls --output json: %v\n%s", err, r.stdout)
		}
		if len(out) != 3 || out[0].Trigger != "predictive" || out[0].Metadata == nil || !out[0].Metadata.Final ||
			out[0].UsagePercent != 93.75 || len(out[0].Profiles) != 2 || out[0].SizeBytes <= 1500 {
			t.Errorf("json[0] = %+v", out[0])
		}
	})
}

func TestLsSince(t *testing.T) {
	url := "file://" + t.TempDir()
	st := openStore(t, url)
	now := time.Now()
	for i, age := range []time.Duration{10 * time.Minute, 3 * time.Hour, 50 * time.Hour} {
		capt{ns: "ns", pod: "p", container: "c", trigger: fmt.Sprintf("t%d", i), at: now.Add(-age)}.put(t, st)
	}
	for since, want := range map[string]int{"1h": 1, "4h": 2, "3d": 3, "1.5d": 2} {
		r := heapwatch(t, "--storage", url, "ls", "--since", since, "-q").mustSucceed(t)
		if got := len(strings.Fields(r.stdout)); got != want {
			t.Errorf("--since %s: %d captures, want %d", since, got, want)
		}
	}
	if r := heapwatch(t, "--storage", url, "ls", "--since", "yesterday"); r.code != exitUsage || !strings.Contains(r.stderr, "not a duration") {
		t.Errorf("bad --since: exit %d, %s", r.code, r.stderr)
	}
}

func TestLsReportsMalformedMetadata(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		st := openStore(t, url)
		good := ladder()[0].put(t, st)
		ctx := context.Background()
		bad := map[string]string{
			"shop/api-7d9f/app/20261123T150000.000Z-threshold-90.json": `{"schemaVersion": 1, "namespace": `,
			"shop/api-7d9f/app/20261123T150001.000Z-predictive.json":   `{"schemaVersion": 7}`,
			"shop/api-7d9f/app/20261123T150002.000Z-growth.json":       "\x00\x01binary",
		}
		for k, v := range bad {
			if err := st.Put(ctx, k, strings.NewReader(v), int64(len(v))); err != nil {
				t.Fatal(err)
			}
		}
		// Not capture keys at all: ignored silently.
		for _, k := range []string{"README.json", "shop/notes.json", "shop/api-7d9f/app/random.json"} {
			st.Put(ctx, k, strings.NewReader("{}"), 2)
		}
		r := heapwatch(t, "--storage", url, "ls").mustSucceed(t)
		for k := range bad {
			if !strings.Contains(r.stderr, "warning: "+k+": unreadable metadata") {
				t.Errorf("stderr lacks a warning for %s:\n%s", k, r.stderr)
			}
			if !strings.Contains(r.stdout, strings.TrimSuffix(k, ".json")) {
				t.Errorf("the capture %s is not listed", k)
			}
		}
		if !strings.Contains(r.stdout, good) || strings.Count(r.stderr, "warning:") != len(bad) {
			t.Errorf("stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
		}
		r = heapwatch(t, "--storage", url, "ls", "--output", "json").mustSucceed(t)
		var out []captureJSON
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || len(out) != 4 {
			t.Fatalf("json: %v, %d entries", err, len(out))
		}
		if out[0].MetadataError == "" || out[0].Metadata != nil || out[3].MetadataError != "" {
			t.Errorf("json metadata errors: %+v", out)
		}
	})
}

func TestGet(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		st := openStore(t, url)
		caps := ladder()
		for _, c := range caps {
			c.put(t, st)
		}
		id := caps[1].name().ID()
		dir := t.TempDir()
		for _, arg := range []string{id, id + ".json", "shop/api-7d9f/app/20261123T140104"} {
			out := filepath.Join(dir, strings.ReplaceAll(arg, "/", "_"))
			r := heapwatch(t, "--storage", url, "get", arg, "-o", out).mustSucceed(t)
			if !strings.Contains(r.stdout, id+" -> "+out) {
				t.Errorf("get %s: stdout %q", arg, r.stdout)
			}
			for _, f := range []string{"20261123T140104.123Z-threshold-75.json", "20261123T140104.123Z-threshold-75-heap.pb.gz", "20261123T140104.123Z-threshold-75-goroutine.txt"} {
				got, err := os.ReadFile(filepath.Join(out, f))
				if err != nil {
					t.Errorf("get %s: %v", arg, err)
					continue
				}
				if strings.HasSuffix(f, "heap.pb.gz") && !bytes.Equal(got, caps[1].profiles["heap"]) {
					t.Errorf("get %s: heap profile content differs", arg)
				}
			}
			if entries, _ := os.ReadDir(out); len(entries) != 3 {
				t.Errorf("get %s: %d files in %s, want 3", arg, len(entries), out)
			}
		}

		out := filepath.Join(dir, "json")
		r := heapwatch(t, "--storage", url, "--output", "json", "get", id, "-o", out).mustSucceed(t)
		var res getResult
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.ID != id || len(res.Files) != 3 {
			t.Errorf("get --output json: %v %+v", err, res)
		}

		// Default directory: named after the capture, in the working directory.
		t.Chdir(t.TempDir())
		heapwatch(t, "--storage", url, "get", id).mustSucceed(t)
		if _, err := os.Stat("api-7d9f_app_20261123T140104.123Z-threshold-75/20261123T140104.123Z-threshold-75.json"); err != nil {
			t.Errorf("default get directory: %v", err)
		}

		for _, tc := range []struct{ arg, want string }{
			{"shop/api-7d9f/app/2026", "matches 3 captures; give more of the ID"},
			{"shop/api-7d9f/app/20261123T140104.123Z-threshold-75x", "no capture matches"},
			{"nope", "no capture matches"},
			{"/etc/passwd", "not a capture ID"},
			{"shop/../x", "not a capture ID"},
		} {
			r := heapwatch(t, "--storage", url, "get", tc.arg, "-o", filepath.Join(dir, "x"))
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("get %q: exit %d, stderr %q; want failure mentioning %q", tc.arg, r.code, r.stderr, tc.want)
			}
		}
	})
}

// Retained allocations: named functions whose memory a heap profile shows.
var retained [][]byte

//go:noinline
func leakyAllocation(mib int) {
	for range mib {
		retained = append(retained, make([]byte, 1<<20))
	}
}

//go:noinline
func growingAllocation(mib int) {
	for range mib {
		retained = append(retained, make([]byte, 1<<20))
	}
}

var profileOnce sync.Once
var olderHeap, newerHeap []byte

// heapProfiles are two real heap profiles of this process: the older after
// leakyAllocation kept 16 MiB, the newer after growingAllocation added 32.
func heapProfiles(t testing.TB) (older, newer []byte) {
	profileOnce.Do(func() {
		write := func() []byte {
			runtime.GC()
			runtime.GC() // the heap profile shows the heap as of the last GC
			var b bytes.Buffer
			if err := pprof.Lookup("heap").WriteTo(&b, 0); err != nil {
				t.Fatal(err)
			}
			return b.Bytes()
		}
		leakyAllocation(16)
		olderHeap = write()
		growingAllocation(32)
		newerHeap = write()
	})
	return olderHeap, newerHeap
}

// topFunction returns the function on the first row of a top report.
func topFunction(t *testing.T, report string) string {
	t.Helper()
	lines := strings.Split(report, "\n")
	for i, l := range lines {
		if strings.Contains(l, "flat%") && i+1 < len(lines) {
			f := strings.Fields(lines[i+1])
			if len(f) > 0 {
				return f[len(f)-1]
			}
		}
	}
	t.Fatalf("no top row in report:\n%s", report)
	return ""
}

// twoCaptures stores the two heap profiles as two captures of one ladder.
func twoCaptures(t *testing.T, url string) (older, newer string) {
	oh, nh := heapProfiles(t)
	st := openStore(t, url)
	older = capt{"shop", "api", "app", "threshold-60", t0, 60, 100, false, map[string][]byte{"heap": oh}}.put(t, st)
	newer = capt{"shop", "api", "app", "threshold-90", t0.Add(time.Second), 90, 100, true, map[string][]byte{"heap": nh}}.put(t, st)
	return older, newer
}

func TestTopNamesTheLeakingFunction(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		older, newer := twoCaptures(t, url)
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"go tool pprof", []string{"top", older}, "leakyAllocation"},
			{"native", []string{"top", older, "--native"}, "leakyAllocation"},
			{"native newer", []string{"top", "--native", newer, "heap"}, "growingAllocation"},
			{"go tool pprof diff", []string{"diff", older, newer}, "growingAllocation"},
			{"native diff", []string{"diff", "--native", older, newer}, "growingAllocation"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := heapwatch(t, append([]string{"--storage", url}, append(tc.args, "-o", t.TempDir())...)...).mustSucceed(t)
				if got := topFunction(t, r.stdout); !strings.HasSuffix(got, "."+tc.want) {
					t.Errorf("top function %q, want %s\n%s", got, tc.want, r.stdout)
				}
			})
		}
		// The older capture's leak does not show as growth in the diff.
		r := heapwatch(t, "--storage", url, "diff", "--native", older, newer, "-o", t.TempDir()).mustSucceed(t)
		if strings.Contains(r.stdout, "leakyAllocation") {
			t.Errorf("diff shows leakyAllocation, which did not change:\n%s", r.stdout)
		}
		r = heapwatch(t, "--storage", url, "top", older, "goroutine", "--native", "-o", t.TempDir())
		if r.code != 1 || !strings.Contains(r.stderr, "has no goroutine profile (it has heap)") {
			t.Errorf("missing profile: exit %d, %s", r.code, r.stderr)
		}
	})
}

func TestTopWithoutGo(t *testing.T) {
	url := "file://" + t.TempDir()
	older, _ := twoCaptures(t, url)
	t.Setenv("PATH", t.TempDir())
	dir := t.TempDir()
	r := heapwatch(t, "--storage", url, "top", older, "-o", dir).mustSucceed(t)
	file := filepath.Join(dir, "20261123T140102.123Z-threshold-60-heap.pb.gz")
	if !strings.Contains(r.stderr, "'go' is not on PATH") || !strings.Contains(r.stderr, file) {
		t.Errorf("stderr %q; want a note that go is missing and where the profile is", r.stderr)
	}
	if got := topFunction(t, r.stdout); !strings.HasSuffix(got, ".leakyAllocation") {
		t.Errorf("top function %q", got)
	}
	r = heapwatch(t, "--storage", url, "open", older, "-o", dir)
	if r.code != 1 || !strings.Contains(r.stderr, "needs Go") || !strings.Contains(r.stderr, file) {
		t.Errorf("open without go: exit %d, %s", r.code, r.stderr)
	}
}

// lineWriter collects output and signals when a line containing want arrives.
type lineWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	hit  chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for _, l := range strings.Split(w.buf.String(), "\n") {
		if i := strings.Index(l, w.want); i >= 0 && w.hit != nil {
			w.hit <- strings.TrimSpace(l[i+len(w.want):])
			w.hit = nil
		}
	}
	return len(p), nil
}

func TestOpenServesTheWebUI(t *testing.T) {
	url := "file://" + t.TempDir()
	older, _ := twoCaptures(t, url)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// pprof announces its address on stderr.
	served := make(chan string, 1)
	errOut := &lineWriter{want: "Serving web UI on ", hit: served}
	var out bytes.Buffer
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"--storage", url, "open", older, "--http", "127.0.0.1:0", "--no-browser", "-o", t.TempDir()}, &out, errOut)
	}()
	var ui string
	select {
	case ui = <-served:
	case code := <-done:
		t.Fatalf("open exited %d before serving: %s", code, errOut.String())
	case <-time.After(2 * time.Minute):
		t.Fatal("no web UI after 2 minutes")
	}
	// pprof prints the address just before it starts listening.
	var resp string
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err = httpGet(ui + "/ui/top"); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(resp, "leakyAllocation") {
		t.Errorf("the web UI's top page does not name leakyAllocation")
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("open exited %d after Ctrl-C: %s", code, errOut.String())
	}
}

func TestFriendlyErrors(t *testing.T) {
	t.Setenv("HEAPWATCH_STORAGE", "")
	for _, tc := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"--storage", "s3://"}, 1, []string{"missing bucket", "Set --storage or $HEAPWATCH_STORAGE"}},
		{[]string{"--storage", "dumps"}, 1, []string{"no scheme"}},
		{[]string{"--storage", "file://dumps"}, 1, []string{"three slashes"}},
		{[]string{"--storage", "s3://b-1?regoin=x"}, 1, []string{`unknown parameter "regoin"`}},
		{[]string{"--output", "yaml"}, exitUsage, []string{"--output \"yaml\""}},
		{[]string{"--limit", "-1"}, exitUsage, []string{"--limit -1"}},
		{[]string{"extra"}, exitUsage, []string{"ls takes 0 argument(s), got 1"}},
		{[]string{"--bogus"}, exitUsage, []string{"unknown flag: --bogus", "Usage:\n  heapwatch ls"}},
	} {
		r := heapwatch(t, append([]string{"ls"}, tc.args...)...)
		if r.code != tc.code {
			t.Errorf("ls %v: exit %d, want %d (%s)", tc.args, r.code, tc.code, r.stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("ls %v: stderr %q lacks %q", tc.args, r.stderr, w)
			}
		}
	}
	for _, args := range [][]string{{}, {"frobnicate"}, {"get"}, {"diff", "a"}, {"completion", "tcsh"}} {
		if r := heapwatch(t, args...); r.code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, r.code, exitUsage)
		}
	}
	for _, args := range [][]string{{"help"}, {"ls", "-h"}, {"version"}} {
		heapwatch(t, args...).mustSucceed(t)
	}

	// The environment variable is used when no flag is given.
	t.Setenv("HEAPWATCH_STORAGE", "gs://bucket")
	if r := heapwatch(t, "ls"); r.code != 1 || !strings.Contains(r.stderr, `unknown scheme "gs"`) {
		t.Errorf("HEAPWATCH_STORAGE ignored: %s", r.stderr)
	}
	// Without either, the demo's directory under the working directory.
	t.Setenv("HEAPWATCH_STORAGE", "")
	wd := t.TempDir()
	t.Chdir(wd)
	if r := heapwatch(t, "ls").mustSucceed(t); !strings.Contains(r.stderr, "no captures in file://"+filepath.Join(wd, "heapwatch-dumps")) {
		t.Errorf("default storage: %s", r.stderr)
	}
}

func TestCredentialErrorsExplainTheChain(t *testing.T) {
	srv := s3test.Start(t)
	srv.Setenv(t)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	r := heapwatch(t, "--storage", srv.URL(""), "ls")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1", r.code)
	}
	for _, want := range []string{"storage credentials missing or rejected", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "IRSA", "s3:ListBucket"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		r := heapwatch(t, "completion", shell).mustSucceed(t)
		if !strings.Contains(r.stdout, "__complete") {
			t.Errorf("%s completion does not ask heapwatch __complete:\n%s", shell, r.stdout)
		}
	}
}

// TestComplete asks for completions as the shell scripts do: capture IDs
// from the storage given on the command line, then profile names, and the
// values of --output.
func TestComplete(t *testing.T) {
	url := "file://" + t.TempDir()
	older, newer := twoCaptures(t, url)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"top", ""}, []string{newer, older}},
		{[]string{"explain", "shop/api/app/"}, []string{newer, older}},
		{[]string{"diff", older, ""}, []string{newer, older}},
		{[]string{"get", older[:len(older)-3]}, []string{older}},
		{[]string{"top", "shop/other/"}, nil},
		{[]string{"top", older, ""}, []string{"heap", "allocs", "goroutine"}},
		{[]string{"diff", older, newer, ""}, []string{"heap", "allocs", "goroutine"}},
		{[]string{"ls", "--output", ""}, []string{"table", "json"}},
		{[]string{"completion", ""}, []string{"bash", "zsh", "fish"}},
	} {
		r := heapwatch(t, append([]string{"--storage", url, "__complete"}, tc.args...)...).mustSucceed(t)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		got := lines[:len(lines)-1] // the last line is the directive, :4 for no file completion
		if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" || lines[len(lines)-1] != ":4" {
			t.Errorf("__complete %v (-want +got):\n%s\ndirective %s", tc.args, diff, lines[len(lines)-1])
		}
	}
}

// TestPluginName: run as kubectl-heapwatch (a kubectl plugin), help names
// the command the user types.
func TestPluginName(t *testing.T) {
	for _, tc := range []struct{ argv0, want string }{
		{"/usr/local/bin/kubectl-heapwatch", "Usage:\n  kubectl heapwatch explain"},
		{"kubectl-heapwatch", "Usage:\n  kubectl heapwatch explain"},
		{"./bin/heapwatch", "Usage:\n  heapwatch explain"},
	} {
		var out, errOut bytes.Buffer
		a := newApp(&out, &errOut)
		a.name = displayName(tc.argv0)
		if code := a.run(context.Background(), []string{"explain", "--help"}); code != 0 || !strings.Contains(out.String(), tc.want) {
			t.Errorf("argv[0] %s: exit %d, help lacks %q:\n%s%s", tc.argv0, code, tc.want, out.String(), errOut.String())
		}
	}
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
