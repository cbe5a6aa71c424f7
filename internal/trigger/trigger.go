// Package trigger decides, from a stream of memory samples of one
// container, when to capture a heap profile. It is pure logic: the caller
// passes the time of each sample, so tests drive it with a fake clock.
//
// Each kind of trigger is a rule (ladder.go, absolute.go, predictive.go,
// growth.go, steps.go) that only says "I fire now, because"; one arbiter
// (arbiter.go) applies the cooldown, the hourly caps, the held-capture
// spacing and the demotion of a suppressed shipped capture to a held one.
// A new kind is a new file with a new rule and one line in [rules].
//
// # Why these triggers and numbers
//
// A Go heap profile shows the live heap as of the last completed GC, so a
// profile taken early in a leak already names the leaking allocation site;
// what matters is that SOME profile exists before the kill. Three shapes
// must all produce one (limits around 128 MiB, default settings):
//
//   - Slow linear leak (e.g. 20 MiB/s): the ladder (60, 75, 90 %) fires as
//     each rung is crossed; the predictive trigger fires when the rate says
//     the limit is less than the horizon (2 s) away. The cooldown (30 s)
//     suppresses the later rungs, but growth captures (below) are not
//     subject to it and keep a fresh held profile every 10 points up to
//     the kill.
//   - A slice that doubles every ~400 ms: usage goes ~27 % -> ~55 % -> dead,
//     so the 60 % rung is never seen alive. The growth floor (30 %) is
//     crossed during the 27 -> 55 % step, ~400 ms before the kill; the
//     kernel threshold notification for that level arrives within
//     milliseconds and a held capture is taken. The same step makes the
//     windowed growth rate predict the limit within the horizon, so a
//     predictive capture is shipped too. HoldSpacing (300 ms) is below the
//     doubling period so every step can refresh the held profile.
//   - A burst of hundreds of MB/s (400 MiB/s: 0 -> 128 MiB in ~0.3 s): the
//     30 % floor is crossed ~0.2 s before the kill, the notification fires
//     at once and a held capture starts; two samples at the fastest
//     interval (10 ms) already give the rate for a predictive capture.
//
// Held captures stay on the sidecar and are shipped, marked final, only
// when an OOM kill follows; so they cost storage nothing when no kill
// comes, and their spacing and hourly cap bound the cost to the app.
package trigger

import (
	"math"
	"slices"
	"time"
)

// Kind names what fired: it labels captures, metrics and logs.
type Kind string

// Kinds of triggers. A threshold kind carries its rung: see [Threshold].
const (
	KindPredictive Kind = "predictive"
	KindGrowth     Kind = "growth"
	KindAbsolute   Kind = "absolute"
	KindBaseline   Kind = "baseline"
	KindStep       Kind = "step"
	// KindThresholdPrefix is followed by the rung, e.g. "threshold-75".
	KindThresholdPrefix = "threshold-"
)

// Suppression reasons.
const (
	SuppressedCooldown  = "cooldown"
	SuppressedHourlyCap = "hourly-cap"
	SuppressedHoldCap   = "held-hourly-cap"
)

// Sample is one observation of a container. It is a struct so that a
// rule reading more than usage (memory.high, PSI) adds a field, not a
// parameter to every caller.
type Sample struct {
	Time time.Time
	// Usage is what the rules compare, in bytes: the working set.
	Usage uint64
	// Limit is the memory limit in bytes, 0 for none.
	Limit uint64
}

// pct is usage in percent of the limit, 0 without a limit.
func (s Sample) pct() float64 {
	if s.Limit == 0 {
		return 0
	}
	return float64(s.Usage) / float64(s.Limit) * 100
}

