package watch

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/heapwatch/heapwatch/internal/cgroup"
)

// sampler is the one goroutine that samples every watched container, each
// at its own adaptive interval. It sleeps on a timerfd served by the Go
// runtime's netpoller and arms it with raw system calls, and the cgroup
// reads are raw too (cgroup.RawFile): an idle tick wakes one thread once and
// makes no Go timer and no scheduler-visible system call, which would also
// wake the runtime's sysmon thread every time. That keeps polling close to
// a C loop doing the same reads (BenchmarkSidecarCPU). At every tick it
// also reads the discovery probe (see probe.go).
type sampler struct {
	w   *Watcher
	tfd *os.File
	rc  syscall.RawConn

	mu   sync.Mutex
	list []*watched
	// kicked is set by kick; the loop re-checks it after arming the timer
	// so that a kick racing with the arming is seen at once.
	kicked atomic.Bool
	armMu  sync.Mutex
	period time.Duration // under armMu
}

func newSampler(w *Watcher) (*sampler, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("watch: timerfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "timerfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("watch: timerfd: %w", err)
	}
	return &sampler{w: w, tfd: f, rc: rc}, nil
}

// add makes the loop sample c at once.
func (s *sampler) add(c *watched) {
	s.mu.Lock()
	s.list = append(s.list, c)
	s.mu.Unlock()
	c.due.Store(true)
	s.kick()
}

// kick wakes the loop now. It keeps the timer's period, so the timer
// always has a next expiry whatever the order of a kick and the loop's own
// arming: a lost wakeup costs at most one period, never a stall.
func (s *sampler) kick() {
	s.armMu.Lock()
	defer s.armMu.Unlock()
	s.kicked.Store(true)
	s.settime(time.Nanosecond, s.period)
}

// arm makes the timer expire after period and then every period.
func (s *sampler) arm(period time.Duration) {
	s.armMu.Lock()
	defer s.armMu.Unlock()
	s.period = period
	s.settime(period, period)
}

// settime arms the timer to expire after d (at least 1 ns: zero disarms),
// then every period (0: once).
func (s *sampler) settime(d, period time.Duration) {
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(max(d, time.Nanosecond))), Interval: unix.NsecToTimespec(int64(period))}
	_ = s.rc.Control(func(fd uintptr) {
		_, _, _ = syscall.RawSyscall6(syscall.SYS_TIMERFD_SETTIME, fd, 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0)
	})
}

// wait parks until the timer expires at deadline; false once the timerfd is
// closed. Reading the timerfd consumes the expiry and re-arms a periodic
// timer. Before parking, a clock check stands in for the read that would
// tell an expiry already past (one system call less per tick); an expiry
// between the check and parking is kept by the poller.
func (s *sampler) wait(deadline time.Time) bool {
	first := true
	var buf [8]byte
	err := s.rc.Read(func(fd uintptr) bool {
		if first {
			first = false
			if time.Now().Before(deadline) {
				return false
			}
		}
		_, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&buf[0])), 8)
		return e != syscall.EAGAIN
	})
	return err == nil
}

// close stops the loop.
func (s *sampler) close() { s.tfd.Close() }

// run samples until close; it then closes every container.
func (s *sampler) run(probe *probe) {
	defer func() {
		s.mu.Lock()
		list := s.list
		s.list = nil
		s.mu.Unlock()
		for _, c := range list {
			c.close()
		}
	}()
	// The timer is periodic at the last interval: while a container's
	// interval stays the same (an idle container), it is not re-armed.
	var deadline time.Time
	var period time.Duration
	s.kick() // the first pass arms the timer, also with no container yet
	for s.wait(deadline) {
		for {
			// A kick replaced the periodic timer: re-arm after this pass.
			kicked := s.kicked.Swap(false)
			now := time.Now()
			if probe.changed() {
				s.w.requestRescan()
			}
			next := now.Add(time.Hour)
			s.mu.Lock()
			list := s.list
			s.mu.Unlock()
			for _, c := range list {
				if c.due.Swap(false) || !now.Before(c.next.Add(-slack)) {
					if err := c.tick(c.takeNotice()); err != nil {
						s.remove(c, err)
						continue
					}
					c.next = time.Now().Add(c.interval())
				}
				if c.next.Before(next) {
					next = c.next
				}
			}
			if probe.ok() {
				// The probe is read at every base interval at least, so a
				// new process is seen within one interval.
				next = minTime(next, now.Add(s.w.interval))
			}
			for period > 0 && !deadline.After(now) {
				deadline = deadline.Add(period)
			}
			if period == 0 || kicked || s.kicked.Load() || next.Sub(deadline).Abs() > slack {
				period = max(time.Until(next), slack)
				deadline = time.Now().Add(period)
				s.arm(period)
			}
			if !s.kicked.Load() {
				break
			}
		}
	}
}

// slack is how early a sample may be taken: a periodic expiry wakes the
// loop a little before the interval counted from the last sample ends.
const slack = 2 * time.Millisecond

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// remove ends a container whose loop returned err.
func (s *sampler) remove(c *watched, err error) {
	s.mu.Lock()
	for i, x := range s.list {
		if x == c {
			s.list = append(s.list[:i:i], s.list[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	w := s.w
	w.mu.Lock()
	if w.containers[c.key] == c {
		delete(w.containers, c.key)
	}
	w.mu.Unlock()
	c.close()
	if w.o.OnGone != nil {
		w.o.OnGone(c.container())
	}
	if !errors.Is(err, errNoProcesses) && !errors.Is(err, cgroup.ErrGone) {
		w.log.Warn("stopped watching container", "container", c.c.Name, "why", err)
	} else {
		w.log.Info("stopped watching container", "container", c.c.Name, "why", err)
	}
	w.requestRescan()
}
