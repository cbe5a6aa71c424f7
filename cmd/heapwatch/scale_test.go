package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/store"
)

func httpGet(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

// recordingStore passes everything to a real store and records which
// prefixes were listed and how many objects were read.
type recordingStore struct {
	store.Store
	mu       sync.Mutex
	prefixes []string
	gets     atomic.Int64
}

func (r *recordingStore) List(ctx context.Context, prefix string, fn func(store.Object) error) error {
	r.mu.Lock()
	r.prefixes = append(r.prefixes, prefix)
	r.mu.Unlock()
	return r.Store.List(ctx, prefix, fn)
}

func (r *recordingStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	r.gets.Add(1)
	return r.Store.Get(ctx, key)
}

// runRecorded runs the CLI with the storage wrapped in a recordingStore.
func runRecorded(t testing.TB, args ...string) (result, *recordingStore) {
	t.Helper()
	rec := &recordingStore{}
	var out, errOut bytes.Buffer
	a := &app{stdout: &out, stderr: &errOut, now: time.Now, open: func(ctx context.Context, url string) (store.Store, error) {
		st, err := store.Open(ctx, url)
		rec.Store = st
		return rec, err
	}}
	code := a.run(context.Background(), args)
	return result{code, out.String(), errOut.String()}, rec
}

const (
	manyNamespaces = 3
	manyPods       = 10
	manyPerPod     = 100 // 3000 captures, 6000 objects
)

// putMany stores manyNamespaces*manyPods*manyPerPod captures (metadata and a
// heap profile each), eight at a time.
func putMany(t testing.TB, url string) {
	t.Helper()
	work := make(chan capt)
	var wg sync.WaitGroup
	for range 8 {
		st := openStore(t, url) // one store each: an S3 store uploads one object at a time
		wg.Go(func() {
			for c := range work {
				c.put(t, st)
			}
		})
	}
	for ns := range manyNamespaces {
		for pod := range manyPods {
			for i := range manyPerPod {
				work <- capt{fmt.Sprintf("ns-%d", ns), fmt.Sprintf("pod-%d", pod), "app", "threshold-75",
					t0.Add(time.Duration(i*manyPods+pod) * time.Second), 75, 100, false, map[string][]byte{"heap": []byte("x")}}
			}
		}
	}
	close(work)
	wg.Wait()
}

func TestThousandsOfCaptures(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		putMany(t, url)
		const total = manyNamespaces * manyPods * manyPerPod

		r, rec := runRecorded(t, "--storage", url, "ls", "--limit", "0", "-q")
		ids := strings.Fields(r.mustSucceed(t).stdout)
		if len(ids) != total {
			t.Fatalf("ls --limit 0 listed %d captures, want %d", len(ids), total)
		}
		if !slices.IsSortedFunc(ids, func(a, b string) int {
			return strings.Compare(a[strings.LastIndex(a, "/"):], b[strings.LastIndex(b, "/"):]) * -1
		}) {
			t.Error("captures are not newest first")
		}
		if rec.gets.Load() != 0 {
			t.Errorf("ls -q read %d objects, want none (the listing has all it prints)", rec.gets.Load())
		}

		// The default table reads only the metadata it shows.
		r, rec = runRecorded(t, "--storage", url, "ls")
		r.mustSucceed(t)
		if rows := strings.Count(r.stdout, "\n") - 1; rows != defaultLimit {
			t.Errorf("table has %d rows, want %d", rows, defaultLimit)
		}
		if !strings.Contains(r.stderr, fmt.Sprintf("showing the newest %d of %d captures", defaultLimit, total)) {
			t.Errorf("stderr: %s", r.stderr)
		}
		if got := rec.gets.Load(); got != defaultLimit {
			t.Errorf("ls read %d metadata objects, want %d", got, defaultLimit)
		}

		// Filters list only their part of the storage.
		for _, tc := range []struct {
			args   []string
			prefix string
			n      int
		}{
			{[]string{"--namespace", "ns-1"}, "ns-1/", manyPods * manyPerPod},
			{[]string{"--namespace", "ns-2", "--pod", "pod-7"}, "ns-2/pod-7/", manyPerPod},
			{[]string{"--namespace", "ns-0", "--pod", "pod-3", "--container", "app"}, "ns-0/pod-3/app/", manyPerPod},
		} {
			r, rec := runRecorded(t, append([]string{"--storage", url, "ls", "-q", "--limit", "0"}, tc.args...)...)
			if got := len(strings.Fields(r.mustSucceed(t).stdout)); got != tc.n {
				t.Errorf("ls %v: %d captures, want %d", tc.args, got, tc.n)
			}
			if !slices.Equal(rec.prefixes, []string{tc.prefix}) {
				t.Errorf("ls %v listed prefixes %q, want only %q", tc.args, rec.prefixes, tc.prefix)
			}
		}

		// get resolves a prefix by listing only under it.
		id := ids[len(ids)/2]
		r, rec = runRecorded(t, "--storage", url, "get", id, "-o", t.TempDir())
		r.mustSucceed(t)
		if !slices.Equal(rec.prefixes, []string{id}) || rec.gets.Load() != 2 {
			t.Errorf("get listed %q and read %d objects; want only %q and 2", rec.prefixes, rec.gets.Load(), id)
		}
	})
}

