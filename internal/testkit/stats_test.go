package testkit

import (
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, tt := range []struct {
		p    int
		want time.Duration
	}{{0, 1}, {1, 1}, {10, 1}, {11, 2}, {50, 5}, {90, 9}, {99, 10}, {100, 10}} {
		if got := Percentile(ds, tt.p); got != tt.want {
			t.Errorf("Percentile(p%d) = %d, want %d", tt.p, got, tt.want)
		}
	}
	if got := Percentile([]time.Duration{7}, 50); got != 7 {
		t.Errorf("Percentile of one = %d, want 7", got)
	}
	if ds[0] != 5 {
		t.Errorf("Percentile sorted its input: %v", ds)
	}
}
