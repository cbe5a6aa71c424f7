package capture

import (
	"fmt"
	"sync"
	"time"
)

// Target is the identity of what captures are taken of. Its kind decides
// the three segments that lead every key of its captures (broadest first,
// so keys sort by them and then by time) and how its metadata names it.
// A container of a pod (PodContainer) is one kind; another kind is a new
// type with RegisterTarget, and today's keys do not change.
type Target interface {
	// Segments are the leading key segments, broadest first.
	Segments() [3]string
	// Describe records the identity in a capture's metadata.
	Describe(m *Metadata)
}

// decoders read a Target back from metadata, by Metadata.TargetKind.
var (
	decodersMu sync.RWMutex
	decoders   = map[string]func(*Metadata) Target{}
)

// RegisterTarget tells how metadata of kind (its TargetKind) names its
// Target. The empty kind is PodContainer's and cannot be registered.
func RegisterTarget(kind string, decode func(*Metadata) Target) {
	if kind == "" {
		panic("capture: RegisterTarget with the empty kind")
	}
	decodersMu.Lock()
	defer decodersMu.Unlock()
	decoders[kind] = decode
}

// Target returns the identity the metadata names.
func (m *Metadata) Target() (Target, error) {
	if m.TargetKind == "" {
		return PodContainer{Namespace: m.Namespace, Pod: m.Pod, UID: m.PodUID, Node: m.Node, Container: m.Container}, nil
	}
	decodersMu.RLock()
	decode, ok := decoders[m.TargetKind]
	decodersMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("unknown target kind %q", m.TargetKind)
	}
	return decode(m), nil
}

// NameOf returns the Name of a capture of t taken at at by trigger.
func NameOf(t Target, at time.Time, trigger string) Name {
	s := t.Segments()
	return Name{Namespace: s[0], Pod: s[1], Container: s[2], Time: at, Trigger: trigger}
}
