package trigger

import (
	"fmt"
	"strconv"
)

// Threshold is the kind of the ladder rung at pct percent of the limit.
func Threshold(pct float64) Kind {
	return Kind(KindThresholdPrefix + strconv.FormatFloat(pct, 'f', -1, 64))
}

// ladder fires as usage crosses each rung, a percentage of the limit; a
// rung re-arms once usage falls below it minus the hysteresis.
type ladder struct {
	rungs      []float64 // ascending
	hysteresis float64
	armed      []bool
}

func newLadder(o Options) *ladder {
	l := &ladder{rungs: o.Thresholds, hysteresis: o.Hysteresis, armed: make([]bool, len(o.Thresholds))}
	for i := range l.armed {
		l.armed[i] = true
	}
	return l
}

func (l *ladder) kinds() []Kind {
	out := make([]Kind, len(l.rungs))
	for i, r := range l.rungs {
		out[i] = Threshold(r)
	}
	return out
}

func (l *ladder) levels(limit uint64, add func(uint64)) {
	if limit == 0 {
		return
	}
	for _, r := range l.rungs {
		add(pctBytes(limit, r))
		add(pctBytes(limit, r-l.hysteresis)) // where the rung re-arms
	}
}

func (l *ladder) upcoming(limit uint64, add func(float64)) {
	if limit == 0 {
		return
	}
	for _, r := range l.rungs {
		add(float64(limit) * r / 100)
	}
}

func (l *ladder) rearm(s Sample, _ *window) {
	pct := s.pct()
	for i, r := range l.rungs {
		if !l.armed[i] && pct < r-l.hysteresis {
			l.armed[i] = true
		}
	}
}

// fire fires the highest armed rung at or below usage and disarms every
// rung it jumped over, so one jump is one capture.
func (l *ladder) fire(s Sample, _ *window) (Decision, bool) {
	if s.Limit == 0 {
		return Decision{}, false
	}
	pct := s.pct()
	hit := -1
	for i, r := range l.rungs {
		if l.armed[i] && pct >= r {
			hit = i
			l.armed[i] = false
		}
	}
	if hit < 0 {
		return Decision{}, false
	}
	r := l.rungs[hit]
	return Decision{Kind: Threshold(r),
		Reason: fmt.Sprintf("usage %.1f%% of %s crossed %g%%", pct, fmtBytes(float64(s.Limit)), r)}, true
}
