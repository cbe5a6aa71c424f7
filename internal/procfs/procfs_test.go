package procfs

import (
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
)

func fixture(t testing.TB) FS {
	t.Helper()
	f, err := NewFS("testdata/proc")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestNewFSErrors(t *testing.T) {
	if _, err := NewFS("testdata/missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing root: got %v, want ErrNotExist", err)
	}
	if _, err := NewFS("testdata/proc/1/stat"); err == nil {
		t.Error("file as root: got nil error")
	}
}

func TestPIDsAndSelf(t *testing.T) {
	f := fixture(t)
	pids, err := f.PIDs()
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 42, 100, 200, 300}; !reflect.DeepEqual(pids, want) {
		t.Errorf("PIDs = %v, want %v", pids, want)
	}
	self, err := f.Self()
	if err != nil || self != 42 {
		t.Errorf("Self = %d, %v; want 42", self, err)
	}
}

func TestStatFixtures(t *testing.T) {
	f := fixture(t)
	tests := []struct {
		pid  int
		want Stat
	}{
		{1, Stat{PID: 1, Comm: "pause", State: 'S', PPID: 0, Flags: 4194560, StartTime: 100}},
		{100, Stat{PID: 100, Comm: "leaky", State: 'S', PPID: 0, Flags: 4194560, StartTime: 6000}},
		{200, Stat{PID: 200, Comm: "we (ird) name", State: 'S', PPID: 1, Flags: 4194560, StartTime: 7000}},
	}
	for _, tt := range tests {
		got, err := f.Proc(tt.pid).Stat()
		if err != nil {
			t.Fatalf("pid %d: %v", tt.pid, err)
		}
		if got != tt.want {
			t.Errorf("pid %d: Stat = %+v, want %+v", tt.pid, got, tt.want)
		}
	}
	if _, err := f.Proc(999).Stat(); !IsNotExist(err) {
		t.Errorf("missing pid: got %v, want not-exist", err)
	}
}

