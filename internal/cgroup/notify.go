package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Mode says how a Notifier learns about changes.
type Mode string

const (
	// ModeEventfd: v1 memory thresholds and OOM events via
	// cgroup.event_control.
	ModeEventfd Mode = "eventfd"
	// ModeInotify: v2 memory.events modifications (high, max, oom, oom_kill).
	ModeInotify Mode = "inotify"
	// ModePoll: no kernel notification; the caller's adaptive sampling is
	// all there is.
	ModePoll Mode = "poll"
)

// Notice kinds.
const (
	NoticeThreshold = "threshold" // v1: usage crossed a registered level (either direction)
	NoticeOOM       = "oom"       // v1: the group hit OOM
	NoticeEvents    = "events"    // v2: memory.events changed
	// NoticeFailed: the notification path broke (a read error, or the v2
	// watch was removed); the Notifier is now in ModePoll and Reason says
	// why.
	NoticeFailed = "failed"
)

// Notice is one kernel notification.
type Notice struct {
	Kind string
	// At is when the notification was read, the earliest moment the
	// crossing is known in user space.
	At time.Time
}

// Notifier delivers kernel notifications for a Memory. When registration
// needs a write the view does not allow (cgroupfs is read-only in
// containers: EROFS, EACCES, EPERM), it falls back to ModePoll and keeps
// the reason; it never fails the caller for that.
type Notifier struct {
	m *Memory
	c chan Notice

	mu         sync.Mutex
	mode       Mode
	reason     error
	thresholds *os.File // eventfd of the current threshold set (v1)
	oom        *os.File // eventfd (v1) or inotify descriptor (v2)
	closed     bool
	wg         sync.WaitGroup
}

// Notify starts kernel notifications: the OOM event (v1) or memory.events
// changes (v2). Thresholds are added with SetThresholds. It never fails:
// when registration is refused or breaks, the Notifier is in ModePoll and
// Reason says why, and the caller samples at its normal interval.
func (m *Memory) Notify() *Notifier {
	n := &Notifier{m: m, c: make(chan Notice, 16)}
	var err error
	if m.version == V1 {
		n.mode = ModeEventfd
		err = n.registerV1OOM()
	} else {
		n.mode = ModeInotify
		err = n.watchV2Events()
	}
	if err != nil {
		n.fallBack(err)
	}
	return n
}

// C delivers notices. Notices are coalesced when the reader is behind: the
// reader re-samples on any notice, so a dropped duplicate loses nothing.
func (n *Notifier) C() <-chan Notice { return n.c }

// Mode reports the mechanism in use.
func (n *Notifier) Mode() Mode {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mode
}

// Reason is why the notifier fell back to polling, nil otherwise.
func (n *Notifier) Reason() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.reason
}

func (n *Notifier) fallBack(err error) {
	n.mode = ModePoll
	n.reason = err
}

// isReadOnly reports a registration refused because the view is read-only
// or not ours to write.
func isReadOnly(err error) bool {
	return errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM)
}

// SetThresholds replaces the set of usage levels (bytes) that trigger a
// NoticeThreshold. The kernel signals a crossing in either direction. v1
// only; a no-op for v2 (which has no arbitrary thresholds) and in poll mode.
// The new set is registered before the old one is dropped, so no crossing
// is missed while the ladder moves.
func (n *Notifier) SetThresholds(levels []uint64) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed || n.mode != ModeEventfd {
		return nil
	}
	var efd *os.File
	if len(levels) > 0 {
		var err error
		efd, err = n.register(n.m.usageFD, levels)
		if err != nil {
			if isReadOnly(err) {
				n.fallBack(err)
				return nil
			}
			return err
		}
	}
	if n.thresholds != nil {
		// Closing the eventfd makes the kernel drop its registrations.
		n.thresholds.Close()
	}
	n.thresholds = efd
	if efd != nil {
		n.pump(efd, NoticeThreshold)
	}
	return nil
}

func (n *Notifier) registerV1OOM() error {
	efd, err := n.register(n.m.eventsFD, nil)
	if err != nil {
		return err
	}
	n.oom = efd
	n.pump(efd, NoticeOOM)
	return nil
}

