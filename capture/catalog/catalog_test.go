package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/store"
)

func put(t *testing.T, st store.Store, uid string, at time.Time, killed *time.Time) string {
	t.Helper()
	m := capture.Metadata{SchemaVersion: capture.SchemaVersion, Namespace: "shop", Pod: "api", PodUID: uid, Container: "app",
		Trigger: "threshold-90", CapturedAt: at, Final: killed != nil, OOMKilledAt: killed}
	n := m.Name()
	m.ID = n.ID()
	doc, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for key, body := range map[string][]byte{n.MetadataKey(): doc, n.ProfileKey("heap"): []byte("heap")} {
		if err := st.Put(context.Background(), key, bytes.NewReader(body), int64(len(body))); err != nil {
			t.Fatal(err)
		}
	}
	return n.ID()
}

func TestFindFinal(t *testing.T) {
	st, err := store.Open(context.Background(), "file://"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 2, 20, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { v := t0.Add(d); return &v }
	put(t, st, "uid-1", t0.Add(-10*time.Second), nil)                                 // not final
	first := put(t, st, "uid-1", t0.Add(-3*time.Second), at(-2500*time.Millisecond))  // first kill
	second := put(t, st, "uid-1", t0.Add(20*time.Second), at(21400*time.Millisecond)) // second kill
	older := put(t, st, "uid-0", t0.Add(40*time.Second), at(41*time.Second))          // an older pod of the same name
	tests := []struct {
		name string
		kill Kill
		want string
	}{
		{"first kill, kubelet a few seconds late", Kill{PodUID: "uid-1", At: t0}, first},
		{"second kill", Kill{PodUID: "uid-1", At: t0.Add(22 * time.Second)}, second},
		{"another pod's UID never matches", Kill{PodUID: "uid-1", At: t0.Add(41 * time.Second)}, second},
		{"outside the tolerance", Kill{PodUID: "uid-1", At: t0.Add(5 * time.Minute)}, ""},
		// Without a UID from the caller, the older pod's capture is the match.
		{"UID unknown to the caller", Kill{At: t0.Add(41 * time.Second)}, older},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := tt.kill
			k.Namespace, k.Pod, k.Container = "shop", "api", "app"
			got, seen, err := FindFinal(context.Background(), st, k, 20*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if got != nil {
				if got.ID != tt.want {
					t.Errorf("final = %s, want %q", got.ID, tt.want)
				}
				if ps := got.Profiles(); len(ps) != 1 || ps[0] != "heap" {
					t.Errorf("profiles = %v, want [heap]", ps)
				}
			} else if tt.want != "" {
				t.Errorf("no final capture found (looked at %d), want %s", len(seen), tt.want)
			}
		})
	}
}
