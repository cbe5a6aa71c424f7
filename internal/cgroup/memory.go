// Package cgroup reads a container's memory cgroup (v1 or v2) and delivers
// the kernel's notifications for it.
//
// A Memory keeps its files open and re-reads them with pread on each
// Sample, so a sample costs a handful of syscalls and no allocation beyond
// the result. "max" and missing optional files are values; every other
// failure is returned, and reads after the cgroup was removed return ErrGone.
package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Version is the cgroup hierarchy version.
type Version int

const (
	V1 Version = 1
	V2 Version = 2
)

var (
	// ErrGone is returned once the cgroup has been removed (the container
	// exited and its runtime deleted the group).
	ErrGone = errors.New("cgroup removed")
	// ErrNotMemoryCgroup is returned by Open for a directory holding
	// neither v1 nor v2 memory files.
	ErrNotMemoryCgroup = errors.New("not a memory cgroup")
)

// Sample is one reading of a memory cgroup.
type Sample struct {
	Time time.Time
	// Usage is memory.usage_in_bytes (v1) or memory.current (v2).
	Usage uint64
	// WorkingSet is Usage minus inactive file pages, floored at 0: the
	// figure the kubelet evicts on and reports as container memory.
	WorkingSet uint64
	// Limit is the effective limit in bytes, 0 when there is none.
	Limit uint64
	// High is v2 memory.high, 0 when unset (v1: always 0).
	High uint64
	// MaxUsage is v1's peak usage (memory.max_usage_in_bytes), 0 for v2.
	MaxUsage uint64
	// OOMKills counts processes of the group killed by the OOM killer.
	OOMKills uint64
	// OOMs counts v2 "oom" events (allocation failures at the limit).
	OOMs uint64
	// UnderOOM is v1's under_oom flag (only set with oom_kill_disable).
	UnderOOM bool
}

// Ratio is Usage/Limit, 0 without a limit.
func (s Sample) Ratio() float64 {
	if s.Limit == 0 {
		return 0
	}
	return float64(s.Usage) / float64(s.Limit)
}

// file names per version.
type layout struct {
	usage, limit, stat, events, peak, high string
	inactive                               []string // memory.stat keys, preferred first
}

var layouts = map[Version]layout{
	V1: {usage: "memory.usage_in_bytes", limit: "memory.limit_in_bytes", stat: "memory.stat",
		events: "memory.oom_control", peak: "memory.max_usage_in_bytes",
		inactive: []string{"total_inactive_file", "inactive_file"}},
	V2: {usage: "memory.current", limit: "memory.max", stat: "memory.stat",
		events: "memory.events", high: "memory.high",
		inactive: []string{"inactive_file"}},
}

// Memory is an open memory cgroup. Its methods are safe for concurrent use.
type Memory struct {
	dir     string
	version Version
	names   layout

	mu sync.Mutex
	// d is the directory itself, so cgroup.event_control can be opened
	// relative to it after the process whose /proc/<pid>/root led here is
	// gone.
	d *os.File
	// usage is required; the others are nil when the file does not exist.
	usage, limit, stat, events, peak, high *RawFile
	buf                                    []byte

	// memory.stat is the costliest file to generate (v1 walks the
	// hierarchy); with a refresh policy its values are reused while fresh.
	statMaxAge   time.Duration
	statMaxDelta uint64
	statAt       time.Time
	statUsage    uint64
	maxUsage     uint64
	inactive     uint64
	hierLimit    uint64
}

// SetStatRefresh lets Sample reuse the inactive-file figure (and v1's
// hierarchical limit) from memory.stat for up to maxAge, as long as usage
// moved less than maxDelta bytes since it was read. Inactive file pages
// change slowly while a leak moves usage, so this keeps the working set
// exact when it matters and makes idle samples cheap. The default (zero)
// reads memory.stat on every sample.
func (m *Memory) SetStatRefresh(maxAge time.Duration, maxDelta uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.statMaxAge, m.statMaxDelta = maxAge, maxDelta
}

