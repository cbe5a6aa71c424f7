package procfs

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"syscall"
)

var errESRCH = syscall.ESRCH

// Stat holds the fields of /proc/<pid>/stat the sidecar uses.
type Stat struct {
	PID   int
	Comm  string
	State byte
	PPID  int
	// Flags is the kernel's per-task flags word (PF_*).
	Flags uint64
	// StartTime is in clock ticks since boot; (PID, StartTime) identifies a
	// process across PID reuse.
	StartTime uint64
}

// Stat reads /proc/<pid>/stat.
func (p Proc) Stat() (Stat, error) {
	b, err := readCapped(p.Path("stat"), smallCap)
	if err != nil {
		return Stat{}, fmt.Errorf("procfs: pid %d: %w", p.PID, err)
	}
	s, err := ParseStat(bytes.NewReader(b))
	if err != nil {
		return Stat{}, fmt.Errorf("procfs: pid %d: %w", p.PID, err)
	}
	return s, nil
}

// ParseStat parses the content of /proc/<pid>/stat. The comm field may hold
// spaces and parentheses, so it is delimited by the first "(" and last ")".
func ParseStat(r io.Reader) (Stat, error) {
	b, err := io.ReadAll(io.LimitReader(r, smallCap))
	if err != nil {
		return Stat{}, fmt.Errorf("stat: %w", err)
	}
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return Stat{}, fmt.Errorf("stat: no (comm): %w", ErrMalformed)
	}
	var s Stat
	if s.PID, err = strconv.Atoi(strings.TrimSpace(string(b[:open]))); err != nil {
		return Stat{}, fmt.Errorf("stat: pid: %w", ErrMalformed)
	}
	s.Comm = string(b[open+1 : closing])
	// Fields after comm start at field 3 (state); starttime is field 22.
	rest := strings.Fields(string(b[closing+1:]))
	if len(rest) < 20 {
		return Stat{}, fmt.Errorf("stat: %d fields after comm, want >= 20: %w", len(rest), ErrMalformed)
	}
	if len(rest[0]) != 1 || !isLetter(rest[0][0]) {
		return Stat{}, fmt.Errorf("stat: state %q: %w", rest[0], ErrMalformed)
	}
	s.State = rest[0][0]
	if s.PPID, err = strconv.Atoi(rest[1]); err != nil {
		return Stat{}, fmt.Errorf("stat: ppid %q: %w", rest[1], ErrMalformed)
	}
	if s.Flags, err = strconv.ParseUint(rest[6], 10, 64); err != nil {
		return Stat{}, fmt.Errorf("stat: flags %q: %w", rest[6], ErrMalformed)
	}
	if s.StartTime, err = strconv.ParseUint(rest[19], 10, 64); err != nil {
		return Stat{}, fmt.Errorf("stat: starttime %q: %w", rest[19], ErrMalformed)
	}
	return s, nil
}

// pfKthread is PF_KTHREAD of include/linux/sched.h.
const pfKthread = 0x00200000

// KernelThread reports a kernel thread, from its PF_KTHREAD flag: a fact
// fixed for the task's life, unlike an empty command line (which a live
// process also shows while it is inside execve).
func (s Stat) KernelThread() bool { return s.Flags&pfKthread != 0 }

// Comm reads /proc/<pid>/comm without the trailing newline.
func (p Proc) Comm() (string, error) {
	b, err := readCapped(p.Path("comm"), smallCap)
	if err != nil {
		return "", fmt.Errorf("procfs: pid %d: %w", p.PID, err)
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

// Cmdline reads the NUL-separated argument vector. Kernel threads and
// zombies have an empty one, and so has a live process for a moment while
// it is inside execve.
func (p Proc) Cmdline() ([]string, error) {
	b, err := readCapped(p.Path("cmdline"), smallCap)
	if err != nil {
		return nil, fmt.Errorf("procfs: pid %d: %w", p.PID, err)
	}
	return ParseCmdline(bytes.NewReader(b))
}

// ParseCmdline splits a NUL-separated argument vector.
func ParseCmdline(r io.Reader) ([]string, error) {
	b, err := io.ReadAll(io.LimitReader(r, smallCap))
	if err != nil {
		return nil, fmt.Errorf("cmdline: %w", err)
	}
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\x00"), nil
}

func isLetter(c byte) bool { return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' }
