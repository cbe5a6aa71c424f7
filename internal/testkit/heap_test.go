package testkit

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/store"
)

// heapProfile is a heap profile with in-use bytes per stack (innermost
// frame first).
func heapProfile(t *testing.T, stacks map[string][]string, bytesOf map[string]int64) []byte {
	t.Helper()
	p := &profile.Profile{SampleType: []*profile.ValueType{{Type: "inuse_objects", Unit: "count"}, {Type: "inuse_space", Unit: "bytes"}}}
	fns := map[string]*profile.Function{}
	for name, stack := range stacks {
		s := &profile.Sample{Value: []int64{1, bytesOf[name]}}
		for _, fn := range stack {
			f := fns[fn]
			if f == nil {
				f = &profile.Function{ID: uint64(len(fns) + 1), Name: fn}
				fns[fn] = f
				p.Function = append(p.Function, f)
			}
			loc := &profile.Location{ID: uint64(len(p.Location) + 1), Line: []profile.Line{{Function: f}}}
			p.Location = append(p.Location, loc)
			s.Location = append(s.Location, loc)
		}
		p.Sample = append(p.Sample, s)
	}
	var b bytes.Buffer
	if err := p.Write(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestFinalHeap(t *testing.T) {
	prof := heapProfile(t, map[string][]string{
		"leak":  {"runtime.growslice", "main.leakDoubling", "main.main"},
		"other": {"main.small", "main.main"},
		"rt":    {"runtime.malg"},
	}, map[string]int64{"leak": 100 << 20, "other": 1 << 20})
	st, err := store.Open(t.Context(), "file://"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(t.Context(), "k/heap.pb.gz", bytes.NewReader(prof), int64(len(prof))); err != nil {
		t.Fatal(err)
	}
	killed := time.Date(2026, 12, 3, 1, 0, 0, 0, time.UTC)
	meta := func(captured time.Time, profiles ...capture.Profile) *capture.Metadata {
		return &capture.Metadata{ID: "c", CapturedAt: captured, OOMKilledAt: &killed, Profiles: profiles}
	}
	heap := capture.Profile{Name: "heap", Key: "k/heap.pb.gz"}
	for _, tt := range []struct {
		name, want, err string
		m               *capture.Metadata
	}{
		{"leaking function on top", "main.leakDoubling", "", meta(killed.Add(-time.Second), heap)},
		{"another function on top", "main.small", `top in-use function "main.leakDoubling", want "main.small"`, meta(killed.Add(-time.Second), heap)},
		{"taken after the kill", "main.leakDoubling", "want before", meta(killed.Add(time.Second), heap)},
		{"no heap profile", "main.leakDoubling", "no complete heap profile", meta(killed.Add(-time.Second), capture.Profile{Name: "goroutine", Key: "k/g"})},
		{"heap profile failed", "main.leakDoubling", "no complete heap profile", meta(killed.Add(-time.Second), capture.Profile{Name: "heap", Error: "timeout"})},
		{"missing object", "main.leakDoubling", "not found", meta(killed.Add(-time.Second), capture.Profile{Name: "heap", Key: "x"})},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := FinalHeap(st, tt.m, tt.want)
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Errorf("FinalHeap = %v, want error containing %q", err, tt.err)
			}
		})
	}
}
