package nodemem

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// ErrMalformed wraps every parse failure of /proc/meminfo.
var ErrMalformed = errors.New("malformed meminfo")

// Meminfo holds the /proc/meminfo fields the accounting uses, in bytes.
type Meminfo struct {
	MemTotal     uint64
	MemAvailable uint64
	// Slab is SReclaimable + SUnreclaim.
	Slab        uint64
	SUnreclaim  uint64
	KernelStack uint64
	PageTables  uint64
}

// meminfoCap bounds the read: the file is about 1.5 KiB.
const meminfoCap = 64 << 10

// ParseMeminfo parses /proc/meminfo. MemTotal and MemAvailable are
// required (MemAvailable exists since Linux 3.14); the kernel fields are 0
// when a kernel lacks them.
func ParseMeminfo(r io.Reader) (Meminfo, error) {
	var m Meminfo
	fields := map[string]*uint64{
		"MemTotal": &m.MemTotal, "MemAvailable": &m.MemAvailable, "Slab": &m.Slab,
		"SUnreclaim": &m.SUnreclaim, "KernelStack": &m.KernelStack, "PageTables": &m.PageTables,
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(io.LimitReader(r, meminfoCap))
	for sc.Scan() {
		key, rest, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok {
			return Meminfo{}, fmt.Errorf("%w: line %q has no colon", ErrMalformed, sc.Text())
		}
		dst, wanted := fields[string(key)]
		if !wanted {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) == 0 || len(f) > 2 || (len(f) == 2 && string(f[1]) != "kB") {
			return Meminfo{}, fmt.Errorf("%w: %s: value %q", ErrMalformed, key, bytes.TrimSpace(rest))
		}
		v, err := strconv.ParseUint(string(f[0]), 10, 64)
		if err != nil {
			return Meminfo{}, fmt.Errorf("%w: %s: %w", ErrMalformed, key, err)
		}
		if len(f) == 2 {
			if v > (1<<64-1)/1024 {
				return Meminfo{}, fmt.Errorf("%w: %s: %d kB overflows", ErrMalformed, key, v)
			}
			v *= 1024
		}
		*dst = v
		seen[string(key)] = true
	}
	if err := sc.Err(); err != nil {
		return Meminfo{}, fmt.Errorf("meminfo: %w", err)
	}
	for _, k := range []string{"MemTotal", "MemAvailable"} {
		if !seen[k] {
			return Meminfo{}, fmt.Errorf("%w: no %s", ErrMalformed, k)
		}
	}
	if m.MemAvailable > m.MemTotal {
		return Meminfo{}, fmt.Errorf("%w: MemAvailable %d > MemTotal %d", ErrMalformed, m.MemAvailable, m.MemTotal)
	}
	return m, nil
}
