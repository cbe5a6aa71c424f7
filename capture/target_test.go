package capture

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestTargetKinds: a capture's keys lead with its target's segments,
// ParseKey inverts them for every kind, and metadata names its target
// back; a pod container's keys are today's, a host daemon's lead with
// _node/<node>/<daemon>.
func TestTargetKinds(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)
	for _, tt := range []struct {
		target Target
		id     string
	}{
		{PodContainer{Namespace: "shop", Pod: "web-1", UID: "u", Node: "n1", Container: "app"}, "shop/web-1/app/20260102T030405.006Z-threshold-75"},
		{Daemon{Node: "n1", Name: "containerd"}, "_node/n1/containerd/20260102T030405.006Z-threshold-75"},
	} {
		m := &Metadata{SchemaVersion: SchemaVersion, CapturedAt: at, Trigger: "threshold-75"}
		tt.target.Describe(m)
		n := m.Name()
		if n.ID() != tt.id || NameOf(tt.target, at, "threshold-75") != n {
			t.Errorf("%+v: ID %q, want %q", tt.target, n.ID(), tt.id)
		}
		for _, key := range []string{n.MetadataKey(), n.ProfileKey("heap"), n.ProfileKey("goroutine")} {
			got, _, err := ParseKey(key)
			if err != nil || got != n {
				t.Errorf("ParseKey(%q) = %+v, %v; want %+v", key, got, err, n)
			}
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeMetadata(b)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := back.Target(); err != nil || got != tt.target {
			t.Errorf("decoded target %+v, %v; want %+v", got, err, tt.target)
		}
	}
	unknown := []byte(`{"schemaVersion":1,"targetKind":"nope","namespace":"a","pod":"b","container":"c","capturedAt":"2026-01-02T03:04:05Z"}`)
	if _, err := DecodeMetadata(unknown); err == nil {
		t.Error("metadata of an unknown target kind decoded")
	}
}

// TestDaemonMetadata: a daemon's capture names it in the daemon and node
// fields and in no pod field, and its keys never mix with a namespace's.
func TestDaemonMetadata(t *testing.T) {
	m := &Metadata{SchemaVersion: SchemaVersion, Namespace: "stale", Pod: "stale", Container: "stale",
		CapturedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Trigger: "baseline"}
	Daemon{Node: "n1", Name: "kubelet"}.Describe(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"targetKind": "daemon", "node": "n1", "daemon": "kubelet", "namespace": "", "pod": "", "container": ""} {
		if got[k] != want {
			t.Errorf("metadata %s = %v, want %v", k, got[k], want)
		}
	}
	if p := Prefix(NodeSegment, "n1", "kubelet"); !strings.HasPrefix(m.Name().MetadataKey(), p) || p != "_node/n1/kubelet/" {
		t.Errorf("key %q, prefix %q", m.Name().MetadataKey(), p)
	}
}
