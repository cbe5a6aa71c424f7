package trigger

import (
	"fmt"
	"math"
)

// steps leaves a series for a slow leak of a target without a limit (a
// host daemon): a "baseline" capture at its first sample, then a "step"
// capture each time usage reaches the next level of a grid anchored at
// the baseline: baseline×(1+StepRatio)^k, or baseline+k×StepBytes. A jump
// over several levels takes one capture; a fall never re-arms a level
// already passed, so the series grows with the leak only. Diffing its
// first and latest capture shows what grew.
type steps struct {
	o       Options
	started bool
	base    float64 // the baseline's usage, at least minStepBase
	next    float64 // the level the next step fires at
	k       int     // the grid index of next
}

// minStepBase keeps the ratio grid moving when the baseline reads 0.
const minStepBase = 1 << 20

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

// level is the k-th level of the grid.
func (st *steps) level(k int) float64 {
	if st.o.StepRatio > 0 {
		return st.base * math.Pow(1+st.o.StepRatio, float64(k))
	}
	return st.base + float64(k)*float64(st.o.StepBytes)
}

// advance moves next to the first level above usage.
func (st *steps) advance(usage float64) {
	for st.next = st.level(st.k); st.next <= usage; st.next = st.level(st.k) {
		st.k++
	}
}

func (st *steps) fire(s Sample, _ *window) (Decision, bool) {
	u := float64(s.Usage)
	if !st.started {
		st.started, st.base, st.k = true, math.Max(u, minStepBase), 1
		st.advance(u)
		return Decision{Kind: KindBaseline, Reason: fmt.Sprintf("baseline usage %s; next capture at %s (%s)",
			fmtBytes(u), fmtBytes(st.next), st.stepText())}, true
	}
	if u < st.next {
		return Decision{}, false
	}
	reached := st.k
	st.advance(u)
	return Decision{Kind: KindStep, Reason: fmt.Sprintf("usage %s is %+.0f%% over the baseline %s (step %d of %s); next capture at %s",
		fmtBytes(u), (u/st.base-1)*100, fmtBytes(st.base), reached, st.stepText(), fmtBytes(st.next))}, true
}

func (st *steps) stepText() string {
	if st.o.StepRatio > 0 {
		return fmt.Sprintf("+%g%%", st.o.StepRatio*100)
	}
	return "+" + fmtBytes(float64(st.o.StepBytes))
}
