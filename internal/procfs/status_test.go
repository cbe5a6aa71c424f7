package procfs

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestParsePeakRSS(t *testing.T) {
	tests := []struct {
		name, in string
		want     int64
		wantErr  bool
	}{
		{"kernel format", "Name:\tleaky\nVmPeak:\t  812344 kB\nVmHWM:\t   20812 kB\nVmRSS:\t   19000 kB\n", 20812 << 10, false},
		{"kernel thread without memory", "Name:\tkthreadd\nState:\tS (sleeping)\n", 0, true},
		{"garbage value", "VmHWM:\tlots kB\n", 0, true},
		{"negative", "VmHWM:\t-5 kB\n", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePeakRSS(strings.NewReader(tt.in))
			if tt.wantErr {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("ParsePeakRSS = %d, %v; want ErrMalformed", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParsePeakRSS = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

func TestParseRSS(t *testing.T) {
	got, err := ParseRSS(strings.NewReader("Name:\tleaky\nVmHWM:\t   20812 kB\nVmRSS:\t   19000 kB\n"))
	if err != nil || got != 19000<<10 {
		t.Errorf("ParseRSS = %d, %v; want %d", got, err, 19000<<10)
	}
	if _, err := ParseRSS(strings.NewReader("Name:\tkthreadd\n")); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseRSS of a kernel thread: %v, want ErrMalformed", err)
	}
	// The live figure of this process, after touching 32 MiB more.
	fsys, err := NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	before, err := fsys.Proc(os.Getpid()).RSS()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 32<<20)
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = 1
	}
	after, err := fsys.Proc(os.Getpid()).RSS()
	if err != nil || after < before+30<<20 {
		t.Errorf("RSS %d -> %d (%v) with 32 MiB more resident", before, after, err)
	}
	_ = buf[len(buf)-1]
}

func TestPeakRSSOfThisProcess(t *testing.T) {
	fsys, err := NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	// With 64 MiB touched and live, the high-water mark is at least that.
	buf := make([]byte, 64<<20)
	for i := range buf {
		if i%4096 == 0 {
			buf[i] = 1
		}
	}
	after, err := fsys.Proc(os.Getpid()).PeakRSS()
	if err != nil {
		t.Fatal(err)
	}
	if after < 64<<20 {
		t.Errorf("peak RSS %d with 64 MiB resident", after)
	}
	_ = buf[len(buf)-1]
	// A small process has a small peak: the value is its own, not ours.
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var small int64
	for range 100 { // until exec has replaced the forked test binary's image
		if small, err = fsys.Proc(cmd.Process.Pid).PeakRSS(); err == nil && small < 16<<20 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil || small <= 0 || small >= 16<<20 {
		t.Errorf("peak RSS of sleep = %d, %v; want between 0 and 16 MiB", small, err)
	}
}

func TestParseEffectiveUID(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"Name:\tapp\nUid:\t1000\t1001\t1000\t1000\nGid:\t0\t0\t0\t0\n", 1001, true},
		{"Name:\tapp\n", 0, false},
		{"Uid:\t1000\n", 0, false},
		{"Uid:\t1000\tx\t0\t0\n", 0, false},
	} {
		got, err := ParseEffectiveUID(strings.NewReader(tt.in))
		if tt.ok && (err != nil || got != tt.want) || !tt.ok && !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %d, %v; want %d (ok %v)", tt.in, got, err, tt.want, tt.ok)
		}
	}
}
