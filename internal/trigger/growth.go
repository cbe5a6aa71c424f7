package trigger

import (
	"fmt"
	"math"
)

// growth takes a held capture each time the high-water mark rises by a
// step above the floor, so the newest pre-kill profile is always recent;
// the mark resets once usage falls below the floor minus the hysteresis.
// Any capture at a sample advances the mark ([reporter]).
type growth struct {
	o  Options
	hw float64 // last level captured (percent), below the floor when none
}

func newGrowth(o Options) *growth { return &growth{o: o, hw: o.GrowthFloor - o.GrowthStep} }

func (g *growth) kinds() []Kind { return []Kind{KindGrowth} }

func (g *growth) levels(limit uint64, add func(uint64)) {
	if limit == 0 {
		return
	}
	for p := g.o.GrowthFloor; p < 100; p += g.o.GrowthStep {
		add(pctBytes(limit, p))
	}
}

func (g *growth) upcoming(limit uint64, add func(float64)) {
	if limit > 0 {
		add(float64(limit) * math.Max(g.hw+g.o.GrowthStep, g.o.GrowthFloor) / 100)
	}
}

// level quantizes pct down to the step grid.
func (g *growth) level(pct float64) float64 {
	return g.o.GrowthFloor + math.Floor((pct-g.o.GrowthFloor)/g.o.GrowthStep)*g.o.GrowthStep
}

func (g *growth) rearm(s Sample, _ *window) {
	if s.pct() < g.o.GrowthFloor-g.o.Hysteresis {
		g.hw = g.o.GrowthFloor - g.o.GrowthStep
	}
}

func (g *growth) fire(s Sample, _ *window) (Decision, bool) {
	pct := s.pct()
	if s.Limit == 0 || pct < g.o.GrowthFloor || pct < g.hw+g.o.GrowthStep {
		return Decision{}, false
	}
	return Decision{Kind: KindGrowth, Hold: true, Reason: fmt.Sprintf("usage %.1f%% of %s, high-water mark reached %g%% (growth above %g%% in steps of %g)",
		pct, fmtBytes(float64(s.Limit)), g.level(pct), g.o.GrowthFloor, g.o.GrowthStep)}, true
}

func (g *growth) reported(s Sample) { g.hw = math.Max(g.hw, g.level(s.pct())) }
