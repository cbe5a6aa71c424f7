package trigger

import (
	"math"
	"time"
)

type point struct {
	t time.Time
	u float64
}

// window keeps the samples of the last span, for the growth rate.
type window struct {
	span   time.Duration
	points []point
	last   point
}

func (w *window) record(now time.Time, usage uint64) {
	p := point{t: now, u: float64(usage)}
	if len(w.points) > 0 && !now.After(w.points[len(w.points)-1].t) {
		// Same or earlier time (a notification and a tick together):
		// replace, so the rate never divides by zero.
		w.points[len(w.points)-1] = p
	} else {
		w.points = append(w.points, p)
	}
	i := 0
	for i < len(w.points)-2 && now.Sub(w.points[i].t) > w.span {
		i++
	}
	w.points = w.points[i:]
	w.last = p
}

// shortWindow is the recent span whose rate is also considered, so a burst
// that started a moment ago is not averaged away by a flat second.
const shortWindow = 250 * time.Millisecond

// rate returns the growth rate in bytes/s: the larger of the two-point rate
// over the whole window and over its last shortWindow.
func (w *window) rate() (float64, bool) {
	n := len(w.points)
	if n < 2 {
		return 0, false
	}
	last := w.points[n-1]
	r := slope(w.points[0], last)
	for i := n - 2; i >= 0; i-- {
		if last.t.Sub(w.points[i].t) > shortWindow {
			break
		}
		r = math.Max(r, slope(w.points[i], last))
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
func (w *window) eta(usage, limit uint64) (time.Duration, bool) {
	r, ok := w.rate()
	if !ok || r <= 0 || usage >= limit {
		return 0, ok && usage >= limit
	}
	return time.Duration((float64(limit) - float64(usage)) / r * float64(time.Second)), true
}
