package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

var (
	// ErrMalformed wraps every parse failure.
	ErrMalformed = errors.New("malformed content")
	// ErrTooLarge is returned when a file exceeds its read buffer.
	ErrTooLarge = errors.New("file exceeds size cap")
)

// unlimitedV1 is the smallest value treated as "no limit" in v1 files. The
// kernel reports PAGE_COUNTER_MAX pages (0x7FFFFFFFFFFFF000 bytes on 64-bit
// with 4 KiB pages); anything this large is not a real limit on any machine.
const unlimitedV1 = 1 << 62

// statCap bounds keyed files (v1 memory.stat is ~1.5 KiB, v2 ~2 KiB).
const statCap = 64 << 10

// ParseValue parses a single-value file ("123\n" or "max\n"). max reports
// the literal "max" (v2 for no limit), in which case v is 0.
func ParseValue(r io.Reader) (v uint64, max bool, err error) {
	b, err := io.ReadAll(io.LimitReader(r, 64))
	if err != nil {
		return 0, false, err
	}
	return parseValue(b)
}

func parseValue(b []byte) (uint64, bool, error) {
	b = bytes.TrimSpace(b)
	if string(b) == "max" {
		return 0, true, nil
	}
	v, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("value %q: %w", truncate(b), ErrMalformed)
	}
	return v, false, nil
}

// ParseKeyed parses a flat keyed file ("key value" lines): memory.stat,
// memory.events, memory.oom_control.
func ParseKeyed(r io.Reader) (map[string]uint64, error) {
	b, err := io.ReadAll(io.LimitReader(r, statCap+1))
	if err != nil {
		return nil, err
	}
	if len(b) > statCap {
		return nil, fmt.Errorf("keyed file: %w", ErrTooLarge)
	}
	m := make(map[string]uint64)
	err = eachKeyed(b, func(k []byte, v uint64) { m[string(k)] = v })
	if err != nil {
		return nil, err
	}
	return m, nil
}

// eachKeyed calls fn for each "key value" line without allocating, for the
// per-sample path.
func eachKeyed(b []byte, fn func(k []byte, v uint64)) error {
	for n := 1; len(b) > 0; n++ {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(line) == 0 {
			continue
		}
		k, val, ok := bytes.Cut(line, []byte{' '})
		if !ok || len(k) == 0 {
			return fmt.Errorf("line %d %q: %w", n, truncate(line), ErrMalformed)
		}
		v, err := strconv.ParseUint(string(bytes.TrimSpace(val)), 10, 64)
		if err != nil {
			return fmt.Errorf("line %d %q: %w", n, truncate(line), ErrMalformed)
		}
		fn(k, v)
	}
	return nil
}

func truncate(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}
