// Package trigger decides, from a stream of memory samples of one
// container, when to capture a heap profile. It is pure logic: the caller
// passes the time of each sample, so tests drive it with a fake clock.
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
	"fmt"
	"math"
	"strconv"
	"time"
)

// Kinds of triggers.
const (
	KindPredictive = "predictive"
	KindGrowth     = "growth"
	KindAbsolute   = "absolute"
	// KindThresholdPrefix is followed by the rung, e.g. "threshold-75".
	KindThresholdPrefix = "threshold-"
)

// Suppression reasons.
const (
	SuppressedCooldown  = "cooldown"
	SuppressedHourlyCap = "hourly-cap"
	SuppressedHoldCap   = "held-hourly-cap"
)

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
	// IdleInterval, when longer than Interval, is used instead while usage
	// is steady (moving less than 1 % of the limit per second) and more
	// than 5 points below the next level. Only for callers woken by kernel
	// notifications at every level of Levels: a crossing then wakes them
	// at once, and an idle container costs a wakeup per IdleInterval.
	IdleInterval time.Duration
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
	return o
}

// Watches reports whether a container with this limit (0 = none) is
// watched at all: containers without a limit only with an absolute
// threshold.
func (o Options) Watches(limit uint64) bool { return limit > 0 || o.Absolute > 0 }

// Levels returns the usage levels, in bytes and ascending, at which a
// kernel notification should wake the watcher: every rung and its re-arm
// level, every growth step and the absolute threshold. Registering them all at once means a
// crossing is never missed while a registration moves.
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
	add(o.Absolute)
	if limit > 0 {
		for _, t := range o.Thresholds {
			add(pctBytes(limit, t))
			add(pctBytes(limit, t-o.Hysteresis)) // where the rung re-arms
		}
		for p := o.GrowthFloor; p < 100; p += o.GrowthStep {
			add(pctBytes(limit, p))
		}
	}
	sortUint64(out)
	return out
}

func pctBytes(limit uint64, pct float64) uint64 { return uint64(float64(limit) * pct / 100) }

