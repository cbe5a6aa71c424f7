// Package catalog is the read side of the capture layout: it lists the
// captures in a store, reads their metadata back and finds the one marked
// final for an OOM kill. The heapwatch CLI and the controller both read
// storage through it.
package catalog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/store"
)

// MaxMetadataBytes caps one metadata document; real ones are a few KiB.
const MaxMetadataBytes = 1 << 20

// metadataFetchers is how many metadata documents are fetched at once.
const metadataFetchers = 8

// Entry is one capture found in storage: its metadata object and profiles.
type Entry struct {
	Name    capture.Name
	ID      string
	Objects []store.Object // the metadata and every profile, in key order
	Meta    *capture.Metadata
	MetaErr error // why Meta is nil after LoadMetadata
}

// MetadataKey is the key of the capture's metadata object.
func (e *Entry) MetadataKey() string { return e.ID + capture.MetadataSuffix }

// Size is the stored size of the whole capture.
func (e *Entry) Size() int64 {
	var n int64
	for _, o := range e.Objects {
		n += o.Size
	}
	return n
}

// profileName returns the profile an object of the capture holds, or "" for
// the metadata.
func profileName(key string) string {
	_, p, _ := capture.ParseKey(key)
	return p
}

// Profiles lists the names of the capture's profiles.
func (e *Entry) Profiles() []string {
	var names []string
	for _, o := range e.Objects {
		if p := profileName(o.Key); p != "" {
			names = append(names, p)
		}
	}
	return names
}

// ProfileObject finds the object holding one profile.
func (e *Entry) ProfileObject(profile string) (store.Object, error) {
	for _, o := range e.Objects {
		if profileName(o.Key) == profile {
			return o, nil
		}
	}
	has := e.Profiles()
	if len(has) == 0 {
		return store.Object{}, fmt.Errorf("capture %s has no profiles stored", e.ID)
	}
	return store.Object{}, fmt.Errorf("capture %s has no %s profile (it has %s)", e.ID, profile, strings.Join(has, ", "))
}

// Scan lists the objects under prefix and groups them into captures, newest
// first. A capture is known by its metadata object; profiles without one (an
// upload in progress) are left out, and so are keys outside the layout.
func Scan(ctx context.Context, st store.Store, prefix string, keep func(capture.Name) bool) ([]*Entry, error) {
	byID := map[string]*Entry{}
	loose := map[string][]store.Object{} // profiles by the ID of their capture
	err := st.List(ctx, prefix, func(o store.Object) error {
		n, profile, err := capture.ParseKey(o.Key)
		if err != nil || !keep(n) {
			return nil // not a capture, or filtered out
		}
		id := n.ID()
		if profile != "" {
			loose[id] = append(loose[id], o)
			return nil
		}
		byID[id] = &Entry{Name: n, ID: id, Objects: []store.Object{o}}
		return nil
	})
	if err != nil {
		return nil, err
	}
	entries := make([]*Entry, 0, len(byID))
	for id, e := range byID {
		e.Objects = append(e.Objects, loose[id]...)
		slices.SortFunc(e.Objects, func(a, b store.Object) int { return strings.Compare(a.Key, b.Key) })
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b *Entry) int {
		return cmp.Or(b.Name.Time.Compare(a.Name.Time), strings.Compare(a.ID, b.ID))
	})
	return entries, nil
}

// LoadMetadata fetches and decodes the metadata of every entry, a few at a
// time. A document that cannot be read or decoded is recorded in MetaErr, so
// one bad capture never hides the others; only a credentials problem or a
// cancelled context stops the whole load.
func LoadMetadata(ctx context.Context, st store.Store, entries []*Entry) error {
	work := make(chan *Entry)
	var wg sync.WaitGroup
	for range min(metadataFetchers, len(entries)) {
		wg.Go(func() {
			for e := range work {
				e.Meta, e.MetaErr = ReadMetadata(ctx, st, e.MetadataKey())
			}
		})
	}
	for _, e := range entries {
		work <- e
	}
	close(work)
	wg.Wait()
	for _, e := range entries {
		if errors.Is(e.MetaErr, store.ErrCredentials) || errors.Is(e.MetaErr, context.Canceled) {
			return e.MetaErr
		}
	}
	return nil
}

// ReadMetadata fetches and decodes one metadata document.
func ReadMetadata(ctx context.Context, st store.Store, key string) (*capture.Metadata, error) {
	rc, err := st.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, MaxMetadataBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	if len(data) > MaxMetadataBytes {
		return nil, fmt.Errorf("larger than %d bytes", MaxMetadataBytes)
	}
	return capture.DecodeMetadata(data)
}

// Kill names one OOM kill of a container as the API server reports it.
type Kill struct {
	Namespace, Pod, PodUID, Container string
	// At is the container status's finishedAt (whole seconds).
	At time.Time
}

// DefaultTolerance is how far the sidecar's view of a kill may be from the
// kubelet's finishedAt: the kubelet reports whole seconds, some time after
// the kernel killed the process.
const DefaultTolerance = 30 * time.Second

// FindFinal returns the capture marked final for the kill: same pod UID
// (when both know it), same container, oomKilledAt within tolerance of the
// kill, the closest one winning. It returns nil without error when there is
// none, and the container's captures it looked at (newest first, metadata
// loaded) so that a caller can say why.
func FindFinal(ctx context.Context, st store.Store, k Kill, tolerance time.Duration) (*Entry, []*Entry, error) {
	entries, err := Scan(ctx, st, capture.Prefix(k.Namespace, k.Pod, k.Container), func(n capture.Name) bool {
		// A capture cannot be taken after the kill it is final for.
		return n.Namespace == k.Namespace && n.Pod == k.Pod && n.Container == k.Container &&
			!n.Time.After(k.At.Add(tolerance))
	})
	if err != nil {
		return nil, nil, err
	}
	if err := LoadMetadata(ctx, st, entries); err != nil {
		return nil, entries, err
	}
	var best *Entry
	var bestOff time.Duration
	for _, e := range entries {
		m := e.Meta
		if m == nil || !m.Final || m.OOMKilledAt == nil {
			continue
		}
		if k.PodUID != "" && m.PodUID != "" && m.PodUID != k.PodUID {
			continue
		}
		off := m.OOMKilledAt.Sub(k.At).Abs()
		if off <= tolerance && (best == nil || off < bestOff) {
			best, bestOff = e, off
		}
	}
	return best, entries, nil
}