// Options configures a Trigger. Zero values take the documented defaults,
// except Horizon (0 disables the predictive trigger), Absolute (0: none),
// Cooldown (0: none) and MaxPerHour (0: no cap).
type Options struct {
	// Thresholds are percentages of the limit, e.g. 60, 75, 90.
	Thresholds []float64
	// Hysteresis in percentage points: a rung re-arms once usage falls
	// below it minus this. Default 5.
	Hysteresis float64
	// Absolute is a usage threshold in bytes, for containers with or
	// without a limit.
	Absolute uint64
	// Horizon: fire "predictive" when the limit is reached within it.
	Horizon time.Duration
	// Window is how far back the growth rate is computed. Default 1 s.
	Window time.Duration
	// GrowthFloor (percent, default 30) and GrowthStep (points, default
	// 10): above the floor, each rise of the high-water mark by a step
	// takes a held capture.
	GrowthFloor, GrowthStep float64
	// StepRatio (e.g. 0.25) or StepBytes: a capture at the first sample,
	// then one at every step of growth over it (steps.go); 0: none.
	StepRatio float64
	StepBytes uint64
	// Cooldown is the minimum time between two shipped captures.
	Cooldown time.Duration
	// MaxPerHour caps shipped captures per sliding hour.
	MaxPerHour int
	// HoldSpacing is the minimum time between held captures (default
	// 300 ms); MaxHeldPerHour caps them (default 120).
	HoldSpacing    time.Duration
	MaxHeldPerHour int
	// Interval is the base sampling interval (default 100 ms) and
	// MinInterval the fastest (default 10 ms).
	Interval, MinInterval time.Duration
}

func (o Options) withDefaults() Options {
	def := func(v *float64, d float64) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.Hysteresis, 5)
	def(&o.GrowthFloor, 30)
	def(&o.GrowthStep, 10)
	defDur(&o.Window, time.Second)
	defDur(&o.HoldSpacing, 300*time.Millisecond)
	defDur(&o.Interval, 100*time.Millisecond)
	defDur(&o.MinInterval, 10*time.Millisecond)
	if o.MinInterval > o.Interval {
		o.MinInterval = o.Interval
	}
	if o.MaxHeldPerHour <= 0 {
		o.MaxHeldPerHour = 120
	}
	o.Thresholds = slices.Sorted(slices.Values(o.Thresholds))
	return o
}

// A rule is one kind of trigger. It keeps its own armed state and says
// when it fires; whether the capture is shipped, held or suppressed is the
// arbiter's. Rules see only watched samples (see [Options.Watches]).
type rule interface {
	// kinds lists the kinds the rule can report.
	kinds() []Kind
	// levels adds the usage levels, in bytes, whose crossing can change
	// the rule's state: where it fires and where it re-arms.
	levels(limit uint64, add func(uint64))
	// upcoming adds the levels, in bytes, at which the rule could fire
	// next: sampling speeds up as usage approaches them.
	upcoming(limit uint64, add func(float64))
	// rearm sees every sample before any rule fires.
	rearm(s Sample, w *window)
	// fire returns the rule's capture when it fires on s (Kind and Reason
	// set, Hold for a rule whose captures are always held) and disarms.
	fire(s Sample, w *window) (Decision, bool)
}

// reporter is a rule that fires once per level: it is told of every
// capture at a sample, of any kind, so it does not fire again at a level
// already captured. A capture refused by a cap also counts, so the
// refusal is reported once per level, not on every sample.
type reporter interface {
	reported(s Sample)
}

// rules are the kinds in precedence order: the first that fires on a
// sample is the one capture of that sample, so shipped kinds come before
// the held growth capture.
func rules(o Options) []rule {
	var rs []rule
	if o.stepsOn() {
		rs = append(rs, &steps{o: o}) // first: the baseline is the first sample's capture
	}
	rs = append(rs, newLadder(o))
	if o.Absolute > 0 {
		rs = append(rs, &absolute{o: o, armed: true})
	}
	if o.Horizon > 0 {
		rs = append(rs, &predictive{o: o, armed: true})
	}
	return append(rs, newGrowth(o))
}

// Watches reports whether a container with this limit (0 = none) is
// watched at all: containers without a limit only with an absolute
// threshold or growth steps.
func (o Options) Watches(limit uint64) bool { return limit > 0 || o.Absolute > 0 || o.stepsOn() }

// Levels returns the usage levels, in bytes and ascending, at which a
// kernel notification should wake the watcher: every rung and its re-arm
// level, every growth step and the absolute threshold. Registering them
// all at once means a crossing is never missed while a registration moves.
func (o Options) Levels(limit uint64) []uint64 {
	o = o.withDefaults()
	seen := map[uint64]bool{}
	var out []uint64
	add := func(b uint64) {
		if b > 0 && !seen[b] && (limit == 0 || b < limit) {
			seen[b] = true
			out = append(out, b)
		}
	}
	for _, r := range rules(o) {
		r.levels(limit, add)
	}
	slices.Sort(out)
	return out
}