func sortUint64(s []uint64) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// Decision is the outcome of one observation.
type Decision struct {
	// Fire: take a capture now.
	Fire bool
	// Kind is "threshold-<rung>", "predictive", "growth" or "absolute"; it
	// is also set for a suppressed trigger.
	Kind string
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

type point struct {
	t time.Time
	u float64
}

// Trigger holds the state for one container. It is not safe for
// concurrent use.
type Trigger struct {
	o Options

	armed     []bool // per rung
	absArmed  bool
	predArmed bool
	growthHW  float64 // last growth level captured (percent), <floor when none

	lastShip time.Time
	lastHold time.Time
	ships    []time.Time // within the last hour
	holds    []time.Time

	points []point
	last   point
	limit  uint64
}

// New returns a Trigger. Thresholds are used in ascending order.
func New(o Options) *Trigger {
	o = o.withDefaults()
	th := append([]float64(nil), o.Thresholds...)
	for i := 1; i < len(th); i++ { // insertion sort: at most ten rungs
		for j := i; j > 0 && th[j] < th[j-1]; j-- {
			th[j], th[j-1] = th[j-1], th[j]
		}
	}
	o.Thresholds = th
	t := &Trigger{o: o, armed: make([]bool, len(th)), absArmed: true, predArmed: true}
	for i := range t.armed {
		t.armed[i] = true
	}
	t.growthHW = o.GrowthFloor - o.GrowthStep
	return t
}

// SetIdleInterval changes Options.IdleInterval, keeping every other state:
// for a caller whose kernel notifications stopped.
func (t *Trigger) SetIdleInterval(d time.Duration) { t.o.IdleInterval = d }

// Observe feeds one sample and returns what to do. At most one capture is
// requested per observation: shipped triggers (threshold, absolute,
// predictive) take precedence over a held growth capture, and any capture
// also advances the growth high-water mark, so no held capture follows a
// shipped one at the same level.
func (t *Trigger) Observe(now time.Time, usage, limit uint64) Decision {
	t.limit = limit
	t.record(now, usage)
	if !t.o.Watches(limit) {
		return Decision{}
	}
	pct := 0.0
	if limit > 0 {
		pct = float64(usage) / float64(limit) * 100
	}
	t.rearm(usage, pct)

	var d Decision
	switch {
	case limit > 0 && t.crossedRung(pct, &d):
	case t.o.Absolute > 0 && t.absArmed && usage >= t.o.Absolute:
		t.absArmed = false
		d = Decision{Kind: KindAbsolute, Reason: fmt.Sprintf("usage %s crossed the absolute threshold %s", fmtBytes(float64(usage)), fmtBytes(float64(t.o.Absolute)))}
	case limit > 0 && t.predArmed && t.predicts(now, usage, limit, &d):
		t.predArmed = false
	}
	if d.Kind != "" {
		return t.ship(now, pct, d)
	}
	if limit > 0 && pct >= t.o.GrowthFloor && pct >= t.growthHW+t.o.GrowthStep {
		level := t.level(pct)
		d = Decision{Kind: KindGrowth, Hold: true, Reason: fmt.Sprintf("usage %.1f%% of %s, high-water mark reached %g%% (growth above %g%% in steps of %g)",
			pct, fmtBytes(float64(limit)), level, t.o.GrowthFloor, t.o.GrowthStep)}
		return t.hold(now, level, d)
	}
	return Decision{}
}

// level quantizes pct down to the growth step grid.
func (t *Trigger) level(pct float64) float64 {
	return t.o.GrowthFloor + math.Floor((pct-t.o.GrowthFloor)/t.o.GrowthStep)*t.o.GrowthStep
}

func (t *Trigger) rearm(usage uint64, pct float64) {
	h := t.o.Hysteresis
	for i, r := range t.o.Thresholds {
		if !t.armed[i] && pct < r-h {
			t.armed[i] = true
		}
	}
	if !t.absArmed && float64(usage) < float64(t.o.Absolute)*(1-h/100) {
		t.absArmed = true
	}
	if pct < t.o.GrowthFloor-h {
		t.growthHW = t.o.GrowthFloor - t.o.GrowthStep
	}
	if !t.predArmed && t.limit > 0 {
		// Re-arm once the prediction has clearly gone away.
		if eta, ok := t.eta(usage, t.limit); !ok || eta > 2*t.o.Horizon {
			t.predArmed = true
		}
	}
}

// crossedRung fires the highest armed rung at or below pct and disarms
// every rung it jumped over, so one jump is one capture.
func (t *Trigger) crossedRung(pct float64, d *Decision) bool {
	hit := -1
	for i, r := range t.o.Thresholds {
		if t.armed[i] && pct >= r {
			hit = i
			t.armed[i] = false
		}
	}
	if hit < 0 {
		return false
	}
	r := t.o.Thresholds[hit]
	*d = Decision{Kind: KindThresholdPrefix + strconv.FormatFloat(r, 'f', -1, 64),
		Reason: fmt.Sprintf("usage %.1f%% of %s crossed %g%%", pct, fmtBytes(float64(t.limit)), r)}
	return true
}

func (t *Trigger) predicts(now time.Time, usage, limit uint64, d *Decision) bool {
	if t.o.Horizon <= 0 || float64(usage) < float64(limit)*t.o.GrowthFloor/100 {
		// Below the floor a fast rise is start-up, not a leak worth a capture.
		return false
	}
	eta, ok := t.eta(usage, limit)
	if !ok || eta > t.o.Horizon {
		return false
	}
	rate, _ := t.rate()
	*d = Decision{Kind: KindPredictive, Reason: fmt.Sprintf("usage %.1f%% of %s growing %s/s reaches the limit in %v (horizon %v)",
		float64(usage)/float64(limit)*100, fmtBytes(float64(limit)), fmtBytes(rate), eta.Round(time.Millisecond), t.o.Horizon)}
	return true
}

// ship applies cooldown and the hourly cap to a shipped capture.
func (t *Trigger) ship(now time.Time, pct float64, d Decision) Decision {
	t.ships = pruneHour(t.ships, now)
	switch {
	case t.o.Cooldown > 0 && !t.lastShip.IsZero() && now.Sub(t.lastShip) < t.o.Cooldown:
		d.Suppressed = SuppressedCooldown
	case t.o.MaxPerHour > 0 && len(t.ships) >= t.o.MaxPerHour:
		d.Suppressed = SuppressedHourlyCap
	default:
		d.Fire = true
		t.lastShip = now
		t.ships = append(t.ships, now)
		t.growthHW = math.Max(t.growthHW, t.level(pct))
		return d
	}
	why := d.Suppressed
	d.Hold = true
	d = t.hold(now, t.level(pct), d)
	if d.Fire {
		d.Reason += "; kept locally (" + why + ")"
	}
	d.Suppressed = why
	return d
}

// hold applies the held-capture spacing and cap. A growth step deferred by
// spacing is not a suppression: the mark is not advanced, so it fires on
// the first sample once spacing allows, with the freshest profile.
func (t *Trigger) hold(now time.Time, level float64, d Decision) Decision {
	t.holds = pruneHour(t.holds, now)
	switch {
	case !t.lastHold.IsZero() && now.Sub(t.lastHold) < t.o.HoldSpacing:
		if d.Kind == KindGrowth {
			return Decision{}
		}
	case len(t.holds) >= t.o.MaxHeldPerHour:
		d.Suppressed = SuppressedHoldCap
		t.growthHW = math.Max(t.growthHW, level) // report once per step, not on every sample
	default:
		d.Fire = true
		t.lastHold = now
		t.holds = append(t.holds, now)
		t.growthHW = math.Max(t.growthHW, level)
	}
	return d
}

func pruneHour(ts []time.Time, now time.Time) []time.Time {
	i := 0
	for i < len(ts) && now.Sub(ts[i]) >= time.Hour {
		i++
	}
	return ts[i:]
}

// record keeps the samples of the last Window for the rate.
func (t *Trigger) record(now time.Time, usage uint64) {
	p := point{t: now, u: float64(usage)}
	if len(t.points) > 0 && !now.After(t.points[len(t.points)-1].t) {
		// Same or earlier time (a notification and a tick together):
		// replace, so the rate never divides by zero.
		t.points[len(t.points)-1] = p
	} else {
		t.points = append(t.points, p)
	}
	i := 0
	for i < len(t.points)-2 && now.Sub(t.points[i].t) > t.o.Window {
		i++
	}
	t.points = t.points[i:]
	t.last = p
}

// shortWindow is the recent span whose rate is also considered, so a burst
// that started a moment ago is not averaged away by a flat second.
const shortWindow = 250 * time.Millisecond

// rate returns the growth rate in bytes/s: the larger of the two-point rate
// over the whole window and over its last shortWindow.
func (t *Trigger) rate() (float64, bool) {
	n := len(t.points)
	if n < 2 {
		return 0, false
	}
	last := t.points[n-1]
	r := slope(t.points[0], last)
	for i := n - 2; i >= 0; i-- {
		if last.t.Sub(t.points[i].t) > shortWindow {
			break
		}
		r = math.Max(r, slope(t.points[i], last))
	}
	return r, true
}

func slope(a, b point) float64 {
	dt := b.t.Sub(a.t).Seconds()
	if dt <= 0 {
		return 0
	}
	return (b.u - a.u) / dt
}

// eta is the predicted time until usage reaches limit at the current rate.
func (t *Trigger) eta(usage, limit uint64) (time.Duration, bool) {
	r, ok := t.rate()
	if !ok || r <= 0 || usage >= limit {
		return 0, ok && usage >= limit
	}
	return time.Duration((float64(limit) - float64(usage)) / r * float64(time.Second)), true
}

// NextInterval says how long to wait before the next sample: the base
// interval normally (IdleInterval while steady, see Options), faster as
// usage approaches the next level that could fire (a rung, a growth step,
// the absolute threshold or the limit) or grows fast: a quarter of the
// predicted time to that level, and at most a quarter of the base interval
// within 5 points of it, never below MinInterval.
func (t *Trigger) NextInterval() time.Duration {
	iv := t.o.Interval
	usage := t.last.u
	next := math.Inf(1)
	consider := func(level float64) {
		if level > usage && level < next {
			next = level
		}
	}
	scale := float64(t.o.Absolute) // what "1 %" and "5 points" are of
	if t.limit > 0 {
		l := float64(t.limit)
		scale = l
		for _, r := range t.o.Thresholds {
			consider(l * r / 100)
		}
		consider(l * math.Max(t.growthHW+t.o.GrowthStep, t.o.GrowthFloor) / 100)
		consider(l)
	}
	if t.o.Absolute > 0 {
		consider(float64(t.o.Absolute))
	}
	near := next-usage < scale*0.05
	if near {
		iv = min(iv, t.o.Interval/4)
	}
	r, ok := t.rate()
	if ok && r > 0 && !math.IsInf(next, 1) {
		eta := time.Duration((next - usage) / r / 4 * float64(time.Second))
		iv = min(iv, eta)
	}
	if t.o.IdleInterval > iv && ok && !near && math.Abs(r) < scale*0.01 {
		iv = t.o.IdleInterval
	}
	return max(iv, t.o.MinInterval)
}

// Rate is the current growth rate estimate in bytes/s (0 without enough
// samples), for logs and metrics.
func (t *Trigger) Rate() float64 {
	r, _ := t.rate()
	return r
}

func fmtBytes(b float64) string {
	const unit = 1024
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	neg := b < 0
	b = math.Abs(b)
	for b >= unit && i < len(units)-1 {
		b /= unit
		i++
	}
	s := strconv.FormatFloat(b, 'f', 1, 64)
	if b == math.Trunc(b) {
		s = strconv.FormatFloat(b, 'f', 0, 64)
	}
	if neg {
		s = "-" + s
	}
	return s + units[i]
}
