package trigger

import (
	"math"
	"testing"
	"time"
)

// TestLeakShapesCapturedBeforeKill drives the trigger with the three leak
// shapes of the issue under the default settings, sampling at the
// trigger's own adaptive interval and, when notify is set, also at every
// kernel notification level crossing (as the watcher does with v1
// eventfds), and checks that a capture fires before usage reaches the
// limit. Simulated time advances in 1 ms ticks.
func TestLeakShapesCapturedBeforeKill(t *testing.T) {
	const limit = 130 * mib
	base := 10.0 * mib
	shapes := []struct {
		name  string
		usage func(t time.Duration) float64
	}{
		{"linear 20MiB/s", func(t time.Duration) float64 { return base + 20*mib*t.Seconds() }},
		// A slice doubling every 400 ms: ~32 % -> ~57 % -> dead.
		{"doubling every 400ms", func(t time.Duration) float64 {
			return base + 4*mib*math.Pow(2, math.Floor(t.Seconds()/0.4))
		}},
		{"burst 400MiB/s", func(t time.Duration) float64 {
			return base + 400*mib*max(0, t.Seconds()-0.5)
		}},
	}
	opts := Options{Thresholds: []float64{60, 75, 90}, Interval: 100 * time.Millisecond,
		Cooldown: 30 * time.Second, MaxPerHour: 20, Horizon: 2 * time.Second}
	for _, s := range shapes {
		for _, notify := range []bool{true, false} {
			name := s.name + "/poll"
			if notify {
				name = s.name + "/notify"
			}
			t.Run(name, func(t *testing.T) {
				clk := newFakeClock()
				tr := New(opts)
				levels := opts.Levels(limit)
				var next, first, lastHeld time.Duration = 0, -1, -1
				shipped := false
				prev := s.usage(0)
				for now := time.Duration(0); now < time.Minute; now += time.Millisecond {
					u := s.usage(now)
					if u >= limit {
						if first < 0 {
							t.Fatalf("killed at %v without a capture", now)
						}
						if !shipped {
							t.Errorf("no shipped capture before the kill")
						}
						t.Logf("killed at %v: first capture %v before, newest held %v before, shipped=%v",
							now, now-first, now-lastHeld, shipped)
						return
					}
					crossed := false
					for _, l := range levels {
						if prev < float64(l) && u >= float64(l) {
							crossed = true
						}
					}
					prev = u
					if now < next && !(notify && crossed) {
						continue
					}
					d := tr.Observe(Sample{Time: clk.at(now), Usage: uint64(u), Limit: limit})
					next = now + tr.NextInterval(0)
					if d.Fire {
						if first < 0 {
							first = now
						}
						if d.Hold {
							lastHeld = now
						} else {
							shipped = true
						}
					}
				}
				t.Fatal("the simulated leak never reached the limit")
			})
		}
	}
}
