package vm

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testWriter sends progress lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func boot(t *testing.T, files map[string]string) *VM {
	t.Helper()
	v, err := Boot(t.Context(), Config{Files: files, MemoryMiB: 1024, CPUs: 2, Log: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := v.Close(); err != nil {
			t.Error(err)
		}
	})
	return v
}

func TestRunCommandsAndCollectFiles(t *testing.T) {
	payload := filepath.Join(t.TempDir(), "payload")
	if err := os.WriteFile(payload, []byte("from the host\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	v := boot(t, map[string]string{"/opt/payload": payload})
	if !strings.HasSuffix(v.Kernel, "-cloud-amd64") {
		t.Errorf("guest kernel %q, want Debian's cloud kernel", v.Kernel)
	}
	tests := []struct {
		name    string
		cmd     Command
		exit    int
		output  string
		collect map[string]string
	}{
		{"cgroup v2 with memory delegated from the root",
			Command{Argv: []string{"sh", "-c", "awk '$2 == \"/sys/fs/cgroup\" {print $3}' /proc/mounts"}},
			0, "cgroup2\n", nil},
		{"env, dir, exit code and files back",
			Command{Argv: []string{"sh", "-c", "mkdir -p out/sub && cat /opt/payload > out/sub/f && echo $X; exit 3"},
				Env: []string{"X=hello"}, Dir: "/tmp", Collect: []string{"/tmp/out"}},
			3, "hello\n", map[string]string{"/tmp/out/sub/f": "from the host\n"}},
		{"killed by a signal",
			Command{Argv: []string{"sh", "-c", "kill -9 $$"}}, 137, "", nil},
		{"util-linux from the host runs with its libraries",
			Command{Argv: []string{"unshare", "--cgroup", "--mount", "--", "sh", "-c", "cat /proc/self/cgroup"}}, 0, "0::/\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := v.Run(t.Context(), tt.cmd)
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != tt.exit || !strings.HasPrefix(string(res.Output), tt.output) {
				t.Errorf("exit %d, output %q; want %d, %q...", res.ExitCode, res.Output, tt.exit, tt.output)
			}
			for path, want := range tt.collect {
				if got := string(res.Files[path]); got != want {
					t.Errorf("file %s = %q, want %q (files: %v)", path, got, want, res.Files)
				}
			}
		})
	}
	res, err := v.Run(t.Context(), Command{Argv: []string{"cat", "/sys/fs/cgroup/cgroup.subtree_control"}})
	if err != nil || !strings.Contains(string(res.Output), "memory") {
		t.Errorf("root subtree_control %q (%v): want memory enabled", res.Output, err)
	}
}

func TestRunTimeoutKillsTheVM(t *testing.T) {
	v := boot(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := v.Run(ctx, Command{Argv: []string{"sh", "-c", "echo started; sleep 600"}})
	if err == nil || !strings.Contains(err.Error(), "did not finish within 2s") || !strings.Contains(err.Error(), "started") {
		t.Fatalf("Run past its deadline: %v; want a clear timeout error with the output tail", err)
	}
	select {
	case <-v.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("QEMU still running after the timeout")
	}
	if err := syscall.Kill(v.cmd.Process.Pid, 0); err == nil {
		t.Error("QEMU process still exists")
	}
}

// TestTmpfsRoot: with TmpfsRoot the guest's root is a tmpfs mount (not the
// initramfs rootfs, which a container runtime cannot pivot_root out of),
// and the files of the initramfs are there.
func TestTmpfsRoot(t *testing.T) {
	v, err := Boot(t.Context(), Config{MemoryMiB: 1024, CPUs: 2, TmpfsRoot: true, Log: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := v.Close(); err != nil {
			t.Error(err)
		}
	})
	res, err := v.Run(t.Context(), Command{Argv: []string{"/bin/sh", "-c", "cat /proc/self/mountinfo; ls /bin/busybox"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", res.Output)
	var rootFS string
	for line := range strings.SplitSeq(string(res.Output), "\n") {
		// id parent major:minor root mountpoint options ... - fstype source
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == "/" {
			if i := slices.Index(f, "-"); i > 0 && i+1 < len(f) {
				rootFS = f[i+1]
			}
		}
	}
	if rootFS != "tmpfs" || res.ExitCode != 0 {
		t.Errorf("root filesystem %q (exit %d), want tmpfs with /bin/busybox", rootFS, res.ExitCode)
	}
}
