package procfs

import (
	"net"
	"os"
	"testing"
)

// BenchmarkScanProcesses measures one discovery pass over the real /proc:
// list PIDs and read stat and cgroup of each, as the watcher's re-scan does
// for processes it has not seen.
func BenchmarkScanProcesses(b *testing.B) {
	f, err := NewFS("/proc")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		pids, err := f.PIDs()
		if err != nil {
			b.Fatal(err)
		}
		for _, pid := range pids {
			p := f.Proc(pid)
			if _, err := p.Stat(); err != nil {
				continue
			}
			_, _ = p.Cgroups()
		}
	}
}

// BenchmarkListPIDs is the cost of the per-rescan liveness check alone.
func BenchmarkListPIDs(b *testing.B) {
	f, err := NewFS("/proc")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.PIDs(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkListeningPorts(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	f, err := NewFS("/proc")
	if err != nil {
		b.Fatal(err)
	}
	p := f.Proc(os.Getpid())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.ListeningPorts(); err != nil {
			b.Fatal(err)
		}
	}
}
