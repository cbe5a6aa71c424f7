package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// PressureLine is one line of a PSI file: the share of wall time (percent)
// some or all tasks of the group were stalled on memory, averaged over 10,
// 60 and 300 s, and the total stall time in microseconds.
type PressureLine struct {
	Avg10, Avg60, Avg300 float64
	TotalMicros          uint64
}

// Pressure is v2 memory.pressure (PSI): Some is time at least one task
// stalled on memory (reclaim, refaults), Full time all of them did.
type Pressure struct {
	Some, Full PressureLine
}

// Pressure reads memory.pressure. ok is false when the group has none (v1,
// or a kernel without PSI). It is read only when asked (at capture time),
// so sampling stays as cheap as before.
func (m *Memory) Pressure() (p Pressure, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(m.dir, "memory.pressure"))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.EOPNOTSUPP) {
		return Pressure{}, false, nil
	}
	if err != nil {
		return Pressure{}, false, m.wrap("memory.pressure", err)
	}
	p, err = ParsePressure(bytes.NewReader(b))
	if err != nil {
		return Pressure{}, false, m.wrap("memory.pressure", err)
	}
	return p, true, nil
}

// ParsePressure parses a PSI file:
//
//	some avg10=0.00 avg60=0.00 avg300=0.00 total=0
//	full avg10=0.00 avg60=0.00 avg300=0.00 total=0
func ParsePressure(r io.Reader) (Pressure, error) {
	var p Pressure
	seen := map[string]bool{}
	sc := bufio.NewScanner(io.LimitReader(r, statCap))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		var line *PressureLine
		switch f[0] {
		case "some":
			line = &p.Some
		case "full":
			line = &p.Full
		default:
			return Pressure{}, fmt.Errorf("%w: pressure line %q", ErrMalformed, sc.Text())
		}
		seen[f[0]] = true
		for _, kv := range f[1:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return Pressure{}, fmt.Errorf("%w: pressure field %q", ErrMalformed, kv)
			}
			var err error
			switch k {
			case "avg10":
				line.Avg10, err = strconv.ParseFloat(v, 64)
			case "avg60":
				line.Avg60, err = strconv.ParseFloat(v, 64)
			case "avg300":
				line.Avg300, err = strconv.ParseFloat(v, 64)
			case "total":
				line.TotalMicros, err = strconv.ParseUint(v, 10, 64)
			}
			if err != nil {
				return Pressure{}, fmt.Errorf("%w: pressure field %q: %w", ErrMalformed, kv, err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Pressure{}, err
	}
	if !seen["some"] {
		return Pressure{}, fmt.Errorf("%w: pressure without a some line", ErrMalformed)
	}
	return p, nil
}
