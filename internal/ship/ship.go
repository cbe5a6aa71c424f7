// Package ship moves captures from the local spool to their storage, and is
// the one owner of the storage's lifecycle there.
//
// A Shipper opens the storage (retrying: an S3 client needs its region and
// credential chain), drains the spool into it whenever an entry is ready,
// and retries every failure — opening, storing, a panic in an upload pass —
// with one jittered exponential backoff. Stop ends that and uploads what is
// ready once more within the caller's deadline (the shutdown grace period),
// through the store already open; what is left stays in the spool for the
// next start. The sidecar and the node agent ship this way.
package ship

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"time"

	"github.com/heapwatch/heapwatch/internal/spool"
	"github.com/heapwatch/heapwatch/store"
)

// Backoff bounds the retries.
type Backoff struct {
	Initial, Max time.Duration
}

// DefaultBackoff starts at half a second and caps at a minute.
var DefaultBackoff = Backoff{Initial: 500 * time.Millisecond, Max: time.Minute}

// next doubles d within the bounds; the caller adds jitter.
func (b Backoff) next(d time.Duration) time.Duration {
	if d <= 0 {
		return b.Initial
	}
	return min(2*d, b.Max)
}

// jitter spreads the retries of many sidecars over [d/2, d].
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// Options configure Start.
type Options struct {
	// Storage is the storage URL (file:///dir or s3://bucket/prefix?...).
	Storage string
	Log     *slog.Logger
	// Backoff bounds the retries; the zero value is DefaultBackoff.
	Backoff Backoff
}

// Shipper ships one spool's entries to one storage.
type Shipper struct {
	sp      *spool.Spool
	rawURL  string
	log     *slog.Logger
	backoff Backoff
	open    func(context.Context, string) (store.Store, error)

	cancel context.CancelFunc
	done   chan struct{}
	st     store.Store // the open storage; nil until opened, and after a panic
}

// Start ships sp's entries to o.Storage in the background until Stop.
func Start(sp *spool.Spool, o Options) *Shipper {
	s := newShipper(sp, o)
	s.start()
	return s
}

func newShipper(sp *spool.Spool, o Options) *Shipper {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Backoff.Initial <= 0 || o.Backoff.Max < o.Backoff.Initial {
		o.Backoff = DefaultBackoff
	}
	return &Shipper{sp: sp, rawURL: o.Storage, log: o.Log, backoff: o.Backoff, open: store.Open, done: make(chan struct{})}
}

func (s *Shipper) start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		defer close(s.done)
		s.run(ctx)
	}()
}

// Stop ends the background shipping, waits for an upload under way to give
// up, then uploads what is ready once more before ctx is done. It returns
// nil when that pass stored everything ready, else why not; what is not
// stored stays in the spool.
func (s *Shipper) Stop(ctx context.Context) error {
	s.cancel()
	<-s.done
	return s.pass(ctx)
}

// Shutdown ends a daemon's run on SIGTERM within grace: endCaptures gets
// half of it to let running captures end, then what is spooled is stored
// once more until grace is up; what is left stays in the spool for the
// next start.
func (s *Shipper) Shutdown(grace time.Duration, endCaptures func(wait time.Duration)) {
	s.log.Info("shutting down", "grace", grace)
	deadline := time.Now().Add(grace)
	endCaptures(grace / 2)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		s.log.Warn("captures left in the spool for the next start", "err", err)
	}
	ids, _ := s.sp.Pending()
	s.log.Info("stopped", "spooled", len(ids), "spoolBytes", s.sp.Bytes())
}

// run drains the spool until ctx is done.
func (s *Shipper) run(ctx context.Context) {
	var delay time.Duration
	for {
		err := s.pass(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			delay = s.backoff.next(delay)
			wait := jitter(delay)
			s.log.Error("storing captures failed; they stay in the spool and are retried",
				"storage", store.RedactURL(s.rawURL), "retryIn", wait.Round(time.Millisecond), "err", err,
				"credentials", errors.Is(err, store.ErrCredentials))
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			continue
		}
		delay = 0
		select {
		case <-ctx.Done():
			return
		case <-s.sp.Ready():
		}
	}
}

// pass opens the storage if it is not open, then uploads every ready entry.
// A panic is an error of the pass, and the storage is opened anew after it.
func (s *Shipper) pass(ctx context.Context) (err error) {
	defer func() {
		if p := recover(); p != nil {
			s.st = nil
			s.log.Error("an upload pass panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = fmt.Errorf("upload pass panicked: %v", p)
		}
	}()
	if s.st == nil {
		st, err := s.open(ctx, s.rawURL)
		if err != nil {
			return fmt.Errorf("cannot open the storage: %w", err)
		}
		s.st = st
	}
	return s.sp.Flush(ctx, s.st)
}
