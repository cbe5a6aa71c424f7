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

// filter selects captures; empty fields match everything. node and daemon
// select host daemons' captures (capture.Daemon), whose keys lead with
// _node/<node>/<daemon>; they exclude namespace, pod and container.
type filter struct {
	namespace, pod, container string
	node, daemon              string
	since                     time.Time
}

// daemons reports a filter on host daemons' captures.
func (f filter) daemons() bool { return f.node != "" || f.daemon != "" }

// check rejects a filter mixing pods' and daemons' fields.
func (f filter) check() error {
	if f.daemons() && (f.namespace != "" || f.pod != "" || f.container != "") {
		return fmt.Errorf("%w: --node and --daemon select host daemons' captures; --namespace, --pod and --container select pods'", errUsage)
	}
	return nil
}

// prefix is the part of the storage the filter can match.
func (f filter) prefix() string {
	if f.daemons() {
		daemon := f.daemon
		if f.node == "" {
			daemon = "" // every node's daemons, filtered by match
		}
		return capture.Prefix(capture.NodeSegment, f.node, daemon)
	}
	return capture.Prefix(f.namespace, f.pod, f.container)
}

func (f filter) match(n capture.Name) bool {
	if f.daemons() {
		node, daemon, ok := daemonOf(n)
		return ok && (f.node == "" || node == f.node) && (f.daemon == "" || daemon == f.daemon) && !n.Time.Before(f.since)
	}
	if _, _, ok := daemonOf(n); ok && (f.namespace != "" || f.pod != "" || f.container != "") {
		return false // a pod's filter: --pod node-a is not the node
	}
	return (f.namespace == "" || n.Namespace == f.namespace) &&
		(f.pod == "" || n.Pod == f.pod) &&
		(f.container == "" || n.Container == f.container) &&
		!n.Time.Before(f.since)
}

// daemonOf returns the node and daemon a host daemon's capture name
// carries in its leading segments.
func daemonOf(n capture.Name) (node, daemon string, ok bool) {
	if n.Namespace != capture.NodeSegment {
		return "", "", false
	}
	return n.Pod, n.Container, true
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
		return fmt.Errorf("%w: %q is not a capture ID (namespace/pod/container/<time>-<trigger> or _node/<node>/<daemon>/<time>-<trigger>, as printed by 'heapwatch ls')", errUsage, arg)
	}
	return nil
}
