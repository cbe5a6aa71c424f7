package trigger

import "fmt"

// absolute fires when usage reaches a number of bytes, with or without a
// limit; it re-arms below the threshold minus the hysteresis (in percent
// of the threshold).
type absolute struct {
	o     Options
	armed bool
}

func (a *absolute) kinds() []Kind { return []Kind{KindAbsolute} }

func (a *absolute) levels(_ uint64, add func(uint64)) { add(a.o.Absolute) }

func (a *absolute) upcoming(_ uint64, add func(float64)) { add(float64(a.o.Absolute)) }

func (a *absolute) rearm(s Sample, _ *window) {
	if !a.armed && float64(s.Usage) < float64(a.o.Absolute)*(1-a.o.Hysteresis/100) {
		a.armed = true
	}
}

func (a *absolute) fire(s Sample, _ *window) (Decision, bool) {
	if !a.armed || s.Usage < a.o.Absolute {
		return Decision{}, false
	}
	a.armed = false
	return Decision{Kind: KindAbsolute, Reason: fmt.Sprintf("usage %s crossed the absolute threshold %s",
		fmtBytes(float64(s.Usage)), fmtBytes(float64(a.o.Absolute)))}, true
}
