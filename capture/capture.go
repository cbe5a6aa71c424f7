// Package capture defines what one capture is once stored: its object keys
// and the metadata a person needs to find and read it. The sidecar writes
// captures in this layout and the heapwatch CLI reads them back.
//
// Keys sort by pod and time:
//
//	<namespace>/<pod>/<container>/<UTC time>-<trigger>.json
//	<namespace>/<pod>/<container>/<UTC time>-<trigger>-heap.pb.gz
//	<namespace>/<pod>/<container>/<UTC time>-<trigger>-goroutine.txt
package capture

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// TimeLayout is fixed-width so that keys sort by time as strings.
const TimeLayout = "20060102T150405.000Z"

// MetadataSuffix ends the key of a capture's metadata object.
const MetadataSuffix = ".json"

// SchemaVersion is written into every Metadata; readers reject newer majors.
const SchemaVersion = 1

// ErrBadKey reports a key that is not in the capture layout.
var ErrBadKey = errors.New("not a heapwatch capture key")

// Name identifies one capture and derives its object keys.
type Name struct {
	Namespace, Pod, Container string
	Time                      time.Time
	Trigger                   string
}

// ID is the capture's key without extension; the CLI prints and accepts it.
func (n Name) ID() string {
	return fmt.Sprintf("%s/%s/%s/%s-%s", segment(n.Namespace), segment(n.Pod), segment(n.Container),
		n.Time.UTC().Format(TimeLayout), segment(n.Trigger))
}

// MetadataKey is the key of the capture's metadata JSON.
func (n Name) MetadataKey() string { return n.ID() + MetadataSuffix }

// ProfileKey is the key of one profile of the capture.
func (n Name) ProfileKey(profile string) string {
	return n.ID() + "-" + segment(profile) + ProfileExt(profile)
}

// ProfileExt is the file extension of a profile as fetched: goroutine is
// fetched with debug=1 (text, readable without tools), the others as gzipped
// protobuf.
func ProfileExt(profile string) string {
	if profile == "goroutine" {
		return ".txt"
	}
	return ".pb.gz"
}

// Prefix is the key prefix of every capture matching the given, possibly
// empty, namespace, pod and container: listing only it keeps lookups fast
// in a bucket holding thousands of captures. Later parts are ignored when an
// earlier one is empty.
func Prefix(namespace, pod, container string) string {
	var b strings.Builder
	for _, part := range []string{namespace, pod, container} {
		if part == "" {
			break
		}
		b.WriteString(segment(part) + "/")
	}
	return b.String()
}

// The trigger accepts every character segment keeps, so any ID this package
// writes parses back.
var idPattern = regexp.MustCompile(`^([^/]+)/([^/]+)/([^/]+)/(\d{8}T\d{6}\.\d{3}Z)-([A-Za-z0-9_.][A-Za-z0-9_.-]*)$`)

// ParseID parses a capture ID or metadata key back into its Name.
func ParseID(s string) (Name, error) {
	m := idPattern.FindStringSubmatch(strings.TrimSuffix(s, MetadataSuffix))
	if m == nil {
		return Name{}, fmt.Errorf("%w: %q", ErrBadKey, s)
	}
	t, err := time.Parse(TimeLayout, m[4])
	if err != nil {
		return Name{}, fmt.Errorf("%w: %q: %w", ErrBadKey, s, err)
	}
	return Name{Namespace: m[1], Pod: m[2], Container: m[3], Time: t, Trigger: m[5]}, nil
}

// ParseKey is the inverse of MetadataKey and ProfileKey: it returns the Name
// a stored key belongs to and the profile it holds ("" for the metadata).
// Profile names never contain "-", so the last "-" of a profile key ends
// the ID even when the trigger has one ("threshold-75").
func ParseKey(key string) (Name, string, error) {
	if id, ok := strings.CutSuffix(key, MetadataSuffix); ok {
		n, err := ParseID(id)
		return n, "", err
	}
	var base string
	var ext string
	for _, e := range []string{".pb.gz", ".txt"} {
		if b, ok := strings.CutSuffix(key, e); ok {
			base, ext = b, e
			break
		}
	}
	i := strings.LastIndexByte(base, '-')
	if ext == "" || i < 0 || strings.Contains(base[i:], "/") {
		return Name{}, "", fmt.Errorf("%w: %q", ErrBadKey, key)
	}
	profile := base[i+1:]
	if profile == "" || ProfileExt(profile) != ext || segment(profile) != profile {
		return Name{}, "", fmt.Errorf("%w: %q", ErrBadKey, key)
	}
	n, err := ParseID(base[:i])
	if err != nil {
		return Name{}, "", err
	}
	return n, profile, nil
}

// segment makes s safe as one key segment: Kubernetes names already are, but
// a hostname fallback or a trigger kind must never add a "/" or "..".
func segment(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, s)
	if s == "" || strings.Trim(s, ".") == "" {
		return "_"
	}
	return s
}

