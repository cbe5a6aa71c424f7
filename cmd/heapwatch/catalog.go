package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/capture/catalog"
	"github.com/heapwatch/heapwatch/store"
)

// entry is one capture as the catalog lists it.
type entry = catalog.Entry

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

// errNoCapture is returned when a capture argument matches nothing.
var errNoCapture = errors.New("no capture matches")

// resolve finds the one capture whose ID is arg or starts with it.
func resolve(ctx context.Context, st store.Store, arg string) (*entry, error) {
	arg = strings.TrimSuffix(arg, capture.MetadataSuffix)
	if err := checkCaptureArg(arg); err != nil {
		return nil, err
	}
	entries, err := catalog.Scan(ctx, st, arg, func(capture.Name) bool { return true })
	if err != nil {
		return nil, err
	}
	var matches []*entry
	for _, e := range entries {
		if e.ID == arg {
			return e, nil
		}
		if strings.HasPrefix(e.ID, arg) {
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
		b.WriteString(e.ID)
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
