package procfs

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// PeakRSS reads VmHWM from /proc/<pid>/status: the process's high-water
// resident set in bytes (the benchmarks' memory figure).
func (p Proc) PeakRSS() (int64, error) {
	b, err := readCapped(p.Path("status"), smallCap)
	if err != nil {
		return 0, fmt.Errorf("procfs: pid %d: %w", p.PID, err)
	}
	n, err := ParsePeakRSS(bytes.NewReader(b))
	if err != nil {
		return 0, fmt.Errorf("procfs: pid %d: %w", p.PID, err)
	}
	return n, nil
}

// ParsePeakRSS returns the VmHWM line of a /proc/<pid>/status file in bytes.
func ParsePeakRSS(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(io.LimitReader(r, smallCap))
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "VmHWM:")
		if !ok {
			continue
		}
		kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil || kib < 0 {
			return 0, fmt.Errorf("status: VmHWM %q: %w", v, ErrMalformed)
		}
		return kib << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("status: %w", err)
	}
	return 0, fmt.Errorf("status: no VmHWM line: %w", ErrMalformed)
}

// EffectiveUID reads the effective uid from /proc/<pid>/status (readable by
// anyone, unlike the files a ptrace access check guards).
func (p Proc) EffectiveUID() (int, error) {
	b, err := readCapped(p.Path("status"), smallCap)
	if err != nil {
		return 0, fmt.Errorf("procfs: pid %d: %w", p.PID, err)
	}
	uid, err := ParseEffectiveUID(bytes.NewReader(b))
	if err != nil {
		return 0, fmt.Errorf("procfs: pid %d: %w", p.PID, err)
	}
	return uid, nil
}

// ParseEffectiveUID returns the second field of the Uid line of a
// /proc/<pid>/status file ("Uid:\treal\teffective\tsaved\tfs").
func ParseEffectiveUID(r io.Reader) (int, error) {
	sc := bufio.NewScanner(io.LimitReader(r, smallCap))
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "Uid:")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) < 2 {
			return 0, fmt.Errorf("status: Uid %q: %w", v, ErrMalformed)
		}
		uid, err := strconv.Atoi(f[1])
		if err != nil || uid < 0 {
			return 0, fmt.Errorf("status: Uid %q: %w", v, ErrMalformed)
		}
		return uid, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("status: %w", err)
	}
	return 0, fmt.Errorf("status: no Uid line: %w", ErrMalformed)
}
