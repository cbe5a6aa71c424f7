package cgroup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/internal/procfs"
)

const mib = 1 << 20

func TestSampleFixtures(t *testing.T) {
	tests := []struct {
		dir     string
		version Version
		want    Sample
	}{
		{"testdata/v1/limited", V1, Sample{Usage: 73400320, WorkingSet: 73400320 - 8*mib, Limit: 128 * mib, MaxUsage: 90000000, OOMKills: 2}},
		// Unlimited: PAGE_COUNTER_MAX in both the group and hierarchical limit.
		{"testdata/v1/unlimited", V1, Sample{Usage: 73400320, WorkingSet: 73400320 - 8*mib, MaxUsage: 90000000, OOMKills: 2}},
		// The group is unlimited but an ancestor limits it to 100 MiB.
		{"testdata/v1/hierarchical", V1, Sample{Usage: 73400320, WorkingSet: 73400320 - 8*mib, Limit: 100 * mib, MaxUsage: 90000000, OOMKills: 2}},
		// Only the usage file: no limit, working set = usage.
		{"testdata/v1/no-optional", V1, Sample{Usage: 73400320, WorkingSet: 73400320}},
		{"testdata/v2/limited", V2, Sample{Usage: 73400320, WorkingSet: 73400320 - 8*mib, Limit: 128 * mib, High: 96 * mib, OOMKills: 1, OOMs: 3}},
		{"testdata/v2/max", V2, Sample{Usage: 73400320, WorkingSet: 73400320 - 8*mib, OOMKills: 1, OOMs: 3}},
		{"testdata/v2/missing-optional", V2, Sample{Usage: 73400320, WorkingSet: 73400320}},
		{"testdata/v2/inactive-above-usage", V2, Sample{Usage: 73400320, WorkingSet: 0, Limit: 128 * mib, OOMKills: 1, OOMs: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			m, err := Open(tt.dir)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if m.Version() != tt.version {
				t.Errorf("Version = %d, want %d", m.Version(), tt.version)
			}
			// Twice: the second read goes through pread on the same files.
			for range 2 {
				got, err := m.Sample()
				if err != nil {
					t.Fatal(err)
				}
				if got.Time.IsZero() {
					t.Error("Sample.Time not set")
				}
				got.Time = tt.want.Time
				if got != tt.want {
					t.Errorf("Sample =\n%+v\nwant\n%+v", got, tt.want)
				}
			}
		})
	}
}

func TestSampleMalformed(t *testing.T) {
	for _, dir := range []string{"testdata/v1/malformed-usage", "testdata/v1/malformed-stat", "testdata/v2/malformed-max", "testdata/v2/malformed-events"} {
		m, err := Open(dir)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		_, err = m.Sample()
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), dir) {
			t.Errorf("%s: got %v, want ErrMalformed naming the directory", dir, err)
		}
		m.Close()
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open("testdata/none"); !errors.Is(err, ErrNotMemoryCgroup) {
		t.Errorf("no memory files: got %v", err)
	}
	if _, err := Open("testdata/missing"); !errors.Is(err, ErrGone) {
		t.Errorf("missing dir: got %v, want ErrGone", err)
	}
	m, err := Open("testdata/v1/limited")
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if _, err := m.Sample(); !errors.Is(err, ErrGone) {
		t.Errorf("after Close: got %v, want ErrGone", err)
	}
}

func TestStat(t *testing.T) {
	m, err := Open("testdata/v2/limited")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	st, err := m.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st["inactive_file"] != 8*mib || st["anon"] != 50*mib || len(st) != 8 {
		t.Errorf("Stat = %v", st)
	}
	m2, err := Open("testdata/v2/missing-optional")
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if st, err := m2.Stat(); st != nil || err != nil {
		t.Errorf("missing memory.stat: %v, %v; want nil, nil", st, err)
	}
}

func TestParseValue(t *testing.T) {
	tests := []struct {
		in      string
		v       uint64
		max     bool
		wantErr bool
	}{
		{"123\n", 123, false, false},
		{"max\n", 0, true, false},
		{" 0 ", 0, false, false},
		{"", 0, false, true},
		{"-1", 0, false, true},
		{"maximum", 0, false, true},
		{"18446744073709551616", 0, false, true},
	}
	for _, tt := range tests {
		v, max, err := ParseValue(strings.NewReader(tt.in))
		if (err != nil) != tt.wantErr || v != tt.v || max != tt.max {
			t.Errorf("ParseValue(%q) = %d, %v, %v", tt.in, v, max, err)
		}
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseValue(%q): error %v is not ErrMalformed", tt.in, err)
		}
	}
}

func TestParseKeyed(t *testing.T) {
	m, err := ParseKeyed(strings.NewReader("oom_kill_disable 0\nunder_oom 1\n\noom_kill 7\n"))
	if err != nil || m["oom_kill"] != 7 || m["under_oom"] != 1 || len(m) != 3 {
		t.Errorf("ParseKeyed = %v, %v", m, err)
	}
	for _, in := range []string{"a", "a b", " 1", "a 1 2", "a -1"} {
		if _, err := ParseKeyed(strings.NewReader(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseKeyed(%q): got %v, want ErrMalformed", in, err)
		}
	}
	if _, err := ParseKeyed(strings.NewReader(strings.Repeat("a 1\n", statCap))); !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge file: got %v, want ErrTooLarge", err)
	}
}

func TestLocateFixtures(t *testing.T) {
	fsys, err := procfs.NewFS("testdata/proc")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		pid     int
		dir     string
		version Version
		err     error
	}{
		// Container view: the group is mounted at the view's root.
		{10, "testdata/proc/10/root/sys/fs/cgroup/memory", V1, nil},
		// Whole hierarchy visible: the path is followed.
		{20, "testdata/proc/20/root/sys/fs/cgroup/memory/kubepods/pod1/app", V1, nil},
		// v2 cgroup namespace: "/.." is not followed.
		{30, "testdata/proc/30/root/sys/fs/cgroup", V2, nil},
		{40, "", 0, ErrNoCgroup},
		{50, "", 0, ErrNoCgroup},
		{60, "", 0, fs.ErrNotExist},
	}
	for _, tt := range tests {
		dir, v, err := Locate(fsys.Proc(tt.pid))
		if dir != tt.dir || v != tt.version || (tt.err == nil) != (err == nil) || (tt.err != nil && !errors.Is(err, tt.err)) {
			t.Errorf("pid %d: Locate = %q, %d, %v; want %q, %d, %v", tt.pid, dir, v, err, tt.dir, tt.version, tt.err)
		}
	}
}

func TestStatRefresh(t *testing.T) {
	dir := copyTree(t, "testdata/v2/limited")
	m, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.SetStatRefresh(time.Hour, 4*mib)
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ws := func() uint64 {
		t.Helper()
		s, err := m.Sample()
		if err != nil {
			t.Fatal(err)
		}
		return s.WorkingSet
	}
	if got := ws(); got != 70*mib-8*mib {
		t.Fatalf("first sample working set %d", got)
	}
	// inactive_file changes; usage moves by less than maxDelta: reused.
	write("memory.stat", "inactive_file 0\n")
	write("memory.current", strconv.Itoa(71*mib))
	if got := ws(); got != 71*mib-8*mib {
		t.Errorf("working set %d, want the cached inactive_file subtracted", got)
	}
	// usage moves by more than maxDelta: re-read.
	write("memory.current", strconv.Itoa(80*mib))
	if got := ws(); got != 80*mib {
		t.Errorf("working set %d, want memory.stat re-read", got)
	}
}