// Open opens the memory cgroup at dir, detecting its version.
func Open(dir string) (*Memory, error) {
	v, err := detect(dir)
	if err != nil {
		return nil, err
	}
	m := &Memory{dir: dir, version: v, names: layouts[v], buf: make([]byte, statCap)}
	if m.d, err = os.Open(dir); err != nil {
		return nil, m.wrap(".", err)
	}
	if m.usage, err = OpenRaw(filepath.Join(dir, m.names.usage)); err != nil {
		m.Close()
		return nil, m.wrap(m.names.usage, err)
	}
	for _, o := range []struct {
		f    **RawFile
		name string
	}{{&m.limit, m.names.limit}, {&m.stat, m.names.stat}, {&m.events, m.names.events}, {&m.peak, m.names.peak}, {&m.high, m.names.high}} {
		if o.name == "" {
			continue
		}
		f, err := OpenRaw(filepath.Join(dir, o.name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			m.Close()
			return nil, m.wrap(o.name, err)
		}
		*o.f = f
	}
	return m, nil
}

func detect(dir string) (Version, error) {
	for _, v := range []Version{V1, V2} {
		_, err := os.Stat(filepath.Join(dir, layouts[v].usage))
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return 0, fmt.Errorf("cgroup %s: %w", dir, err)
		}
	}
	if _, err := os.Stat(dir); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", dir, errors.Join(ErrGone, err))
	}
	return 0, fmt.Errorf("cgroup %s: %w", dir, ErrNotMemoryCgroup)
}

// Dir is the directory the cgroup was opened at.
func (m *Memory) Dir() string { return m.dir }

// Version is the detected hierarchy version.
func (m *Memory) Version() Version { return m.version }

// Close closes the files.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	if m.d != nil {
		errs = append(errs, m.d.Close())
	}
	for _, f := range []*RawFile{m.usage, m.limit, m.stat, m.events, m.peak, m.high} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	m.d, m.usage, m.limit, m.stat, m.events, m.peak, m.high = nil, nil, nil, nil, nil, nil, nil
	return errors.Join(errs...)
}

// wrap adds context and maps "the group is gone" errors to ErrGone.
func (m *Memory) wrap(name string, err error) error {
	if errors.Is(err, syscall.ENODEV) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, os.ErrClosed) {
		err = errors.Join(ErrGone, err)
	}
	return fmt.Errorf("cgroup %s: %s: %w", m.dir, name, err)
}

// read re-reads an open file from offset 0 into m.buf.
func (m *Memory) read(f *RawFile, name string) ([]byte, error) {
	if f == nil {
		return nil, m.wrap(name, os.ErrClosed)
	}
	n, err := f.Pread(m.buf)
	if err != nil {
		return nil, m.wrap(name, err)
	}
	if n == len(m.buf) {
		return nil, m.wrap(name, ErrTooLarge)
	}
	return m.buf[:n], nil
}

func (m *Memory) readValue(f *RawFile, name string) (uint64, bool, error) {
	b, err := m.read(f, name)
	if err != nil {
		return 0, false, err
	}
	v, max, err := parseValue(b)
	if err != nil {
		return 0, false, m.wrap(name, err)
	}
	return v, max, nil
}

// RawFile is an open kernel-generated file (cgroup, /proc) re-read from
// offset 0 with raw system calls: such files never block, and a raw call
// skips the Go scheduler's system-call bookkeeping, which wakes the
// runtime's sysmon thread whenever that sleeps. At ten samples a second
// that wakeup costs more than the read (BenchmarkSidecarCPU).
type RawFile struct {
	f  *os.File
	fd uintptr // taken once: File.Fd itself makes a system call
}

// OpenRaw opens path for reading.
func OpenRaw(path string) (*RawFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return &RawFile{f: f, fd: f.Fd()}, nil
}

// Pread reads the file from offset 0 into b.
func (r *RawFile) Pread(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_PREAD64, r.fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
		switch e {
		case 0:
			runtime.KeepAlive(r.f)
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return 0, &fs.PathError{Op: "pread", Path: r.f.Name(), Err: e}
	}
}

// Fd is the file descriptor (for cgroup.event_control registrations).
func (r *RawFile) Fd() uintptr { return r.fd }

// Close closes the file.
func (r *RawFile) Close() error { return r.f.Close() }

// limitValue turns a raw limit into "0 = none".
func limitValue(v uint64, max bool) uint64 {
	if max || v >= unlimitedV1 {
		return 0
	}
	return v
}

