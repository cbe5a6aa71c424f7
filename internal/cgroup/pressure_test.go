package cgroup

import (
	"errors"
	"strings"
	"testing"
)

func TestParsePressure(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Pressure
		err  bool
	}{
		{"some and full", "some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\nfull avg10=0.75 avg60=0.10 avg300=0.00 total=6543\n",
			Pressure{Some: PressureLine{1.5, 0.25, 0, 123456}, Full: PressureLine{0.75, 0.1, 0, 6543}}, false},
		{"some only (older kernels' cpu file)", "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
			Pressure{Some: PressureLine{TotalMicros: 7}}, false},
		{"empty", "", Pressure{}, true},
		{"unknown line", "most avg10=0.00\n", Pressure{}, true},
		{"bad number", "some avg10=x avg60=0.00 avg300=0.00 total=0\n", Pressure{}, true},
		{"no equals", "some avg10\n", Pressure{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePressure(strings.NewReader(tt.in))
			if tt.err {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("err = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
