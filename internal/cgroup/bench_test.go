package cgroup

import (
	"os"
	"testing"

	"github.com/heapwatch/heapwatch/internal/procfs"
)

// BenchmarkSample is the per-tick cost of sampling a real v1 memory cgroup
// (this process's own, read through /proc/self/root).
func BenchmarkSample(b *testing.B) {
	fsys, err := procfs.NewFS("/proc")
	if err != nil {
		b.Fatal(err)
	}
	dir, _, err := Locate(fsys.Proc(os.Getpid()))
	if err != nil {
		b.Skipf("no memory cgroup for this process: %v", err)
	}
	m, err := Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Sample(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSampleV2Fixture is the parsing cost of a v2 sample on a fixture.
func BenchmarkSampleV2Fixture(b *testing.B) {
	m, err := Open("testdata/v2/limited")
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Sample(); err != nil {
			b.Fatal(err)
		}
	}
}
