package capture

import (
	"errors"
	"slices"
	"testing"
	"time"
)

func TestKeysRoundTripAndSort(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 14, 1, 2, 123456789, time.FixedZone("CET", 3600))
	n := Name{Namespace: "shop", Pod: "api-7d9f-x2", Container: "app", Time: t0, Trigger: "threshold-75"}
	if got, want := n.ID(), "shop/api-7d9f-x2/app/20261123T130102.123Z-threshold-75"; got != want {
		t.Errorf("ID = %q, want %q", got, want)
	}
	if got, want := n.ProfileKey("heap"), n.ID()+"-heap.pb.gz"; got != want {
		t.Errorf("ProfileKey(heap) = %q, want %q", got, want)
	}
	if got, want := n.ProfileKey("goroutine"), n.ID()+"-goroutine.txt"; got != want {
		t.Errorf("ProfileKey(goroutine) = %q, want %q", got, want)
	}
	for _, s := range []string{n.ID(), n.MetadataKey()} {
		back, err := ParseID(s)
		if err != nil {
			t.Fatalf("ParseID(%q): %v", s, err)
		}
		if back.ID() != n.ID() || !back.Time.Equal(t0.Truncate(time.Millisecond)) {
			t.Errorf("ParseID(%q) = %+v", s, back)
		}
	}
	// Later captures sort after earlier ones, also across a second boundary.
	var keys []string
	for _, d := range []time.Duration{1500 * time.Millisecond, 0, 999 * time.Millisecond, 10 * time.Second} {
		m := n
		m.Time = t0.Add(d)
		keys = append(keys, m.MetadataKey())
	}
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	if want := []string{keys[1], keys[2], keys[0], keys[3]}; !slices.Equal(sorted, want) {
		t.Errorf("sorted keys = %v, want %v", sorted, want)
	}
}

func TestUnsafeSegmentsAreNeutralised(t *testing.T) {
	n := Name{Namespace: "..", Pod: "a/b", Container: "", Time: time.Unix(0, 0), Trigger: "x y"}
	if got, want := n.ID(), "_/a_b/_/19700101T000000.000Z-x_y"; got != want {
		t.Errorf("ID = %q, want %q", got, want)
	}
	// Whatever ID is written must parse back, or the capture is invisible.
	if back, err := ParseID(n.ID()); err != nil || back.ID() != n.ID() {
		t.Errorf("ParseID(%q) = %+v, %v", n.ID(), back, err)
	}
}

func TestParseIDRejects(t *testing.T) {
	for _, s := range []string{
		"", "shop/api/app", "shop/api/app/notatime-threshold-75",
		"shop/api/app/20261123T130102.123Z-", "shop/api/app/x/20261123T130102.123Z-growth",
		"shop/api/app/20261399T130102.123Z-growth",
	} {
		if _, err := ParseID(s); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseID(%q) error = %v, want ErrBadKey", s, err)
		}
	}
}

func TestPrefix(t *testing.T) {
	tests := []struct{ ns, pod, c, want string }{
		{"", "", "", ""},
		{"shop", "", "", "shop/"},
		{"shop", "api", "", "shop/api/"},
		{"shop", "api", "app", "shop/api/app/"},
		{"", "api", "app", ""},
	}
	for _, tt := range tests {
		if got := Prefix(tt.ns, tt.pod, tt.c); got != tt.want {
			t.Errorf("Prefix(%q,%q,%q) = %q, want %q", tt.ns, tt.pod, tt.c, got, tt.want)
		}
	}
}

func TestDecodeMetadata(t *testing.T) {
	good := `{"schemaVersion":1,"namespace":"shop","pod":"api","container":"app","capturedAt":"2026-11-23T13:01:02.123Z",
		"trigger":"growth","profiles":[{"name":"heap","key":"k","bytes":10},{"name":"goroutine","key":"g","bytes":5}]}`
	m, err := DecodeMetadata([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if m.TotalBytes() != 15 || m.Name().ID() != "shop/api/app/20261123T130102.123Z-growth" {
		t.Errorf("decoded %+v", m)
	}
	for name, doc := range map[string]string{
		"not json":       `{"schemaVersion":`,
		"future version": `{"schemaVersion":99,"namespace":"shop","pod":"api","container":"app","capturedAt":"2026-11-23T13:01:02Z"}`,
		"no version":     `{"namespace":"shop","pod":"api","container":"app","capturedAt":"2026-11-23T13:01:02Z"}`,
		"no pod":         `{"schemaVersion":1,"namespace":"shop","container":"app","capturedAt":"2026-11-23T13:01:02Z"}`,
		"no time":        `{"schemaVersion":1,"namespace":"shop","pod":"api","container":"app"}`,
	} {
		if _, err := DecodeMetadata([]byte(doc)); err == nil {
			t.Errorf("%s: DecodeMetadata succeeded", name)
		}
	}
}

// ParseKey is the exact inverse of MetadataKey and ProfileKey for every
// Name the sidecar writes (segment-safe parts, UTC milliseconds).
func TestParseKeyRoundTrip(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 19, 30, 0, 7_000_000, time.UTC)
	names := []Name{
		{Namespace: "shop", Pod: "api-7d9f-x2", Container: "app", Time: t0, Trigger: "threshold-75"},
		{Namespace: "a", Pod: "b", Container: "c", Time: t0.Add(999 * time.Millisecond), Trigger: "predictive"},
		{Namespace: "n.s", Pod: "p_1", Container: "c-2", Time: t0, Trigger: "held-growth-90"},
		{Namespace: "x", Pod: "y", Container: "z", Time: time.Unix(0, 0).UTC(), Trigger: "a.b"},
	}
	for _, n := range names {
		for _, profile := range []string{"", "heap", "goroutine", "allocs", "block_1"} {
			key := n.MetadataKey()
			if profile != "" {
				key = n.ProfileKey(profile)
			}
			back, gotProfile, err := ParseKey(key)
			if err != nil {
				t.Fatalf("ParseKey(%q): %v", key, err)
			}
			if back != n || gotProfile != profile {
				t.Errorf("ParseKey(%q) = %+v, %q; want %+v, %q", key, back, gotProfile, n, profile)
			}
		}
	}
}

func TestParseKeyRejects(t *testing.T) {
	for _, key := range []string{
		"", "shop/api/app", "shop/api/app/20261202T193000.007Z-x-heap.bin",
		"shop/api/app/20261202T193000.007Z-x-goroutine.pb.gz", // wrong extension for the profile
		"shop/api/app/20261202T193000.007Z-x-heap.txt",
		"shop/api/app/20261202T193000.007Z-heap.pb.gz", // no trigger left
		"shop/api/app/2026-12-02-x.json", "shop/api/20261202T193000.007Z-x.json",
		"shop/api/app/20261202T193000.007Z-x-.pb.gz",
	} {
		if n, p, err := ParseKey(key); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseKey(%q) = %+v, %q, %v; want ErrBadKey", key, n, p, err)
		}
	}
}