// Kinds lists the kinds a trigger with these options can report, in
// precedence order.
func (o Options) Kinds() []Kind {
	var out []Kind
	for _, r := range rules(o.withDefaults()) {
		out = append(out, r.kinds()...)
	}
	return out
}

func pctBytes(limit uint64, pct float64) uint64 { return uint64(float64(limit) * pct / 100) }

// Decision is the outcome of one observation.
type Decision struct {
	// Fire: take a capture now.
	Fire bool
	// Kind is what fired; it is also set for a suppressed trigger.
	Kind Kind
	// Reason is for humans, e.g. "usage 76.2% of 128MiB crossed 75%".
	Reason string
	// Hold: keep the capture locally and ship it only if an OOM kill
	// follows.
	Hold bool
	// Suppressed is why a trigger could not fire as asked ("cooldown",
	// "hourly-cap", ...); empty otherwise. A shipped trigger suppressed by
	// cooldown or cap is demoted to a held capture when held spacing allows:
	// then Fire and Hold are true and Suppressed still says why, so the
	// freshest pre-kill profile is kept while nothing is shipped.
	Suppressed string
}

// Trigger holds the state for one container. It is not safe for
// concurrent use.
type Trigger struct {
	o     Options
	rules []rule
	arb   arbiter
	win   window
	limit uint64
}

// New returns a Trigger. Thresholds are used in ascending order.
func New(o Options) *Trigger {
	return newWithRules(o.withDefaults(), rules)
}

func newWithRules(o Options, rules func(Options) []rule) *Trigger {
	return &Trigger{o: o, rules: rules(o), arb: newArbiter(o), win: window{span: o.Window}}
}

// Observe feeds one sample and returns what to do. At most one capture is
// requested per observation: the first rule that fires (see [rules]), and
// any capture tells every per-level rule, so no held growth capture
// follows a shipped one at the same level.
func (t *Trigger) Observe(s Sample) Decision {
	t.limit = s.Limit
	t.win.record(s.Time, s.Usage)
	if !t.o.Watches(s.Limit) {
		return Decision{}
	}
	for _, r := range t.rules {
		r.rearm(s, &t.win)
	}
	for _, r := range t.rules {
		d, ok := r.fire(s, &t.win)
		if !ok {
			continue
		}
		d, reported := t.arb.decide(s.Time, d)
		if reported {
			for _, r := range t.rules {
				if rr, ok := r.(reporter); ok {
					rr.reported(s)
				}
			}
		}
		return d
	}
	return Decision{}
}

// NextInterval says how long to wait before the next sample: the base
// interval normally, faster as usage approaches the next level that could
// fire (a rung, a growth step, the absolute threshold or the limit) or
// grows fast: a quarter of the predicted time to that level, and at most a
// quarter of the base interval within 5 points of it, never below
// MinInterval.
//
// idle, when longer, is used instead while usage is steady (moving less
// than 1 % of the limit per second) and more than 5 points below the next
// level. It is the caller's, not the trigger's, because it depends on how
// the caller is woken: only a caller woken by kernel notifications at
// every level of [Options.Levels] may pass one (a crossing then wakes it
// at once, and an idle container costs a wakeup per idle interval), and
// it passes 0 as soon as those notifications stop, keeping every armed
// rung and the cooldown history.
func (t *Trigger) NextInterval(idle time.Duration) time.Duration {
	iv := t.o.Interval
	usage := t.win.last.u
	next := math.Inf(1)
	consider := func(level float64) {
		if level > usage && level < next {
			next = level
		}
	}
	for _, r := range t.rules {
		r.upcoming(t.limit, consider)
	}
	scale := float64(t.o.Absolute) // what "1 %" and "5 points" are of
	if t.limit > 0 {
		scale = float64(t.limit)
		consider(scale)
	}
	near := next-usage < scale*0.05
	if near {
		iv = min(iv, t.o.Interval/4)
	}
	r, ok := t.win.rate()
	if ok && r > 0 && !math.IsInf(next, 1) {
		eta := time.Duration((next - usage) / r / 4 * float64(time.Second))
		iv = min(iv, eta)
	}
	if idle > iv && ok && !near && math.Abs(r) < scale*0.01 {
		iv = idle
	}
	return max(iv, t.o.MinInterval)
}
