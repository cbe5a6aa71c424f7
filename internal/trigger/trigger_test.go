package trigger

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const mib = 1 << 20

// fakeClock is a manual clock: the trigger takes times as arguments, and
// tests advance this one explicitly.
type fakeClock struct{ now time.Time }

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) at(d time.Duration) time.Time { return c.now.Add(d) }

// describe renders a decision compactly for table comparisons.
func describe(d Decision) string {
	switch {
	case d.Fire && !d.Hold:
		return "ship " + string(d.Kind)
	case d.Fire && d.Suppressed != "":
		return "hold " + string(d.Kind) + " (" + d.Suppressed + ")"
	case d.Fire:
		return "hold " + string(d.Kind)
	case d.Suppressed != "":
		return "suppressed " + string(d.Kind) + " " + d.Suppressed
	case d.Kind != "":
		return "?? " + string(d.Kind)
	}
	return ""
}

type step struct {
	at    time.Duration
	usage float64 // MiB
	want  string
}

func TestObserve(t *testing.T) {
	noGrowth := func(o Options) Options { o.GrowthFloor = 99; return o }
	tests := []struct {
		name  string
		opts  Options
		limit uint64
		steps []step
	}{
		{
			name: "ladder fires once per rise and re-arms below rung minus hysteresis",
			opts: noGrowth(Options{Thresholds: []float64{90, 60, 75}}), limit: 100 * mib,
			steps: []step{
				{0, 50, ""},
				{1 * time.Second, 61, "ship threshold-60"},
				{2 * time.Second, 62, ""},
				{3 * time.Second, 58, ""}, // above 55: still disarmed
				{4 * time.Second, 61, ""},
				{5 * time.Second, 54, ""}, // re-armed
				{6 * time.Second, 61, "ship threshold-60"},
				{7 * time.Second, 95, "ship threshold-90"}, // one capture for a jump over 75 and 90
				{8 * time.Second, 80, ""},                  // re-arms 90 (below 85), not 75
				{9 * time.Second, 91, "ship threshold-90"},
			},
		},
		{
			name: "cooldown demotes to a held capture when spacing allows",
			opts: noGrowth(Options{Thresholds: []float64{60, 75, 90}, Cooldown: 30 * time.Second}), limit: 100 * mib,
			steps: []step{
				{0, 61, "ship threshold-60"},
				{1 * time.Second, 76, "hold threshold-75 (cooldown)"},
				{1100 * time.Millisecond, 91, "suppressed threshold-90 cooldown"}, // held spacing too
				{31 * time.Second, 50, ""},
				{33 * time.Second, 62, "ship threshold-60"},
			},
		},
		{
			name: "hourly cap over a sliding hour",
			opts: noGrowth(Options{Thresholds: []float64{60}, MaxPerHour: 2}), limit: 100 * mib,
			steps: []step{
				{0, 61, "ship threshold-60"},
				{1 * time.Minute, 50, ""},
				{2 * time.Minute, 61, "ship threshold-60"},
				{3 * time.Minute, 50, ""},
				{4 * time.Minute, 61, "hold threshold-60 (hourly-cap)"},
				{5 * time.Minute, 50, ""},
				{61 * time.Minute, 61, "ship threshold-60"}, // the first ship left the hour
			},
		},
		{
			name: "absolute threshold without a limit",
			opts: Options{Thresholds: []float64{60}, Absolute: 1024 * mib}, limit: 0,
			steps: []step{
				{0, 512, ""},
				{1 * time.Second, 1100, "ship absolute"},
				{2 * time.Second, 1200, ""},
				{3 * time.Second, 980, ""}, // above 95 % of the threshold
				{4 * time.Second, 900, ""},
				{5 * time.Second, 1050, "ship absolute"},
			},
		},
		{
			name: "no limit and no absolute threshold: not watched",
			opts: Options{Thresholds: []float64{60}, Horizon: 2 * time.Second}, limit: 0,
			steps: []step{{0, 100, ""}, {time.Second, 100000, ""}},
		},
		{
			name: "growth takes held captures per step, deferred by spacing, reset below the floor",
			opts: Options{}, limit: 100 * mib,
			steps: []step{
				{0, 20, ""},
				{100 * time.Millisecond, 35, "hold growth"},
				{200 * time.Millisecond, 47, ""}, // within 300 ms: deferred
				{450 * time.Millisecond, 48, "hold growth"},
				{800 * time.Millisecond, 49, ""},
				{1200 * time.Millisecond, 52, "hold growth"},
				{1300 * time.Millisecond, 20, ""}, // below 25: reset
				{2 * time.Second, 31, "hold growth"},
			},
		},
		{
			name: "growth level already captured by a shipped trigger is not held again",
			opts: Options{Thresholds: []float64{60}}, limit: 100 * mib,
			steps: []step{
				{0, 31, "hold growth"},
				{time.Second, 61, "ship threshold-60"},
				{2 * time.Second, 65, ""},
				{3 * time.Second, 71, "hold growth"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			tr := New(tt.opts)
			for i, s := range tt.steps {
				d := tr.Observe(Sample{Time: clk.at(s.at), Usage: uint64(s.usage * mib), Limit: tt.limit})
				if got := describe(d); got != s.want {
					t.Errorf("step %d (%v, %gMiB): got %q (%s), want %q", i, s.at, s.usage, got, d.Reason, s.want)
				}
				if d.Kind != "" && d.Reason == "" {
					t.Errorf("step %d: decision %+v without a reason", i, d)
				}
			}
		})
	}
}

func TestReasonText(t *testing.T) {
	tr := New(Options{Thresholds: []float64{75}, GrowthFloor: 99})
	usage := 0.762 * 128 * mib
	d := tr.Observe(Sample{Time: newFakeClock().now, Usage: uint64(usage), Limit: 128 * mib})
	if d.Reason != "usage 76.2% of 128MiB crossed 75%" {
		t.Errorf("Reason = %q", d.Reason)
	}
}

func TestPredictive(t *testing.T) {
	clk := newFakeClock()
	tr := New(Options{Horizon: 2 * time.Second, GrowthFloor: 30})
	const limit = 100 * mib
	// 20 % of the limit per second from 40 %: the limit is 2 s away at 60 %.
	var got []string
	for i := 0; i <= 10; i++ {
		d := tr.Observe(Sample{Time: clk.at(time.Duration(i) * 100 * time.Millisecond), Usage: uint64((40 + 2*float64(i)) * mib), Limit: limit})
		if d.Kind == KindPredictive && !strings.Contains(d.Reason, "reaches the limit in 2s") {
			t.Errorf("reason %q", d.Reason)
		}
		got = append(got, describe(d))
	}
	want := []string{"hold growth", "", "", "", "", "hold growth", "", "", "", "", "ship predictive"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	// Flat for longer than the window: the prediction goes away and the
	// trigger re-arms; a new fast rise fires again.
	for i := 1; i <= 15; i++ {
		if d := tr.Observe(Sample{Time: clk.at(time.Second + time.Duration(i)*100*time.Millisecond), Usage: 60 * mib, Limit: limit}); d.Fire {
			t.Fatalf("fired while flat: %+v", d)
		}
	}
	d := tr.Observe(Sample{Time: clk.at(2600 * time.Millisecond), Usage: 65 * mib, Limit: limit})
	d2 := tr.Observe(Sample{Time: clk.at(2700 * time.Millisecond), Usage: 75 * mib, Limit: limit})
	if describe(d) != "ship predictive" && describe(d2) != "ship predictive" {
		t.Errorf("no predictive after re-arm: %q, %q", describe(d), describe(d2))
	}
	// Below the floor a fast rise is not predicted.
	tr = New(Options{Horizon: 2 * time.Second})
	tr.Observe(Sample{Time: clk.at(0), Usage: 1 * mib, Limit: limit})
	if d := tr.Observe(Sample{Time: clk.at(10 * time.Millisecond), Usage: 20 * mib, Limit: limit}); d.Kind != "" {
		t.Errorf("below the floor: %+v", d)
	}
}

func TestHeldCap(t *testing.T) {
	clk := newFakeClock()
	tr := New(Options{MaxHeldPerHour: 1})
	const limit = 100 * mib
	if d := tr.Observe(Sample{Time: clk.at(0), Usage: 31 * mib, Limit: limit}); describe(d) != "hold growth" {
		t.Fatalf("first: %q", describe(d))
	}
	if d := tr.Observe(Sample{Time: clk.at(time.Second), Usage: 41 * mib, Limit: limit}); describe(d) != "suppressed growth held-hourly-cap" {
		t.Fatalf("second: %q", describe(d))
	}
	if d := tr.Observe(Sample{Time: clk.at(2 * time.Second), Usage: 42 * mib, Limit: limit}); d.Kind != "" {
		t.Fatalf("reported twice for one step: %+v", d)
	}
}

func TestLevels(t *testing.T) {
	o := Options{Thresholds: []float64{60, 75, 90}, Absolute: 10 * mib}
	got := o.Levels(100 * mib)
	want := []float64{10, 30, 40, 50, 55, 60, 70, 75, 80, 85, 90}
	if len(got) != len(want) {
		t.Fatalf("Levels = %v", got)
	}
	for i, w := range want {
		if got[i] != uint64(w*mib) {
			t.Errorf("level %d = %d, want %gMiB", i, got[i], w)
		}
	}
	if l := (Options{Absolute: 5 * mib}).Levels(0); len(l) != 1 || l[0] != 5*mib {
		t.Errorf("no limit: %v", l)
	}
	if (Options{}).Watches(0) || !(Options{}).Watches(1) || !(Options{Absolute: 1}).Watches(0) {
		t.Error("Watches")
	}
}

func TestNextInterval(t *testing.T) {
	clk := newFakeClock()
	const limit = 100 * mib
	o := Options{Thresholds: []float64{60, 75, 90}, Interval: 100 * time.Millisecond, MinInterval: 10 * time.Millisecond}
	tr := New(o)
	tr.Observe(Sample{Time: clk.at(0), Usage: 10 * mib, Limit: limit})
	if iv := tr.NextInterval(0); iv != 100*time.Millisecond {
		t.Errorf("idle far from levels: %v, want the base interval", iv)
	}
	tr.Observe(Sample{Time: clk.at(100 * time.Millisecond), Usage: 10 * mib, Limit: limit})
	tr.Observe(Sample{Time: clk.at(200 * time.Millisecond), Usage: 27 * mib, Limit: limit}) // 3 points below the growth floor
	if iv := tr.NextInterval(0); iv > 25*time.Millisecond {
		t.Errorf("close to a level: %v, want at most a quarter interval", iv)
	}
	tr = New(o)
	tr.Observe(Sample{Time: clk.at(0), Usage: 0, Limit: limit})
	tr.Observe(Sample{Time: clk.at(100 * time.Millisecond), Usage: 10 * mib, Limit: limit}) // 100 MiB/s, 20 MiB from the floor
	if iv := tr.NextInterval(0); iv != 50*time.Millisecond {
		t.Errorf("growing fast: %v, want a quarter of the 200 ms ETA", iv)
	}
	tr.Observe(Sample{Time: clk.at(110 * time.Millisecond), Usage: 29 * mib, Limit: limit})
	if iv := tr.NextInterval(0); iv != 10*time.Millisecond {
		t.Errorf("about to cross: %v, want MinInterval", iv)
	}

	const idle = time.Second // as a caller woken by notifications at every level passes
	tr = New(o)
	tr.Observe(Sample{Time: clk.at(0), Usage: 10 * mib, Limit: limit})
	if iv := tr.NextInterval(idle); iv != 100*time.Millisecond {
		t.Errorf("one sample: %v, want the base interval until the rate is known", iv)
	}
	tr.Observe(Sample{Time: clk.at(100 * time.Millisecond), Usage: 10 * mib, Limit: limit})
	if iv := tr.NextInterval(idle); iv != time.Second {
		t.Errorf("steady far from levels: %v, want IdleInterval", iv)
	}
	if iv := tr.NextInterval(0); iv != 100*time.Millisecond { // the notifications stopped
		t.Errorf("steady, IdleInterval cleared: %v, want the base interval", iv)
	}
	tr.Observe(Sample{Time: clk.at(200 * time.Millisecond), Usage: 11 * mib, Limit: limit}) // 1 MiB in 100 ms: 10 %/s
	if iv := tr.NextInterval(idle); iv != 100*time.Millisecond {
		t.Errorf("growing: %v, want the base interval", iv)
	}
	tr = New(o)
	tr.Observe(Sample{Time: clk.at(0), Usage: 28 * mib, Limit: limit})
	tr.Observe(Sample{Time: clk.at(100 * time.Millisecond), Usage: 28 * mib, Limit: limit})
	if iv := tr.NextInterval(idle); iv != 25*time.Millisecond {
		t.Errorf("steady but near a level: %v, want a quarter interval", iv)
	}
}

// spike is a kind that exists only in this test: a new kind is one type
// behind the rule interface and one entry in the rule list, and the
// arbiter applies cooldown and demotion to it, and tells the per-level
// rules of its captures, as to any kind.
type spike struct {
	at    uint64
	armed bool
}

func (s *spike) kinds() []Kind                        { return []Kind{"spike"} }
func (s *spike) levels(_ uint64, add func(uint64))    { add(s.at) }
func (s *spike) upcoming(_ uint64, add func(float64)) { add(float64(s.at)) }
func (s *spike) rearm(smp Sample, _ *window)          { s.armed = s.armed || smp.Usage < s.at }
func (s *spike) fire(smp Sample, _ *window) (Decision, bool) {
	if !s.armed || smp.Usage < s.at {
		return Decision{}, false
	}
	s.armed = false
	return Decision{Kind: "spike", Reason: "usage reached the spike level"}, true
}

func TestNewKindIsOneRule(t *testing.T) {
	withSpike := func(o Options) []rule { return append([]rule{&spike{at: 40 * mib, armed: true}}, rules(o)...) }
	tr := newWithRules(Options{Thresholds: []float64{60}, Cooldown: 30 * time.Second}.withDefaults(), withSpike)
	clk := newFakeClock()
	var got []string
	var want []string
	for _, s := range []step{
		{0, 41, "ship spike"},
		{100 * time.Millisecond, 45, ""},                  // the growth level 40 was captured by the spike
		{time.Second, 61, "hold threshold-60 (cooldown)"}, // the spike's ship started the cooldown
		{2 * time.Second, 30, ""},
		{3 * time.Second, 41, "hold spike (cooldown)"},
	} {
		got = append(got, describe(tr.Observe(Sample{Time: clk.at(s.at), Usage: uint64(s.usage * mib), Limit: 100 * mib})))
		want = append(want, s.want)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decisions (-want +got):\n%s", diff)
	}
}

func TestKinds(t *testing.T) {
	got := Options{Thresholds: []float64{90, 60}, Absolute: mib, Horizon: time.Second}.Kinds()
	want := []Kind{"threshold-60", "threshold-90", KindAbsolute, KindPredictive, KindGrowth}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Kinds (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Kind{KindGrowth}, Options{}.Kinds()); diff != "" {
		t.Errorf("Kinds of the defaults (-want +got):\n%s", diff)
	}
}