// register creates an eventfd and writes "<eventfd> <fd> [<level>]" lines
// to cgroup.event_control: one per level, or one without a level (OOM).
func (n *Notifier) register(target func() (uintptr, error), levels []uint64) (*os.File, error) {
	tfd, err := target()
	if err != nil {
		return nil, err
	}
	ctl, err := n.m.openControl()
	if err != nil {
		return nil, err
	}
	defer ctl.Close()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: eventfd: %w", n.m.dir, err)
	}
	// A non-blocking descriptor is served by the runtime poller: reads park
	// the goroutine, Close wakes it.
	efd := os.NewFile(uintptr(fd), "eventfd")
	lines := []string{strconv.Itoa(fd) + " " + strconv.FormatUint(uint64(tfd), 10)}
	if len(levels) > 0 {
		lines = lines[:0]
		for _, l := range levels {
			lines = append(lines, fmt.Sprintf("%d %d %d", fd, tfd, l))
		}
	}
	for _, line := range lines {
		if _, err := ctl.WriteString(line); err != nil {
			efd.Close()
			return nil, fmt.Errorf("cgroup %s: register notification %q: %w", n.m.dir, line, err)
		}
	}
	return efd, nil
}

// watchV2Events watches memory.events with inotify: the kernel signals a
// modification whenever one of its counters moves.
func (n *Notifier) watchV2Events() error {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("cgroup %s: inotify: %w", n.m.dir, err)
	}
	f := os.NewFile(uintptr(fd), "inotify")
	path := filepath.Join(n.m.dir, "memory.events")
	if _, err := unix.InotifyAddWatch(fd, path, unix.IN_MODIFY); err != nil {
		f.Close()
		return fmt.Errorf("cgroup %s: watch memory.events: %w", n.m.dir, err)
	}
	n.oom = f
	n.pump(f, NoticeEvents)
	return nil
}

// pump turns reads of a notification descriptor into notices until it is
// closed. A read that fails otherwise, or an inotify watch the kernel
// removed (IN_IGNORED: the file or its cgroup is gone), would leave the
// caller waiting for notices that never come: the Notifier then falls back
// to ModePoll and sends NoticeFailed.
func (n *Notifier) pump(f *os.File, kind string) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		buf := make([]byte, 4096) // inotify events are variable-sized
		for {
			nr, err := f.Read(buf)
			if err == nil && kind == NoticeEvents && inotifyIgnored(buf[:nr]) {
				err = errors.New("inotify watch on memory.events removed by the kernel (IN_IGNORED)")
			}
			if err != nil {
				n.mu.Lock()
				closed := n.closed
				if !closed {
					n.fallBack(fmt.Errorf("cgroup %s: %s notifications stopped: %w", n.m.dir, kind, err))
				}
				n.mu.Unlock()
				if !closed {
					select {
					case n.c <- Notice{Kind: NoticeFailed, At: time.Now()}:
					default: // the reader samples soon and sees Mode anyway
					}
				}
				return
			}
			select {
			case n.c <- Notice{Kind: kind, At: time.Now()}:
			default:
			}
		}
	}()
}

// inotifyIgnored reports an IN_IGNORED event among the inotify events in b.
func inotifyIgnored(b []byte) bool {
	for len(b) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
		if ev.Mask&unix.IN_IGNORED != 0 {
			return true
		}
		b = b[min(len(b), unix.SizeofInotifyEvent+int(ev.Len)):]
	}
	return false
}

// Close stops notifications and waits for the readers to exit.
func (n *Notifier) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	var errs []error
	for _, f := range []*os.File{n.thresholds, n.oom} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	n.mu.Unlock()
	n.wg.Wait()
	return errors.Join(errs...)
}

// errV1Writes is why a read-only Notifier of a v1 group polls.
var errV1Writes = errors.New("v1 notifications are registered by writing cgroup.event_control; this cgroup is read only")

// NotifyReadOnly is Notify for a cgroup that must never be written to (a
// host daemon's): v1 notifications are registered by writing
// cgroup.event_control, so a v1 group is polled; v2's memory.events watch
// is a read and stays.
func (m *Memory) NotifyReadOnly() *Notifier {
	if m.version == V2 {
		return m.Notify()
	}
	return Polling(errV1Writes)
}

// Polling returns a Notifier in ModePoll that never sends a notice, for
// memory read without a cgroup to be notified by; reason says why.
func Polling(reason error) *Notifier {
	return &Notifier{c: make(chan Notice), mode: ModePoll, reason: reason}
}
