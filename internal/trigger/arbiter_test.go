package trigger

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// spike is a rule of a kind the package does not have: it fires whenever
// usage is above a byte count. It stands for "a new kind is a new file":
// the arbiter must apply the cooldown and the hold spacing to it without
// knowing it.
type spike struct{ at uint64 }

func (s spike) kinds() []Kind                        { return []Kind{"spike"} }
func (s spike) levels(_ uint64, add func(uint64))    { add(s.at) }
func (s spike) upcoming(_ uint64, add func(float64)) { add(float64(s.at)) }
func (s spike) rearm(Sample, *window)                {}
func (s spike) fire(smp Sample, _ *window) (Decision, bool) {
	if smp.Usage < s.at {
		return Decision{}, false
	}
	return Decision{Kind: "spike", Reason: "above"}, true
}

func TestArbiterAppliesToAnyRule(t *testing.T) {
	o := Options{Cooldown: 10 * time.Second}.withDefaults()
	tr := newWithRules(o, func(Options) []rule { return []rule{spike{at: 50 * mib}} })
	clk := newFakeClock()
	var got []string
	for _, st := range []struct {
		at    time.Duration
		usage uint64
	}{{0, 60 * mib}, {time.Second, 61 * mib}, {1100 * time.Millisecond, 62 * mib}, {11 * time.Second, 63 * mib}} {
		got = append(got, describe(observe(tr, clk.at(st.at), st.usage, 100*mib)))
	}
	want := []string{"ship spike", "hold spike (cooldown)", "suppressed spike cooldown", "ship spike"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decisions (-want +got):\n%s", diff)
	}
}

func TestKinds(t *testing.T) {
	o := Options{Thresholds: []float64{90, 60}, Absolute: mib, Horizon: time.Second}
	want := []Kind{"threshold-60", "threshold-90", KindAbsolute, KindPredictive, KindGrowth}
	if diff := cmp.Diff(want, o.Kinds()); diff != "" {
		t.Errorf("kinds (-want +got):\n%s", diff)
	}
}

// TestIdleIntervalKeepsState: the idle interval is the caller's, so a
// change of notification mode (idle interval on, off, on) leaves armed
// rungs and the cooldown history as they were: the decisions are those of
// a twin trigger never asked for an interval.
func TestIdleIntervalKeepsState(t *testing.T) {
	o := Options{Thresholds: []float64{60, 75, 90}, Cooldown: 30 * time.Second, Horizon: 2 * time.Second}
	asked, twin := New(o), New(o)
	clk := newFakeClock()
	steps := []struct {
		at    time.Duration
		usage uint64
	}{{0, 20 * mib}, {time.Second, 61 * mib}, {2 * time.Second, 62 * mib}, {3 * time.Second, 76 * mib},
		{4 * time.Second, 77 * mib}, {40 * time.Second, 91 * mib}}
	for i, st := range steps {
		at := clk.at(st.at)
		got := describe(observe(asked, at, st.usage, 100*mib))
		want := describe(observe(twin, at, st.usage, 100*mib))
		for _, idle := range []time.Duration{2 * time.Second, 0, 2 * time.Second} {
			asked.NextInterval(idle)
		}
		if got != want {
			t.Errorf("step %d (%v, %d MiB): %q after interval queries, %q without", i, st.at, st.usage/mib, got, want)
		}
		if i == 1 && got != "ship threshold-60" || i == 2 && got != "" {
			t.Errorf("step %d: %q: the rung did not fire once", i, got)
		}
	}
}
