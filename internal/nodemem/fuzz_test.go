package nodemem

import (
	"bytes"
	"errors"
	"os"
	"testing"
)

// FuzzParseMeminfo: any input parses to a consistent Meminfo or fails
// with ErrMalformed (or a read error), and what parses computes to parts
// that add up.
func FuzzParseMeminfo(f *testing.F) {
	b, err := os.ReadFile("testdata/v1-cgroupfs/proc/meminfo")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte("MemTotal: 10 kB\nMemAvailable: 5 kB\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMeminfo(bytes.NewReader(b))
		if err != nil {
			if m != (Meminfo{}) {
				t.Fatal("result and error both set")
			}
			if !errors.Is(err, ErrMalformed) && !bytes.Contains([]byte(err.Error()), []byte("meminfo")) {
				t.Fatalf("error %v is neither ErrMalformed nor a read error", err)
			}
			return
		}
		if m.MemAvailable > m.MemTotal {
			t.Fatalf("MemAvailable %d > MemTotal %d", m.MemAvailable, m.MemTotal)
		}
		p := Compute(m, m.MemTotal/3, map[string]uint64{"d": m.MemTotal / 5})
		if p.Unaccounted > p.Used {
			t.Fatalf("unaccounted %d above used %d", p.Unaccounted, p.Used)
		}
	})
}
