package collect

import (
	"sync"
	"time"

	"github.com/heapwatch/heapwatch/capture"
)

// Timeline bounds: one minute of samples, at most one per timelineStep
// unless a trigger fired on it, so a capture's metadata stays a few tens of
// KiB even while the watcher samples every 10 ms.
const (
	timelineSpan = time.Minute
	timelineStep = 100 * time.Millisecond
	timelineCap  = int(timelineSpan/timelineStep) + 64
)

// timeline is a container's recent memory samples, a small ring.
type timeline struct {
	mu  sync.Mutex
	pts []capture.Point // ring storage, len <= timelineCap
	pos int             // next slot once the ring is full
}

// add records a sample. The newest sample is always kept; it replaces the
// previous newest when that one is less than a step after the point before
// it and carries no trigger mark.
func (t *timeline) add(p capture.Point) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := len(t.pts); n >= 2 {
		last, before := &t.pts[(t.pos+n-1)%n], t.pts[(t.pos+n-2)%n]
		if last.Trigger == "" && p.Time.Sub(before.Time) < timelineStep {
			*last = p
			return
		}
	}
	if len(t.pts) < timelineCap {
		t.pts = append(t.pts, p)
		return
	}
	t.pts[t.pos] = p
	t.pos = (t.pos + 1) % len(t.pts)
}

// mark sets the trigger on the sample taken at at, adding it if missing.
func (t *timeline) mark(at time.Time, kind string, p capture.Point) {
	t.mu.Lock()
	n := len(t.pts)
	for i := range n {
		q := &t.pts[(t.pos+n-1-i)%n]
		if q.Time.Equal(at) {
			q.Trigger = kind
			t.mu.Unlock()
			return
		}
		if q.Time.Before(at) {
			break
		}
	}
	t.mu.Unlock()
	p.Trigger = kind
	t.add(p)
}

// snapshot returns the samples of the minute before until, oldest first.
// Strictly before: the sample that reveals an OOM kill is taken after it,
// when the group's memory may already be freed, and is no part of the
// rise to the kill.
func (t *timeline) snapshot(until time.Time) []capture.Point {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(t.pts)
	out := make([]capture.Point, 0, n)
	for i := range n {
		p := t.pts[(t.pos+i)%n]
		if p.Time.Before(until) && until.Sub(p.Time) <= timelineSpan {
			out = append(out, p)
		}
	}
	return out
}
