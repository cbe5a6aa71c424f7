package inject_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	_ "net/http/pprof" // the app helper serves pprof on DefaultServeMux
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/heapwatch/heapwatch/internal/cgroup"
	"github.com/heapwatch/heapwatch/internal/podsim"
	"github.com/heapwatch/heapwatch/internal/pprof"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/webhook/inject"
	"github.com/heapwatch/heapwatch/settings"
)

// The reads the sidecar makes of an app's process, done with the sidecar's
// own readers.
var sameUIDReads = []string{"memory", "sockets", "environ", "heap"}

const (
	appLimit  = 64 << 20
	appSecret = "heapwatch-test-environ-value"
)

// TestSameUIDReadsWithoutCapabilities runs, on this machine's real kernel,
// everything the sidecar reads of an app, from a reader with exactly the
// identity the webhook renders for a same-uid sidecar (uid and gid 1000, no
// capability in any set, no_new_privs): the app's memory usage and limit
// through /proc/<pid>/root, its listening sockets through /proc/<pid>/fd,
// its environ, and a heap profile from the port found that way. The app
// runs in an emulated container (its own memory cgroup and mount namespace)
// as 1000:1000 without capabilities. Every /proc read must fail with a
// permission error naming the path when the app runs as another uid or
// gid, as root, or is not dumpable.
func TestSameUIDReadsWithoutCapabilities(t *testing.T) {
	if err := podsim.Supported(); err != nil {
		t.Skipf("needs root and a cgroup v1 memory hierarchy: %v", err)
	}
	sc := inject.Sidecar(options().Defaults, options(), inject.Security{Mode: settings.SecurityModeSameUID, UID: 1000, GID: 1000}).SecurityContext
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 || *sc.AllowPrivilegeEscalation || sc.RunAsGroup == nil {
		t.Fatalf("the same-uid sidecar no longer drops every capability with a fixed uid and gid; this test models that: %+v", sc)
	}
	reader := podsim.User{UID: int(*sc.RunAsUser), GID: int(*sc.RunAsGroup)}
	exe := executableCopy(t)
	tests := []struct {
		name        string
		app         *podsim.User // nil: root
		nonDumpable bool
		readable    bool
	}{
		{"app as the same uid and gid", &podsim.User{UID: 1000, GID: 1000}, false, true},
		{"app as another uid", &podsim.User{UID: 1001, GID: 1000}, false, false},
		{"app as another gid", &podsim.User{UID: 1000, GID: 1001}, false, false},
		{"app as root", nil, false, false},
		{"app not dumpable", &podsim.User{UID: 1000, GID: 1000}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pid := startAppHelper(t, exe, tt.app, tt.nonDumpable)
			got := readAs(t, exe, reader, pid)
			t.Logf("reader as %d:%d: %v", reader.UID, reader.GID, got)
			if got["identity"] != "ok" {
				t.Fatalf("reader identity: %s", got["identity"])
			}
			for _, r := range sameUIDReads {
				res := got[r]
				switch {
				case tt.readable && !strings.HasPrefix(res, "ok"):
					t.Errorf("%s: %s", r, res)
				case tt.readable:
				case r == "heap":
					// Not a /proc read: without the port from /proc/<pid>/fd
					// there is nothing to fetch.
					if !strings.HasPrefix(res, "no port") {
						t.Errorf("heap: %s, want no port to fetch from", res)
					}
				case !strings.HasPrefix(res, "denied: ") || !strings.Contains(res, fmt.Sprintf("/proc/%d/", pid)):
					t.Errorf("%s: %q, want a permission error naming /proc/%d/", r, res, pid)
				}
			}
			if tt.readable && got["memory"] != fmt.Sprintf("ok: limit %d", appLimit) {
				t.Errorf("memory: %s, want the container's own limit %d", got["memory"], appLimit)
			}
			if tt.readable && got["environ"] != "ok: "+appSecret {
				t.Errorf("environ: %s", got["environ"])
			}
		})
	}
}

