package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/pprof/profile"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/store"
)

// heapOf is a real pprof heap profile holding inuse bytes per function.
func heapOf(t *testing.T, inuse map[string]int64) []byte {
	t.Helper()
	p := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "alloc_objects", Unit: "count"}, {Type: "alloc_space", Unit: "bytes"},
			{Type: "inuse_objects", Unit: "count"}, {Type: "inuse_space", Unit: "bytes"}},
		PeriodType: &profile.ValueType{Type: "space", Unit: "bytes"}, Period: 512 * 1024,
	}
	id := uint64(0)
	for fn, v := range inuse {
		id++
		f := &profile.Function{ID: id, Name: fn}
		l := &profile.Location{ID: id, Address: 0x1000 * id, Line: []profile.Line{{Function: f}}}
		p.Function, p.Location = append(p.Function, f), append(p.Location, l)
		p.Sample = append(p.Sample, &profile.Sample{Location: []*profile.Location{l}, Value: []int64{1, v, 1, v}})
	}
	var b bytes.Buffer
	if err := p.Write(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// putMeta stores a capture the way the sidecar does: its profiles, then
// the metadata m completed with their keys.
func putMeta(t testing.TB, st store.Store, m capture.Metadata, profiles map[string][]byte) string {
	t.Helper()
	ctx := context.Background()
	m.SchemaVersion = capture.SchemaVersion
	n := m.Name()
	m.ID = n.ID()
	for p, data := range profiles {
		key := n.ProfileKey(p)
		if err := st.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
		m.Profiles = append(m.Profiles, capture.Profile{Name: p, Key: key, Bytes: int64(len(data))})
	}
	doc, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, n.MetadataKey(), bytes.NewReader(doc), int64(len(doc))); err != nil {
		t.Fatal(err)
	}
	return n.ID()
}

// run is one container run: a ladder capture, then the final one with a
// minute of timeline; an older run's final capture comes before it.
func explainFixture(t *testing.T, st store.Store, shmem bool) (first, final string) {
	const mib = 1 << 20
	base := capture.Metadata{Namespace: "shop", Pod: "api-7d9f", PodUID: "uid-1", Container: "app"}
	older := base
	older.CapturedAt, older.Trigger, older.Final = t0.Add(-time.Hour), "threshold-90", true
	killed := older.CapturedAt.Add(time.Second)
	older.OOMKilledAt = &killed
	older.Memory = capture.Memory{UsageBytes: 120 * mib, WorkingSetBytes: 118 * mib, LimitBytes: 128 * mib}
	putMeta(t, st, older, map[string][]byte{"heap": heapOf(t, map[string]int64{"main.old": 100 * mib})})

	early := base
	early.CapturedAt, early.Trigger = t0, "threshold-60"
	early.Memory = capture.Memory{UsageBytes: 78 * mib, WorkingSetBytes: 77 * mib, LimitBytes: 128 * mib}
	fin := base
	fin.CapturedAt, fin.Trigger, fin.Final = t0.Add(20*time.Second), "threshold-90", true
	killedAt := fin.CapturedAt.Add(700 * time.Millisecond)
	fin.OOMKilledAt = &killedAt
	fin.Memory = capture.Memory{UsageBytes: 122 * mib, WorkingSetBytes: 120 * mib, LimitBytes: 128 * mib}
	for i := range 60 {
		at := fin.CapturedAt.Add(time.Duration(i-59) * time.Second)
		ws := uint64(60+i) * mib
		p := capture.Point{Time: at, UsageBytes: ws + 2*mib, WorkingSetBytes: ws, LimitBytes: 128 * mib}
		if i == 39 || i == 59 {
			p.Trigger = map[int]string{39: "threshold-60", 59: "threshold-90"}[i]
		}
		fin.Timeline = append(fin.Timeline, p)
	}
	var earlyHeap, finalHeap map[string]int64
	if shmem {
		// A tmpfs file grows; the Go heap stays small.
		fin.MemoryStat = map[string]uint64{"anon": 12 * mib, "file": 104 * mib, "shmem": 100 * mib, "kernel": 4 * mib}
		earlyHeap = map[string]int64{"main.serve": 4 * mib}
		finalHeap = map[string]int64{"main.serve": 5 * mib, "main.fillTmpfs": 1 * mib}
	} else {
		fin.MemoryStat = map[string]uint64{"anon": 114 * mib, "file": 2 * mib, "shmem": 0, "kernel": 4 * mib}
		earlyHeap = map[string]int64{"main.serializeJSON": 60 * mib, "main.serve": 4 * mib}
		finalHeap = map[string]int64{"main.serializeJSON": 108 * mib, "main.serve": 4 * mib}
	}
	first = putMeta(t, st, early, map[string][]byte{"heap": heapOf(t, earlyHeap)})
	final = putMeta(t, st, fin, map[string][]byte{"heap": heapOf(t, finalHeap)})
	return first, final
}

