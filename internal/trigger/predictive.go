package trigger

import (
	"fmt"
	"time"
)

// predictive fires when the growth rate says the limit is less than the
// horizon away; it re-arms once the prediction has clearly gone away.
type predictive struct {
	o     Options
	armed bool
}

func (p *predictive) kinds() []Kind { return []Kind{KindPredictive} }

func (p *predictive) levels(uint64, func(uint64)) {}

func (p *predictive) upcoming(uint64, func(float64)) {} // the limit: every trigger's

func (p *predictive) rearm(s Sample, w *window) {
	if p.armed || s.Limit == 0 {
		return
	}
	if eta, ok := w.eta(s.Usage, s.Limit); !ok || eta > 2*p.o.Horizon {
		p.armed = true
	}
}

func (p *predictive) fire(s Sample, w *window) (Decision, bool) {
	if !p.armed || s.Limit == 0 || float64(s.Usage) < float64(s.Limit)*p.o.GrowthFloor/100 {
		// Below the floor a fast rise is start-up, not a leak worth a capture.
		return Decision{}, false
	}
	eta, ok := w.eta(s.Usage, s.Limit)
	if !ok || eta > p.o.Horizon {
		return Decision{}, false
	}
	p.armed = false
	rate, _ := w.rate()
	return Decision{Kind: KindPredictive, Reason: fmt.Sprintf("usage %.1f%% of %s growing %s/s reaches the limit in %v (horizon %v)",
		s.pct(), fmtBytes(float64(s.Limit)), fmtBytes(rate), eta.Round(time.Millisecond), p.o.Horizon)}, true
}
