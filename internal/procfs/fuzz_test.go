package procfs

import (
	"bytes"
	"os"
	"testing"
)

func seedFiles(f *testing.F, names ...string) {
	f.Helper()
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzParseNetTCP(f *testing.F) {
	seedFiles(f, "testdata/proc/100/net/tcp", "testdata/proc/100/net/tcp6")
	f.Add([]byte("  sl  local_address\n 0: 0100007F:1F90 00000000:0000 0A 0 0 0 0 0 7\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		socks, err := ParseNetTCP(bytes.NewReader(b))
		if err != nil && socks != nil {
			t.Fatal("result and error both set")
		}
		for _, s := range socks {
			if !s.Local.Addr().IsValid() {
				t.Fatalf("invalid local address in %+v", s)
			}
		}
	})
}

func FuzzParseCgroup(f *testing.F) {
	seedFiles(f, "testdata/proc/100/cgroup", "testdata/proc/200/cgroup", "testdata/proc/42/cgroup")
	f.Fuzz(func(t *testing.T, b []byte) {
		cgs, err := ParseCgroup(bytes.NewReader(b))
		if err != nil {
			return
		}
		for _, c := range cgs {
			if c.Path == "" || c.Path[0] != '/' {
				t.Fatalf("path %q accepted", c.Path)
			}
		}
		if p, _, ok := MemoryCgroup(cgs); ok {
			_ = ContainerID(p)
		}
	})
}

func FuzzParseStat(f *testing.F) {
	seedFiles(f, "testdata/proc/1/stat", "testdata/proc/200/stat")
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStat(bytes.NewReader(b))
		if err == nil && s.State == 0 {
			t.Fatal("state missing without error")
		}
	})
}

func FuzzLookupEnv(f *testing.F) {
	seedFiles(f, "testdata/proc/100/environ", "testdata/proc/200/environ")
	f.Fuzz(func(t *testing.T, b []byte) {
		v, ok, err := LookupEnv(bytes.NewReader(b), "HEAPWATCH_CONTAINER_NAME")
		if err != nil || !ok {
			return
		}
		if bytes.IndexByte([]byte(v), 0) >= 0 {
			t.Fatalf("value %q holds a NUL", v)
		}
	})
}

func FuzzParseCmdline(f *testing.F) {
	seedFiles(f, "testdata/proc/100/cmdline")
	f.Fuzz(func(t *testing.T, b []byte) {
		args, err := ParseCmdline(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 0 && bytes.Trim(b, "\x00") != nil && len(bytes.Trim(b, "\x00")) > 0 && len(args) == 0 {
			t.Fatalf("no args from %q", b)
		}
	})
}
