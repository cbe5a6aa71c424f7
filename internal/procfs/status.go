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
	return readStatus(p, ParsePeakRSS)
}

// ParsePeakRSS returns the VmHWM line of a /proc/<pid>/status file in bytes.
func ParsePeakRSS(r io.Reader) (int64, error) { return statusKB(r, "VmHWM") }

// RSS reads VmRSS from /proc/<pid>/status: the process's resident set in
// bytes. A kernel thread has none (an ErrMalformed error).
func (p Proc) RSS() (int64, error) {
	return readStatus(p, ParseRSS)
}

// ParseRSS returns the VmRSS line of a /proc/<pid>/status file in bytes.
func ParseRSS(r io.Reader) (int64, error) { return statusKB(r, "VmRSS") }

// statusKB returns the "<key>: <n> kB" line of a status file in bytes.
func statusKB(r io.Reader, key string) (int64, error) {
	v, err := statusLine(r, key+":")
	if err != nil {
		return 0, err
	}
	kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
	if err != nil || kib < 0 {
		return 0, fmt.Errorf("status: %s %q: %w", key, v, ErrMalformed)
	}
	return kib << 10, nil
}

// EffectiveUID reads the effective uid from /proc/<pid>/status (readable by
// anyone, unlike the files a ptrace access check guards).
func (p Proc) EffectiveUID() (int, error) {
	return readStatus(p, ParseEffectiveUID)
}

// ParseEffectiveUID returns the second field of the Uid line of a
// /proc/<pid>/status file ("Uid:\treal\teffective\tsaved\tfs").
func ParseEffectiveUID(r io.Reader) (int, error) {
	v, err := statusLine(r, "Uid:")
	if err != nil {
		return 0, err
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

// readStatus reads /proc/<pid>/status and parses it with parse.
func readStatus[T any](p Proc, parse func(io.Reader) (T, error)) (T, error) {
	var zero T
	b, err := readCapped(p.Path("status"), smallCap)
	if err != nil {
		return zero, fmt.Errorf("procfs: pid %d: %w", p.PID, err)
	}
	v, err := parse(bytes.NewReader(b))
	if err != nil {
		return zero, fmt.Errorf("procfs: pid %d: %w", p.PID, err)
	}
	return v, nil
}

// statusLine returns the rest of the status line starting with key.
func statusLine(r io.Reader, key string) (string, error) {
	sc := bufio.NewScanner(io.LimitReader(r, smallCap))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key); ok {
			return v, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("status: %w", err)
	}
	return "", fmt.Errorf("status: no %s line: %w", strings.TrimSuffix(key, ":"), ErrMalformed)
}