// executableCopy copies the test binary where every uid may run it: the go
// tool builds it in a directory only root can enter.
func executableCopy(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "heapwatch-inject-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	exe := filepath.Join(dir, "inject.test")
	dst, err := os.OpenFile(exe, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return exe
}

// startAppHelper runs TestAppHelper as an app container of an emulated pod
// sharing this network, and returns its host PID once it serves pprof.
func startAppHelper(t *testing.T, exe string, user *podsim.User, nonDumpable bool) int {
	t.Helper()
	out, stdout := io.Pipe()
	env := []string{"HEAPWATCH_TEST_APP=1", "HEAPWATCH_TEST_SECRET=" + appSecret}
	if nonDumpable {
		env = append(env, "HEAPWATCH_TEST_NONDUMPABLE=1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pod, err := podsim.Start(ctx, podsim.Spec{Name: "sameuid", Containers: []podsim.ContainerSpec{{
		Name: "app", Argv: []string{exe, "-test.run=^TestAppHelper$"}, Env: env,
		MemoryLimit: appLimit, User: user, Stdout: stdout, Stderr: stdout,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pod.Close(); err != nil {
			t.Error(err)
		}
		stdout.Close()
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		var lines []string
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if sc.Text() == "ready" {
				ready <- ""
				break
			}
		}
		ready <- strings.Join(lines, "\n")
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case msg := <-ready:
		if msg != "" {
			t.Fatalf("app helper exited before it was ready: %s", msg)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("app helper not ready within 30s")
	}
	pid, err := pod.Container("app").PID()
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// readAs runs TestReaderHelper as user, with no capability at all and
// no_new_privs, against pid, and returns its results.
func readAs(t *testing.T, exe string, user podsim.User, pid int) map[string]string {
	t.Helper()
	cmd := exec.Command("setpriv", "--reuid", strconv.Itoa(user.UID), "--regid", strconv.Itoa(user.GID), "--clear-groups",
		"--inh-caps", "-all", "--bounding-set", "-all", "--no-new-privs", "--", exe, "-test.run=^TestReaderHelper$")
	cmd.Env = append(os.Environ(), "HEAPWATCH_TEST_READ_PID="+strconv.Itoa(pid),
		fmt.Sprintf("HEAPWATCH_TEST_READ_AS=%d:%d", user.UID, user.GID))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reader: %v\n%s%s", err, out, stderr.Bytes())
	}
	line, _, _ := bytes.Cut(out, []byte("\n"))
	var got map[string]string
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("reader output %q: %v", out, err)
	}
	return got
}

// TestAppHelper is the app of the test above: it serves net/http/pprof on
// a loopback port and waits to be killed. Run directly it does nothing.
func TestAppHelper(t *testing.T) {
	if os.Getenv("HEAPWATCH_TEST_APP") == "" {
		return
	}
	if os.Getenv("HEAPWATCH_TEST_NONDUMPABLE") != "" {
		if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	t.Fatal(http.Serve(l, nil))
}

// TestReaderHelper is the sidecar stand-in of the test above: it checks
// its own identity, then reads the app with the sidecar's readers and
// prints one JSON line of results. Run directly it does nothing.
func TestReaderHelper(t *testing.T) {
	pidEnv := os.Getenv("HEAPWATCH_TEST_READ_PID")
	if pidEnv == "" {
		return
	}
	pid, _ := strconv.Atoi(pidEnv)
	res := map[string]string{"identity": identity(os.Getenv("HEAPWATCH_TEST_READ_AS"))}
	result := func(detail string, err error) string {
		switch {
		case err == nil:
			return "ok: " + detail
		case errors.Is(err, fs.ErrPermission):
			return "denied: " + err.Error()
		}
		return err.Error()
	}
	procFS, err := procfs.NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	proc := procFS.Proc(pid)

	var limit uint64
	dir, _, err := cgroup.Locate(proc)
	if err == nil {
		var m *cgroup.Memory
		if m, err = cgroup.Open(dir); err == nil {
			var s cgroup.Sample
			s, err = m.Sample()
			limit = s.Limit
			m.Close()
		}
	}
	res["memory"] = result(fmt.Sprintf("limit %d", limit), err)

	v, _, err := proc.Getenv("HEAPWATCH_TEST_SECRET")
	res["environ"] = result(v, err)

	ports, err := proc.ListeningPorts()
	if err == nil && len(ports) == 0 {
		err = errors.New("no listening port")
	}
	res["sockets"] = result(fmt.Sprint(ports), err)
	if err != nil {
		res["heap"] = "no port: " + err.Error()
	} else {
		var b bytes.Buffer
		_, err := pprof.NewClient(pprof.Options{}).Fetch(context.Background(), ports[0].DialAddr(), "heap", &b)
		if err == nil {
			_, err = profile.ParseData(b.Bytes())
		}
		res["heap"] = result(fmt.Sprintf("%d bytes", b.Len()), err)
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

// identity checks that this process runs as want (uid:gid, real, effective,
// saved and filesystem ids) with no supplementary group and every
// capability set empty.
func identity(want string) string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err.Error()
	}
	uid, gid, _ := strings.Cut(want, ":")
	expect := map[string]string{
		"Uid": strings.Repeat(uid+" ", 4), "Gid": strings.Repeat(gid+" ", 4), "Groups": "", "NoNewPrivs": "1",
		"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
		"CapBnd": "0000000000000000", "CapAmb": "0000000000000000",
	}
	var bad []string
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if e, ok := expect[k]; ok {
			if got := strings.Join(strings.Fields(v), " "); got != strings.TrimSpace(e) {
				bad = append(bad, fmt.Sprintf("%s %q, want %q", k, got, strings.TrimSpace(e)))
			}
			delete(expect, k)
		}
	}
	for k := range expect {
		bad = append(bad, k+" missing")
	}
	if len(bad) > 0 {
		return strings.Join(bad, "; ")
	}
	return "ok"
}