// Sample reads usage, limit, working set and OOM counters.
func (m *Memory) Sample() (Sample, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Sample{Time: time.Now()}
	var err error
	if s.Usage, _, err = m.readValue(m.usage, m.names.usage); err != nil {
		return Sample{}, err
	}
	if m.limit != nil {
		v, max, err := m.readValue(m.limit, m.names.limit)
		if err != nil {
			return Sample{}, err
		}
		s.Limit = limitValue(v, max)
	}
	if m.high != nil {
		v, max, err := m.readValue(m.high, m.names.high)
		if err != nil {
			return Sample{}, err
		}
		s.High = limitValue(v, max)
	}
	// memory.stat and the peak are re-read only when the policy of
	// SetStatRefresh says the cached figures are stale.
	stale := m.statStale(s)
	if m.peak != nil {
		if stale {
			if m.maxUsage, _, err = m.readValue(m.peak, m.names.peak); err != nil {
				return Sample{}, err
			}
		}
		s.MaxUsage = max(m.maxUsage, s.Usage)
	}
	s.WorkingSet = s.Usage
	if m.stat != nil {
		if err := m.sampleStat(&s, stale); err != nil {
			return Sample{}, err
		}
	}
	if m.events != nil {
		b, err := m.read(m.events, m.names.events)
		if err != nil {
			return Sample{}, err
		}
		err = eachKeyed(b, func(k []byte, v uint64) {
			switch string(k) {
			case "oom_kill":
				s.OOMKills = v
			case "oom":
				s.OOMs = v
			case "under_oom":
				s.UnderOOM = v != 0
			}
		})
		if err != nil {
			return Sample{}, m.wrap(m.names.events, err)
		}
	}
	return s, nil
}

// statStale reports whether memory.stat (and the peak) must be re-read for s.
func (m *Memory) statStale(s Sample) bool {
	delta := max(s.Usage, m.statUsage) - min(s.Usage, m.statUsage)
	return m.statAt.IsZero() || s.Time.Sub(m.statAt) >= m.statMaxAge || delta >= m.statMaxDelta
}

// SampleFiles are the files every Sample of a group of version v reads,
// relative to its directory; memory.stat and v1's peak usage are re-read
// only as SetStatRefresh allows. The CPU benchmark's floor program reads
// exactly these.
func SampleFiles(v Version) []string {
	l := layouts[v]
	out := []string{l.usage, l.limit}
	if l.high != "" {
		out = append(out, l.high)
	}
	return append(out, l.events)
}

// sampleStat derives the working set (and v1's hierarchical limit, which
// is lower than the group's own when an ancestor, e.g. the pod, is limited).
func (m *Memory) sampleStat(s *Sample, stale bool) error {
	if stale {
		b, err := m.read(m.stat, m.names.stat)
		if err != nil {
			return err
		}
		inactive, rank, hier := uint64(0), len(m.names.inactive), uint64(0)
		err = eachKeyed(b, func(k []byte, v uint64) {
			for i, name := range m.names.inactive {
				if i < rank && string(k) == name {
					inactive, rank = v, i
				}
			}
			if m.version == V1 && string(k) == "hierarchical_memory_limit" {
				hier = limitValue(v, false)
			}
		})
		if err != nil {
			return m.wrap(m.names.stat, err)
		}
		m.inactive, m.hierLimit, m.statAt, m.statUsage = inactive, hier, s.Time, s.Usage
	}
	if m.hierLimit != 0 && (s.Limit == 0 || m.hierLimit < s.Limit) {
		s.Limit = m.hierLimit
	}
	if m.inactive < s.Usage {
		s.WorkingSet = s.Usage - m.inactive
	} else {
		s.WorkingSet = 0
	}
	return nil
}

// Stat returns memory.stat as a map (nil when the file does not exist).
func (m *Memory) Stat() (map[string]uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stat == nil {
		return nil, nil
	}
	b, err := m.read(m.stat, m.names.stat)
	if err != nil {
		return nil, err
	}
	out, err := ParseKeyed(bytes.NewReader(b))
	if err != nil {
		return nil, m.wrap(m.names.stat, err)
	}
	return out, nil
}

// usageFD and eventsFD give the descriptors cgroup.event_control refers to.
func (m *Memory) usageFD() (uintptr, error) {
	return m.fd(func() *RawFile { return m.usage }, m.names.usage)
}

func (m *Memory) eventsFD() (uintptr, error) {
	return m.fd(func() *RawFile { return m.events }, m.names.events)
}

func (m *Memory) fd(pick func() *RawFile, name string) (uintptr, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := pick()
	if f == nil {
		return 0, m.wrap(name, os.ErrClosed)
	}
	return f.Fd(), nil
}

// openControl opens cgroup.event_control for writing, relative to the
// directory descriptor.
func (m *Memory) openControl() (*os.File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.d == nil {
		return nil, m.wrap("cgroup.event_control", os.ErrClosed)
	}
	var fd int
	var err error
	rc, cerr := m.d.SyscallConn()
	if cerr != nil {
		return nil, m.wrap("cgroup.event_control", cerr)
	}
	if cerr := rc.Control(func(dfd uintptr) {
		fd, err = unix.Openat(int(dfd), "cgroup.event_control", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	}); cerr != nil {
		return nil, m.wrap("cgroup.event_control", cerr)
	}
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: open cgroup.event_control: %w", m.dir, err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(m.dir, "cgroup.event_control")), nil
}