// BenchmarkLs lists 3000 captures (6000 objects): the default table (newest
// 50 with their metadata), one namespace's IDs, and one pod's table.
func BenchmarkLs(b *testing.B) {
	for _, bk := range backends {
		b.Run(bk.name, func(b *testing.B) {
			url := bk.start(b)
			putMany(b, url)
			for _, bc := range []struct {
				name string
				args []string
			}{
				{"table", []string{"ls"}},
				{"all-ids", []string{"ls", "-q", "--limit", "0"}},
				{"namespace-ids", []string{"ls", "-q", "--limit", "0", "--namespace", "ns-1"}},
				{"pod-table", []string{"ls", "--namespace", "ns-1", "--pod", "pod-3"}},
			} {
				b.Run(bc.name, func(b *testing.B) {
					for b.Loop() {
						heapwatch(b, append([]string{"--storage", url}, bc.args...)...).mustSucceed(b)
					}
				})
			}
		})
	}
}

// TestBinary builds the command and runs it as a user would.
func TestBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "heapwatch")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	url := "file://" + t.TempDir()
	older, _ := twoCaptures(t, url)
	cmd := exec.Command(bin, "top", older, "--native", "-o", t.TempDir())
	cmd.Env = append(os.Environ(), "HEAPWATCH_STORAGE="+url)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("heapwatch top: %v\n%s", err, out)
	}
	if got := topFunction(t, string(out)); !strings.HasSuffix(got, ".leakyAllocation") {
		t.Errorf("top function %q", got)
	}
	cmd = exec.Command(bin, "--storage", "s3://", "ls")
	out, err = cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "missing bucket") {
		t.Errorf("bad URL: %v\n%s", err, out)
	}

	// As a kubectl plugin (kubectl-heapwatch on PATH), its help says so.
	plugin := filepath.Join(filepath.Dir(bin), "kubectl-heapwatch")
	if err := os.Symlink(bin, plugin); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(plugin, "help").Output(); err != nil || !strings.Contains(string(out), "kubectl heapwatch [command]") {
		t.Errorf("kubectl-heapwatch help: %v\n%s", err, out)
	}

	// The bash completion script parses, and completes IDs through the binary.
	script, err := exec.Command(bin, "completion", "bash").Output()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "heapwatch.bash")
	os.WriteFile(path, script, 0o644)
	if out, err := exec.Command("bash", "-n", path).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	// Cobra's script needs bash-completion (as kubectl's does): the
	// package's own file when installed, else a stand-in for its one helper
	// the script calls, enough for words without '=' or ':'.
	helpers := "/usr/share/bash-completion/bash_completion"
	if _, err := os.Stat(helpers); err != nil {
		helpers = filepath.Join(t.TempDir(), "stand-in.bash")
		os.WriteFile(helpers, []byte(`_get_comp_words_by_ref() { cur="${COMP_WORDS[COMP_CWORD]}"; prev="${COMP_WORDS[COMP_CWORD-1]}"; words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; }`+"\n"), 0o644)
	}
	complete := exec.Command("bash", "-c", `source "$1"; source "$2"; COMP_WORDS=(heapwatch top shop/api/app/20261123T140102); COMP_CWORD=2; COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}; __start_heapwatch; printf '%s\n' "${COMPREPLY[@]}"`, "-", helpers, path)
	complete.Env = append(os.Environ(), "HEAPWATCH_STORAGE="+url, "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
	out, err = complete.Output() // stderr: compopt says it runs outside a real completion
	if err != nil || strings.TrimSpace(string(out)) != older {
		t.Errorf("bash completion of a capture ID: %v, got %q, want %q", err, out, older)
	}
}
