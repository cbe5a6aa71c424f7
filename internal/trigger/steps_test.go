package trigger

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestSteps: a target without a limit gets a baseline capture at its first
// sample, then one per level of the grid it reaches; a jump over levels is
// one capture, a fall re-arms nothing, and the cooldown still applies.
func TestSteps(t *testing.T) {
	for _, tt := range []struct {
		name  string
		opts  Options
		steps []step
	}{
		{
			name: "ratio", opts: Options{StepRatio: 0.25},
			steps: []step{
				{0, 100, "ship baseline"},
				{time.Second, 110, ""},
				{2 * time.Second, 125, "ship step"}, // 125 = 100×1.25
				{3 * time.Second, 150, ""},
				{4 * time.Second, 200, "ship step"}, // over 156.25 and 195.3: one capture
				{5 * time.Second, 50, ""},
				{6 * time.Second, 200, ""}, // a fall re-arms nothing
				{7 * time.Second, 244, ""},
				{8 * time.Second, 245, "ship step"}, // 244.1
			},
		},
		{
			name: "bytes", opts: Options{StepBytes: 64 * mib},
			steps: []step{
				{0, 10, "ship baseline"},
				{time.Second, 73, ""},
				{2 * time.Second, 74, "ship step"},
				{3 * time.Second, 137, ""},
				{4 * time.Second, 138, "ship step"},
			},
		},
		{
			name: "a ratio step is at least 16 MiB", opts: Options{StepRatio: 0.25},
			steps: []step{
				{0, 2, "ship baseline"},
				{time.Second, 17, ""},
				{2 * time.Second, 18, "ship step"},
				{3 * time.Second, 33, ""},
				{4 * time.Second, 34, "ship step"},
			},
		},
		{
			name: "cooldown keeps a step locally", opts: Options{StepRatio: 0.1, Cooldown: time.Minute},
			steps: []step{
				{0, 100, "ship baseline"},
				{time.Second, 117, "hold step (cooldown)"}, // 100+16 MiB: the minimum step
				{2 * time.Minute, 140, "ship step"},
			},
		},
		{
			name: "no steps: a target without a limit is not watched", opts: Options{},
			steps: []step{{0, 100, ""}, {time.Second, 500, ""}},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.opts
			o.GrowthFloor = 99
			tr := New(o)
			clk := newFakeClock()
			var got, want []string
			for _, s := range tt.steps {
				got = append(got, describe(tr.Observe(Sample{Time: clk.at(s.at), Usage: uint64(s.usage * mib)})))
				want = append(want, s.want)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("decisions (-want +got):\n%s", diff)
			}
		})
	}
}

// TestStepsReason says where the series stands and where it goes next.
func TestStepsReason(t *testing.T) {
	tr := New(Options{StepRatio: 0.25})
	clk := newFakeClock()
	d := tr.Observe(Sample{Time: clk.at(0), Usage: 100 * mib})
	if want := "baseline usage 100MiB; next capture at 125MiB (+25%, at least 16MiB)"; d.Reason != want {
		t.Errorf("baseline reason %q, want %q", d.Reason, want)
	}
	d = tr.Observe(Sample{Time: clk.at(time.Second), Usage: 130 * mib})
	if !strings.Contains(d.Reason, "+30% over the baseline 100MiB") || !strings.Contains(d.Reason, "next capture at 156.2MiB") {
		t.Errorf("step reason %q", d.Reason)
	}
	// The next level is what sampling speeds up for.
	if iv := tr.NextInterval(0); iv != 100*time.Millisecond {
		t.Errorf("interval far from the next step %v", iv)
	}
	tr.Observe(Sample{Time: clk.at(2 * time.Second), Usage: 155 * mib})
	if iv := tr.NextInterval(0); iv >= 100*time.Millisecond {
		t.Errorf("interval near the next step %v, want faster than the base", iv)
	}
}

func TestStepsKinds(t *testing.T) {
	got := Options{StepRatio: 0.25, Absolute: mib}.Kinds()
	want := []Kind{KindBaseline, KindStep, KindAbsolute, KindGrowth}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Kinds (-want +got):\n%s", diff)
	}
}