func TestExplainGolden(t *testing.T) {
	for _, shape := range []string{"heap", "shmem"} {
		t.Run(shape, func(t *testing.T) {
			url := "file://" + t.TempDir() + "/captures"
			first, final := explainFixture(t, openStore(t, url), shape == "shmem")
			r := heapwatch(t, "--storage", url, "explain", "shop/api-7d9f", "-o", t.TempDir()).mustSucceed(t)
			got := strings.ReplaceAll(r.stdout, url, "URL")
			golden := filepath.Join("testdata", "explain-"+shape+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("explain output (-want +got):\n%s", diff)
			}
			// The same through --output json, the container's ID and --plot.
			plot := filepath.Join(t.TempDir(), "timeline.svg")
			r = heapwatch(t, "--storage", url, "--output", "json", "explain", final, "--plot", plot, "-o", t.TempDir()).mustSucceed(t)
			var rep explainReport
			if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
				t.Fatalf("%v\n%s", err, r.stdout)
			}
			if rep.Capture != final || rep.Baseline != first || len(rep.Timeline) != 60 || len(rep.Grew) == 0 {
				t.Errorf("json report: capture %s baseline %s, %d points, grew %v; want %s, %s, 60, some", rep.Capture, rep.Baseline, len(rep.Timeline), rep.Grew, final, first)
			}
			svg, err := os.ReadFile(plot)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(svg, []byte("<svg ")) || bytes.Count(svg, []byte("<polyline")) != 3 || !bytes.Contains(svg, []byte("OOM kill")) {
				t.Errorf("plot is not the timeline SVG:\n%s", svg)
			}
		})
	}
}

func TestVerdict(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name       string
		workingSet uint64
		heap       int64
		parts      memoryParts
		want       string
	}{
		{"heap leak", 120 * mib, 113 * mib, memoryParts{Anon: 114 * mib}, "the Go heap explains 94 % of the working set"},
		{"shmem leak", 120 * mib, 6 * mib, memoryParts{Anon: 12 * mib, File: 104 * mib, Shmem: 100 * mib},
			"100.0 MiB is shmem (83 % of the working set): a memory-backed emptyDir or /dev/shm, not the Go heap"},
		{"small shmem beside a heap leak", 120 * mib, 100 * mib, memoryParts{Anon: 100 * mib, Shmem: 10 * mib}, "the Go heap explains 83 % of the working set"},
		{"no working set", 0, 0, memoryParts{}, "no working set recorded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := verdict(tt.workingSet, tt.heap, tt.parts); got != tt.want {
				t.Errorf("verdict = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestPartsOfV1Stat(t *testing.T) {
	m := &capture.Metadata{Memory: capture.Memory{UsageBytes: 100}, MemoryStat: map[string]uint64{"total_rss": 60, "total_cache": 30, "total_shmem": 20}}
	if got, want := partsOf(m), (memoryParts{Anon: 60, File: 30, Shmem: 20, Kernel: 10}); got != want {
		t.Errorf("partsOf(v1) = %+v, want %+v", got, want)
	}
}
