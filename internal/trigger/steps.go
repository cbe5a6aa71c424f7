package trigger

import (
	"fmt"
	"math"
)

// steps leaves a series for a slow leak of a target without a limit (a
// host daemon): a "baseline" capture at its first sample, then a "step"
// capture each time usage reaches the next level of a grid anchored at
// the baseline: each level StepRatio above the previous one (but at least
// minStep), or StepBytes above it. A jump over several levels takes one
// capture; a fall never re-arms a level already passed, so the series
// grows with the leak only. Diffing its first and latest capture shows
// what grew.
type steps struct {
	o       Options
	started bool
	base    float64 // the baseline's usage
	next    float64 // the level the next step fires at
	k       int     // the grid index of next
}

// minStep is the smallest ratio step: a daemon just (re)started grows by
// a few MiB as it initialises, which is no series worth taking.
const minStep = 16 << 20

func (o Options) stepsOn() bool { return o.StepRatio > 0 || o.StepBytes > 0 }

func (st *steps) kinds() []Kind { return []Kind{KindBaseline, KindStep} }

// levels is empty: the grid depends on the baseline, unknown before the
// first sample, and its next level is in upcoming.
func (st *steps) levels(uint64, func(uint64)) {}

func (st *steps) upcoming(_ uint64, add func(float64)) {
	if st.started {
		add(st.next)
	}
}

func (st *steps) rearm(Sample, *window) {}

// above is the level of the grid after level.
func (st *steps) above(level float64) float64 {
	if st.o.StepRatio > 0 {
		return math.Max(level*(1+st.o.StepRatio), level+minStep)
	}
	return level + float64(st.o.StepBytes)
}

// advance moves next to the first level above usage.
func (st *steps) advance(usage float64) {
	for st.next <= usage {
		st.next = st.above(st.next)
		st.k++
	}
}

func (st *steps) fire(s Sample, _ *window) (Decision, bool) {
	u := float64(s.Usage)
	if !st.started {
		st.started, st.base, st.next = true, u, st.above(u)
		st.k = 1
		return Decision{Kind: KindBaseline, Reason: fmt.Sprintf("baseline usage %s; next capture at %s (%s)",
			fmtBytes(u), fmtBytes(st.next), st.stepText())}, true
	}
	if u < st.next {
		return Decision{}, false
	}
	reached := st.k
	st.advance(u)
	return Decision{Kind: KindStep, Reason: fmt.Sprintf("usage %s is %+.0f%% over the baseline %s (step %d of %s); next capture at %s",
		fmtBytes(u), (u/max(st.base, 1)-1)*100, fmtBytes(st.base), reached, st.stepText(), fmtBytes(st.next))}, true
}

func (st *steps) stepText() string {
	if st.o.StepRatio > 0 {
		return fmt.Sprintf("+%g%%, at least %s", st.o.StepRatio*100, fmtBytes(minStep))
	}
	return "+" + fmtBytes(float64(st.o.StepBytes))
}