// Memory is the container's memory as read from its cgroup at capture time.
type Memory struct {
	UsageBytes      uint64 `json:"usageBytes"`
	WorkingSetBytes uint64 `json:"workingSetBytes"`
	// LimitBytes is 0 when the container has no limit.
	LimitBytes uint64 `json:"limitBytes"`
}

// Pressure is the container's memory PSI at capture time (cgroup v2
// memory.pressure): the percentage of the last 10 s in which some or all of
// its tasks were stalled on memory, and the total stall time.
type Pressure struct {
	SomeAvg10       float64 `json:"someAvg10"`
	FullAvg10       float64 `json:"fullAvg10"`
	SomeTotalMicros uint64  `json:"someTotalMicros"`
	FullTotalMicros uint64  `json:"fullTotalMicros"`
}

// Profile is one fetched profile of a capture.
type Profile struct {
	Name  string `json:"name"`
	Key   string `json:"key"`
	Bytes int64  `json:"bytes"`
	// Error says why the profile is missing or truncated; empty when complete.
	Error string `json:"error,omitempty"`
}

// Metadata is stored as <ID>.json beside the profiles.
type Metadata struct {
	SchemaVersion int    `json:"schemaVersion"`
	ID            string `json:"id"`
	// TargetKind names the kind of Target the capture is of (see
	// RegisterTarget); empty for a pod's container, whose fields follow.
	TargetKind string `json:"targetKind,omitempty"`
	Namespace  string `json:"namespace"`
	Pod        string `json:"pod"`
	PodUID     string `json:"podUID,omitempty"`
	Node       string `json:"node,omitempty"`
	Container  string `json:"container"`
	Daemon     string `json:"daemon,omitempty"` // a host daemon's name (TargetKind "daemon"), with Node
	PID        int    `json:"pid"`
	Port       int    `json:"port"`
	// Trigger is the kind that fired (threshold-75, predictive, growth, ...);
	// Reason says why in words.
	Trigger string `json:"trigger"`
	Reason  string `json:"reason"`
	// DetectedAt is when the trigger condition was seen; CapturedAt when the
	// fetch started; CompletedAt when every profile was written.
	DetectedAt  time.Time `json:"detectedAt"`
	CapturedAt  time.Time `json:"capturedAt"`
	CompletedAt time.Time `json:"completedAt"`
	Memory      Memory    `json:"memory"`
	// MemoryStat is the container's memory.stat at capture time.
	MemoryStat map[string]uint64 `json:"memoryStat,omitempty"`
	// Pressure is set on cgroup v2 (v1 has no per-group PSI).
	Pressure *Pressure `json:"memoryPressure,omitempty"`
	Profiles []Profile `json:"profiles"`
	// Final marks the last capture taken before an OOM kill of the
	// container, seen at OOMKilledAt.
	Final       bool       `json:"finalBeforeOOMKill"`
	OOMKilledAt *time.Time `json:"oomKilledAt,omitempty"`
	// Timeline is the container's memory over the last minute before the
	// capture (before the kill, for a final capture), oldest first.
	Timeline []Point `json:"timeline,omitempty"`
}

// Point is one memory sample of a Timeline.
type Point struct {
	Time            time.Time `json:"t"`
	UsageBytes      uint64    `json:"usage"`
	WorkingSetBytes uint64    `json:"workingSet"`
	LimitBytes      uint64    `json:"limit"`
	// Trigger is the kind of the trigger that fired on this sample.
	Trigger string `json:"trigger,omitempty"`
}

// Name returns the Name the metadata was stored under: its target's
// segments, CapturedAt and Trigger. A target of an unknown kind yields its
// stored pod fields, which DecodeMetadata has rejected already.
func (m *Metadata) Name() Name {
	t, err := m.Target()
	if err != nil {
		t = PodContainer{Namespace: m.Namespace, Pod: m.Pod, Container: m.Container}
	}
	return NameOf(t, m.CapturedAt, m.Trigger)
}

// TotalBytes sums the sizes of the stored profiles.
func (m *Metadata) TotalBytes() int64 {
	var n int64
	for _, p := range m.Profiles {
		n += p.Bytes
	}
	return n
}

// DecodeMetadata parses and checks a metadata document.
func DecodeMetadata(data []byte) (*Metadata, error) {
	var m Metadata
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("decode capture metadata: %w", err)
	}
	if m.SchemaVersion < 1 || m.SchemaVersion > SchemaVersion {
		return nil, fmt.Errorf("decode capture metadata: unsupported schemaVersion %d", m.SchemaVersion)
	}
	t, err := m.Target()
	if err != nil {
		return nil, fmt.Errorf("decode capture metadata: %w", err)
	}
	if s := t.Segments(); m.CapturedAt.IsZero() || s[0] == "" || s[1] == "" || s[2] == "" {
		return nil, errors.New("decode capture metadata: missing namespace, pod, container or capturedAt")
	}
	return &m, nil
}