func TestParseStatMalformed(t *testing.T) {
	mk := func(pid, comm, state, ppid, start string) string {
		return pid + " " + comm + " " + state + " " + ppid + " 1 1 0 -1 0 0 0 0 0 0 0 0 0 0 0 1 0 " + start + " 0"
	}
	if s, err := ParseStat(strings.NewReader(mk("7", "(a) b)", "R", "3", "99"))); err != nil || s.Comm != "a) b" || s.StartTime != 99 || s.PPID != 3 {
		t.Errorf("valid stat: %+v, %v", s, err)
	}
	for name, in := range map[string]string{
		"empty":       "",
		"no comm":     "1 S 0",
		"short":       "1 (x) S 0 1 1",
		"bad pid":     mk("x", "(x)", "S", "0", "5"),
		"bad ppid":    mk("1", "(x)", "S", "q", "5"),
		"bad state":   mk("1", "(x)", "SS", "0", "5"),
		"bad start":   mk("1", "(x)", "S", "0", "-5"),
		"reversed ()": mk("1", ")x(", "S", "0", "5"),
	} {
		if _, err := ParseStat(strings.NewReader(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", name, err)
		}
	}
}

func TestCommCmdlineEnviron(t *testing.T) {
	f := fixture(t)
	p := f.Proc(100)
	if c, err := p.Comm(); err != nil || c != "leaky" {
		t.Errorf("Comm = %q, %v", c, err)
	}
	if c, err := p.Cmdline(); err != nil || !reflect.DeepEqual(c, []string{"/app/leaky", "-mode", "double"}) {
		t.Errorf("Cmdline = %q, %v", c, err)
	}
	if c, err := f.Proc(200).Cmdline(); err != nil || c != nil {
		t.Errorf("empty Cmdline = %q, %v", c, err)
	}
	tests := []struct {
		pid    int
		key    string
		want   string
		wantOK bool
	}{
		{100, "HEAPWATCH_CONTAINER_NAME", "app", true}, // first occurrence wins
		{100, "HOME", "/root", true},
		{100, "HEAPWATCH", "", false}, // prefix of a key is not the key
		{200, "A", "1", true},         // no trailing NUL
		{1, "HEAPWATCH_CONTAINER_NAME", "", false},
	}
	for _, tt := range tests {
		v, ok, err := f.Proc(tt.pid).Getenv(tt.key)
		if err != nil || v != tt.want || ok != tt.wantOK {
			t.Errorf("pid %d Getenv(%s) = %q, %v, %v; want %q, %v", tt.pid, tt.key, v, ok, err, tt.want, tt.wantOK)
		}
	}
	if _, _, err := f.Proc(300).Getenv("A"); !IsNotExist(err) {
		t.Errorf("missing environ: got %v", err)
	}
}

func TestLookupEnvTooLarge(t *testing.T) {
	big := strings.Repeat("X=1\x00", environCap/4+10)
	if _, _, err := LookupEnv(strings.NewReader(big), "Y"); !errors.Is(err, ErrTooLarge) {
		t.Errorf("got %v, want ErrTooLarge", err)
	}
}

func TestCgroups(t *testing.T) {
	f := fixture(t)
	tests := []struct {
		pid     int
		path    string
		version int
		id      string
	}{
		{100, "/kubepods/burstable/pod1234/abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd", 1, "abcdefabcdef"},
		{42, "/kubepods/burstable/pod1234/cri-containerd-fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210.scope", 1, "fedcba987654"},
		{200, "/../app2", 2, "app2"},
	}
	for _, tt := range tests {
		cgs, err := f.Proc(tt.pid).Cgroups()
		if err != nil {
			t.Fatalf("pid %d: %v", tt.pid, err)
		}
		p, v, ok := MemoryCgroup(cgs)
		if !ok || p != tt.path || v != tt.version {
			t.Errorf("pid %d MemoryCgroup = %q, %d, %v; want %q, %d", tt.pid, p, v, ok, tt.path, tt.version)
		}
		if id := ContainerID(p); id != tt.id {
			t.Errorf("pid %d ContainerID = %q, want %q", tt.pid, id, tt.id)
		}
	}
	cgs, _ := f.Proc(100).Cgroups()
	if want := (Cgroup{HierarchyID: 11, Controllers: []string{"cpu", "cpuacct"}, Path: cgs[0].Path}); !reflect.DeepEqual(cgs[1], want) {
		t.Errorf("line 2 = %+v, want %+v", cgs[1], want)
	}
}

func TestParseCgroup(t *testing.T) {
	good := []struct {
		in   string
		want []Cgroup
	}{
		{"0::/\n", []Cgroup{{HierarchyID: 0, Path: "/"}}},
		{"4:memory:/a:b\n", []Cgroup{{HierarchyID: 4, Controllers: []string{"memory"}, Path: "/a:b"}}},
		{"\n0::/x", []Cgroup{{Path: "/x"}}},
	}
	for _, tt := range good {
		got, err := ParseCgroup(strings.NewReader(tt.in))
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseCgroup(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"memory:/x", "a:memory:/x", "-1::/", "3:memory:relative"} {
		if _, err := ParseCgroup(strings.NewReader(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseCgroup(%q): got %v, want ErrMalformed", in, err)
		}
	}
	if _, _, ok := MemoryCgroup([]Cgroup{{HierarchyID: 3, Controllers: []string{"cpu"}, Path: "/"}}); ok {
		t.Error("MemoryCgroup found a memory cgroup in a cpu-only list")
	}
}

func TestContainerID(t *testing.T) {
	tests := map[string]string{
		"/":        "",
		"":         "",
		"/a/b/app": "app",
		"/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope":     "0123456789ab",
		"/kubepods.slice/cri-containerd:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef": "0123456789ab",
		"/user.slice/session-3.scope": "session-3",
	}
	for in, want := range tests {
		if got := ContainerID(in); got != want {
			t.Errorf("ContainerID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestListeningPortsFixture(t *testing.T) {
	f := fixture(t)
	got, err := f.Proc(100).ListeningPorts()
	if err != nil {
		t.Fatal(err)
	}
	want := []Listener{
		{Network: "tcp6", Addr: netip.MustParseAddr("::1"), Port: 7070, Inode: 1004},
		{Network: "tcp6", Addr: netip.MustParseAddr("::"), Port: 8080, Inode: 1002},
		{Network: "tcp4", Addr: netip.MustParseAddr("127.0.0.1"), Port: 9090, Inode: 1003},
		{Network: "tcp4", Addr: netip.MustParseAddr("0.0.0.0"), Port: 6060, Inode: 1001},
	}
	// Sorted by port.
	want[0], want[1], want[2], want[3] = want[3], want[0], want[1], want[2]
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ListeningPorts =\n%+v\nwant\n%+v", got, want)
	}
	dial := map[uint16]string{6060: "127.0.0.1:6060", 7070: "[::1]:7070", 8080: "[::1]:8080", 9090: "127.0.0.1:9090"}
	for _, l := range got {
		if d := l.DialAddr(); d != dial[l.Port] {
			t.Errorf("port %d DialAddr = %s, want %s", l.Port, d, dial[l.Port])
		}
	}
	// Process 200 has no sockets; 42 owns the port-80 listener (no tcp6 file).
	if ls, err := f.Proc(200).ListeningPorts(); err != nil || len(ls) != 0 {
		t.Errorf("pid 200: %v, %v", ls, err)
	}
	if ls, err := f.Proc(42).ListeningPorts(); err != nil || len(ls) != 1 || ls[0].Port != 80 {
		t.Errorf("pid 42: %v, %v", ls, err)
	}
}

func TestParseNetTCPMalformed(t *testing.T) {
	const hdr = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	row := func(local, st, inode string) string {
		return "   0: " + local + " 00000000:0000 " + st + " 00000000:00000000 00:00000000 00000000     0        0 " + inode + " 1\n"
	}
	for name, in := range map[string]string{
		"no header":     row("00000000:0050", "0A", "1"),
		"short row":     hdr + "   0: 00000000:0050 00000000:0000 0A\n",
		"bad addr":      hdr + row("0000000:0050", "0A", "1"),
		"bad hex":       hdr + row("0000000G:0050", "0A", "1"),
		"no port":       hdr + row("00000000", "0A", "1"),
		"bad port":      hdr + row("00000000:005G", "0A", "1"),
		"bad state":     hdr + row("00000000:0050", "ZZ", "1"),
		"bad inode":     hdr + row("00000000:0050", "0A", "-1"),
		"line too long": hdr + strings.Repeat("x", 70<<10),
	} {
		if _, err := ParseNetTCP(strings.NewReader(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", name, err)
		}
	}
}

func TestParseSocketLink(t *testing.T) {
	tests := []struct {
		in   string
		ino  uint64
		isOK bool
	}{
		{"socket:[123]", 123, true},
		{"socket:[]", 0, false},
		{"socket:[12", 0, false},
		{"pipe:[123]", 0, false},
		{"/dev/null", 0, false},
	}
	for _, tt := range tests {
		ino, ok := ParseSocketLink(tt.in)
		if ino != tt.ino || ok != tt.isOK {
			t.Errorf("ParseSocketLink(%q) = %d, %v", tt.in, ino, ok)
		}
	}
}

func TestIsPause(t *testing.T) {
	f := fixture(t)
	for pid, want := range map[int]bool{1: true, 42: false, 100: false} {
		got, err := f.Proc(pid).IsPause()
		if err != nil || got != want {
			t.Errorf("pid %d IsPause = %v, %v; want %v", pid, got, err, want)
		}
	}
}

// TestRealListeningPorts checks the fd→inode→port match against the running
// kernel with listeners this test opens.
func TestRealListeningPorts(t *testing.T) {
	f, err := NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var want []netip.AddrPort
	for _, addr := range []string{"127.0.0.1:0", "0.0.0.0:0", "[::1]:0", "[::]:0"} {
		network := "tcp4"
		if strings.HasPrefix(addr, "[") {
			network = "tcp6"
		}
		ln, err := net.Listen(network, addr)
		if err != nil {
			t.Fatalf("listen %s: %v", addr, err)
		}
		t.Cleanup(func() { ln.Close() })
		want = append(want, netip.MustParseAddrPort(ln.Addr().String()))
	}
	// A connected (non-listening) socket must not be reported.
	c, err := net.Dial("tcp4", want[0].String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	self, err := f.Self()
	if err != nil || self != os.Getpid() {
		t.Fatalf("Self = %d, %v; want %d", self, err, os.Getpid())
	}
	got, err := f.Proc(self).ListeningPorts()
	if err != nil {
		t.Fatal(err)
	}
	have := map[netip.AddrPort]bool{}
	for _, l := range got {
		have[netip.AddrPortFrom(l.Addr, l.Port)] = true
		if l.Inode == 0 {
			t.Errorf("listener %+v has no inode", l)
		}
	}
	for _, w := range want {
		if !have[w] {
			t.Errorf("listener %s not found in %+v", w, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d listeners, want %d: %+v", len(got), len(want), got)
	}
	// PID 1 (another process) does not own our sockets.
	if others, err := f.Proc(1).ListeningPorts(); err == nil {
		for _, l := range others {
			if have[netip.AddrPortFrom(l.Addr, l.Port)] {
				t.Errorf("pid 1 reported our listener %+v", l)
			}
		}
	}
}

func TestStatKernelThread(t *testing.T) {
	for _, tt := range []struct {
		line string
		want bool
	}{
		{"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 10 0 0", true},
		{"77 (app) R 1 77 77 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 10 0 0", false},
	} {
		s, err := ParseStat(strings.NewReader(tt.line))
		if err != nil || s.KernelThread() != tt.want {
			t.Errorf("%q: KernelThread %v, %v; want %v", tt.line, s.KernelThread(), err, tt.want)
		}
	}
	st, err := ParseStat(strings.NewReader("1 (x) S 0 0 0 0 -1 notanumber 0 0 0 0 0 0 0 0 20 0 1 0 10 0 0"))
	if !errors.Is(err, ErrMalformed) {
		t.Errorf("bad flags: %+v, %v; want ErrMalformed", st, err)
	}
}
