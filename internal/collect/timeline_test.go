package collect

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/heapwatch/heapwatch/capture"
)

func TestTimelineKeepsLastMinuteAndMarks(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 19, 0, 0, 0, time.UTC)
	var tl timeline
	// 90 s of samples every 10 ms: only one per 100 ms and the last minute stay.
	for i := range 9000 {
		at := t0.Add(time.Duration(i) * 10 * time.Millisecond)
		tl.add(capture.Point{Time: at, UsageBytes: uint64(i)})
	}
	end := t0.Add(8999 * 10 * time.Millisecond)
	tl.mark(end, "threshold-75", capture.Point{Time: end})
	// A trigger on a sample never seen is added with its mark.
	late := end.Add(5 * time.Millisecond)
	tl.mark(late, "predictive", capture.Point{Time: late, UsageBytes: 1})
	got := tl.snapshot(late.Add(time.Millisecond))
	if len(got) > timelineCap {
		t.Fatalf("%d points, cap %d", len(got), timelineCap)
	}
	if first := got[0].Time; late.Sub(first) > timelineSpan {
		t.Errorf("oldest point %v is more than %v before %v", first, timelineSpan, late)
	}
	if late.Sub(got[0].Time) < timelineSpan-time.Second {
		t.Errorf("oldest point %v: the timeline holds less than a minute", got[0].Time)
	}
	for i := 1; i < len(got); i++ {
		if !got[i].Time.After(got[i-1].Time) {
			t.Fatalf("point %d at %v not after %v", i, got[i].Time, got[i-1].Time)
		}
	}
	tail := got[len(got)-2:]
	want := []capture.Point{{Time: end, UsageBytes: 8999, Trigger: "threshold-75"}, {Time: late, UsageBytes: 1, Trigger: "predictive"}}
	if diff := cmp.Diff(want, tail); diff != "" {
		t.Errorf("last points (-want +got):\n%s", diff)
	}
	// A snapshot for an earlier capture holds nothing after it, and the
	// snapshot at an OOM kill not the sample that revealed the kill.
	if s := tl.snapshot(end.Add(-time.Second)); s[len(s)-1].Time.After(end.Add(-time.Second)) {
		t.Errorf("snapshot holds a point after its time: %v", s[len(s)-1].Time)
	}
	if s := tl.snapshot(late); !s[len(s)-1].Time.Before(late) {
		t.Errorf("snapshot until %v holds the point taken at that time", late)
	}
}
