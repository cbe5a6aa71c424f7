package cgroup

import (
	"bytes"
	"os"
	"testing"
)

func seed(f *testing.F, files ...string) {
	f.Helper()
	for _, n := range files {
		b, err := os.ReadFile(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzParseKeyed(f *testing.F) {
	seed(f, "testdata/v1/limited/memory.stat", "testdata/v1/limited/memory.oom_control",
		"testdata/v2/limited/memory.stat", "testdata/v2/limited/memory.events", "testdata/v1/malformed-stat/memory.stat")
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseKeyed(bytes.NewReader(b))
		if err == nil && m == nil {
			t.Fatal("nil map without error")
		}
	})
}

func FuzzParseValue(f *testing.F) {
	seed(f, "testdata/v1/limited/memory.usage_in_bytes", "testdata/v1/unlimited/memory.limit_in_bytes",
		"testdata/v2/max/memory.max", "testdata/v2/malformed-max/memory.max")
	f.Fuzz(func(t *testing.T, b []byte) {
		v, max, err := ParseValue(bytes.NewReader(b))
		if max && (v != 0 || err != nil) {
			t.Fatalf("max with value %d, err %v", v, err)
		}
	})
}

// FuzzSample runs the whole sampling path on fuzzed file contents.
func FuzzSample(f *testing.F) {
	seed(f, "testdata/v2/limited/memory.stat", "testdata/v2/limited/memory.events")
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		for name, content := range map[string][]byte{"memory.current": []byte("1000\n"), "memory.max": b, "memory.events": b, "memory.stat": b} {
			if err := os.WriteFile(dir+"/"+name, content, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		m, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		s, err := m.Sample()
		if err == nil && s.WorkingSet > s.Usage {
			t.Fatalf("working set %d above usage %d", s.WorkingSet, s.Usage)
		}
	})
}
