package main

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

	"github.com/heapwatch/heapwatch/sidecar/capture"
	"github.com/heapwatch/heapwatch/sidecar/store"
)

// maxMetadataBytes caps one metadata document; real ones are a few KiB.
const maxMetadataBytes = 1 << 20

// metadataFetchers is how many metadata documents are fetched at once.
const metadataFetchers = 8

// entry is one capture found in storage: its metadata object and profiles.
type entry struct {
	name    capture.Name
	id      string
	objects []store.Object // the metadata and every profile, in key order
	meta    *capture.Metadata
	metaErr error // why meta is nil after load
}

func (e *entry) metadataKey() string { return e.id + capture.MetadataSuffix }

// size is the stored size of the whole capture.
func (e *entry) size() int64 {
	var n int64
	for _, o := range e.objects {
		n += o.Size
	}
	return n
}

// profileName returns the profile an object of the capture holds, or "" for
// the metadata.
func (e *entry) profileName(key string) string {
	rest, ok := strings.CutPrefix(key, e.id+"-")
	if !ok {
		return ""
	}
	return strings.TrimSuffix(strings.TrimSuffix(rest, ".pb.gz"), ".txt")
}

// profiles lists the names of the capture's profiles.
func (e *entry) profiles() []string {
	var names []string
	for _, o := range e.objects {
		if p := e.profileName(o.Key); p != "" {
			names = append(names, p)
		}
	}
	return names
}

// profileObject finds the object holding one profile.
func (e *entry) profileObject(profile string) (store.Object, error) {
	for _, o := range e.objects {
		if e.profileName(o.Key) == profile {
			return o, nil
		}
	}
	has := e.profiles()
	if len(has) == 0 {
		return store.Object{}, fmt.Errorf("capture %s has no profiles stored", e.id)
	}
	return store.Object{}, fmt.Errorf("capture %s has no %s profile (it has %s)", e.id, profile, strings.Join(has, ", "))
}

// filter selects captures; empty fields match everything.
type filter struct {
	namespace, pod, container string
	since                     time.Time
}

func (f filter) match(n capture.Name) bool {
	return (f.namespace == "" || n.Namespace == f.namespace) &&
		(f.pod == "" || n.Pod == f.pod) &&
		(f.container == "" || n.Container == f.container) &&
		!n.Time.Before(f.since)
}

// scan lists the objects under prefix and groups them into captures, newest
// first. A capture is known by its metadata object; profiles without one (an
// upload in progress) are left out.
func scan(ctx context.Context, st store.Store, prefix string, keep func(capture.Name) bool) ([]*entry, error) {
	byID := map[string]*entry{}
	loose := map[string][]store.Object{} // profiles by the ID their key implies
	err := st.List(ctx, prefix, func(o store.Object) error {
		if strings.HasSuffix(o.Key, capture.MetadataSuffix) {
			n, err := capture.ParseID(o.Key)
			if err != nil || !keep(n) {
				return nil // not a capture, or filtered out
			}
			id := strings.TrimSuffix(o.Key, capture.MetadataSuffix)
			byID[id] = &entry{name: n, id: id, objects: []store.Object{o}}
			return nil
		}
		// A profile key is <ID>-<profile><ext>; profile names have no "-".
		base := strings.TrimSuffix(strings.TrimSuffix(o.Key, ".pb.gz"), ".txt")
		if i := strings.LastIndexByte(base, '-'); i > 0 && !strings.Contains(base[i:], "/") {
			loose[base[:i]] = append(loose[base[:i]], o)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	entries := make([]*entry, 0, len(byID))
	for id, e := range byID {
		e.objects = append(e.objects, loose[id]...)
		slices.SortFunc(e.objects, func(a, b store.Object) int { return strings.Compare(a.Key, b.Key) })
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b *entry) int {
		return cmp.Or(b.name.Time.Compare(a.name.Time), strings.Compare(a.id, b.id))
	})
	return entries, nil
}

// loadMetadata fetches and decodes the metadata of every entry, a few at a
// time. A document that cannot be read or decoded is recorded in metaErr, so
// one bad capture never hides the others; only a credentials problem or a
// cancelled context stops the whole load.
func loadMetadata(ctx context.Context, st store.Store, entries []*entry) error {
	work := make(chan *entry)
	var wg sync.WaitGroup
	for range min(metadataFetchers, len(entries)) {
		wg.Go(func() {
			for e := range work {
				e.meta, e.metaErr = readMetadata(ctx, st, e.metadataKey())
			}
		})
	}
	for _, e := range entries {
		work <- e
	}
	close(work)
	wg.Wait()
	for _, e := range entries {
		if errors.Is(e.metaErr, store.ErrCredentials) || errors.Is(e.metaErr, context.Canceled) {
			return e.metaErr
		}
	}
	return nil
}

func readMetadata(ctx context.Context, st store.Store, key string) (*capture.Metadata, error) {
	rc, err := st.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxMetadataBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	if len(data) > maxMetadataBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxMetadataBytes)
	}
	return capture.DecodeMetadata(data)
}

// errNoCapture is returned when a capture argument matches nothing.
var errNoCapture = errors.New("no capture matches")

// resolve finds the one capture whose ID is arg or starts with it.
func resolve(ctx context.Context, st store.Store, arg string) (*entry, error) {
	arg = strings.TrimSuffix(arg, capture.MetadataSuffix)
	if err := checkCaptureArg(arg); err != nil {
		return nil, err
	}
	entries, err := scan(ctx, st, arg, func(capture.Name) bool { return true })
	if err != nil {
		return nil, err
	}
	var matches []*entry
	for _, e := range entries {
		if e.id == arg {
			return e, nil
		}
		if strings.HasPrefix(e.id, arg) {
			matches = append(matches, e)
		}
	}
	switch len(matches) {
	case 0:
		return nil, fmt.Errorf("%w %q in %s; 'heapwatch ls' lists the captures", errNoCapture, arg, st)
	case 1:
		return matches[0], nil
	}
	const shown = 5
	var b strings.Builder
	for i, e := range matches[:min(shown, len(matches))] {
		if i > 0 {
			b.WriteString("\n  ")
		}
		b.WriteString(e.id)
	}
	if len(matches) > shown {
		fmt.Fprintf(&b, "\n  ... and %d more", len(matches)-shown)
	}
	return nil, fmt.Errorf("%q matches %d captures; give more of the ID:\n  %s", arg, len(matches), b.String())
}

// checkCaptureArg rejects an argument that cannot be a capture ID prefix
// with a message about captures rather than storage keys.
func checkCaptureArg(arg string) error {
	if arg == "" {
		return fmt.Errorf("%w: empty capture ID", errUsage)
	}
	if strings.HasPrefix(arg, "/") || strings.Contains(arg, "//") || slices.Contains(strings.Split(arg, "/"), "..") {
		return fmt.Errorf("%w: %q is not a capture ID (namespace/pod/container/<time>-<trigger>, as printed by 'heapwatch ls')", errUsage, arg)
	}
	return nil
}
