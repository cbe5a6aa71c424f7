package trigger

import "time"

// arbiter is the one place that decides what a rule's capture becomes:
// shipped, held, or suppressed, by the cooldown and hourly cap of shipped
// captures and the spacing and hourly cap of held ones. A shipped capture
// it refuses is demoted to a held one when spacing allows, so the
// freshest pre-kill profile is still kept.
type arbiter struct {
	cooldown    time.Duration
	maxPerHour  int
	holdSpacing time.Duration
	maxHeld     int

	lastShip, lastHold time.Time
	ships, holds       []time.Time // within the last hour
}

func newArbiter(o Options) arbiter {
	return arbiter{cooldown: o.Cooldown, maxPerHour: o.MaxPerHour, holdSpacing: o.HoldSpacing, maxHeld: o.MaxHeldPerHour}
}

// decide applies the limits to a rule's capture d. reported is true when
// the capture was taken or refused by a cap: per-level rules then count
// the level as done. A held capture deferred by spacing is not a
// suppression: nothing is reported, so it fires on the first sample once
// spacing allows, with the freshest profile.
func (a *arbiter) decide(now time.Time, d Decision) (_ Decision, reported bool) {
	if d.Hold {
		return a.hold(now, d)
	}
	a.ships = pruneHour(a.ships, now)
	switch {
	case a.cooldown > 0 && !a.lastShip.IsZero() && now.Sub(a.lastShip) < a.cooldown:
		d.Suppressed = SuppressedCooldown
	case a.maxPerHour > 0 && len(a.ships) >= a.maxPerHour:
		d.Suppressed = SuppressedHourlyCap
	default:
		d.Fire = true
		a.lastShip = now
		a.ships = append(a.ships, now)
		return d, true
	}
	why := d.Suppressed
	d.Hold = true
	d, reported = a.hold(now, d)
	if d.Fire {
		d.Reason += "; kept locally (" + why + ")"
	}
	d.Suppressed = why
	return d, reported
}

// hold applies the held-capture spacing and cap. d.Suppressed is set when
// d is a demoted shipped capture.
func (a *arbiter) hold(now time.Time, d Decision) (Decision, bool) {
	a.holds = pruneHour(a.holds, now)
	switch {
	case !a.lastHold.IsZero() && now.Sub(a.lastHold) < a.holdSpacing:
		if d.Suppressed == "" {
			return Decision{}, false // deferred, not suppressed
		}
		return d, false
	case len(a.holds) >= a.maxHeld:
		d.Suppressed = SuppressedHoldCap
		return d, true
	default:
		d.Fire = true
		a.lastHold = now
		a.holds = append(a.holds, now)
		return d, true
	}
}

func pruneHour(ts []time.Time, now time.Time) []time.Time {
	i := 0
	for i < len(ts) && now.Sub(ts[i]) >= time.Hour {
		i++
	}
	return ts[i:]
}
