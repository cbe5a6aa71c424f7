package inject_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/heapwatch/heapwatch/internal/testkit"
	"github.com/heapwatch/heapwatch/internal/webhook/inject"
	"github.com/heapwatch/heapwatch/settings"
)

// The reads the sidecar makes of another container's process, as names.
var procReads = []string{"environ", "fd-list", "fd-link", "root"}

// TestCapabilitiesSufficientAndNecessary runs, on this machine's real
// kernel, the /proc reads the sidecar makes of another container's process,
// from a uid-0 reader limited to the capabilities the rendered
// privileged-reader sidecar adds: they must all succeed against an app running as another uid and
// against one running as root with root's capabilities, and dropping any one
// of the added capabilities must make a read fail.
func TestCapabilitiesSufficientAndNecessary(t *testing.T) {
	testkit.NeedsRoot(t, "to start processes as other users and to limit capabilities")
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv (util-linux) to run a reader with limited capabilities")
	}
	sc := inject.Sidecar(options().Defaults, options(), inject.Security{Mode: settings.SecurityModePrivilegedReader}).SecurityContext
	if *sc.RunAsUser != 0 || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Fatalf("the privileged-reader sidecar no longer runs as uid 0 with ALL dropped; this test models that")
	}
	var added []string
	for _, c := range sc.Capabilities.Add {
		added = append(added, strings.ToLower(string(c)))
	}

	app := startApp(t, &syscall.Credential{Uid: 1000, Gid: 1000})
	rootApp := startApp(t, nil)
	read := func(pid int, caps []string) map[string]string {
		bounding := "-all"
		for _, c := range caps {
			bounding += ",+" + c
		}
		cmd := exec.Command(setpriv, "--bounding-set", bounding, "--", os.Args[0], "-test.run=^TestProcReadHelper$")
		cmd.Env = append(os.Environ(), "HEAPWATCH_PROC_READ_PID="+strconv.Itoa(pid))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("reader with %v: %v", caps, err)
		}
		var got map[string]string
		if err := json.Unmarshal(out[:strings.IndexByte(string(out), '\n')+1], &got); err != nil {
			t.Fatalf("reader output %q: %v", out, err)
		}
		return got
	}
	for name, pid := range map[string]int{"app as uid 1000": app, "app as root": rootApp} {
		got := read(pid, added)
		for _, r := range procReads {
			if got[r] != "ok" {
				t.Errorf("%s: %s with %v: %s", name, r, added, got[r])
			}
		}
	}
	for i, c := range added {
		fewer := slices.Delete(slices.Clone(added), i, i+1)
		got := read(app, fewer)
		if !slices.ContainsFunc(procReads, func(r string) bool { return got[r] != "ok" }) {
			t.Errorf("without %s every read still works (%v): the capability is not needed", c, got)
		}
	}
}

// startApp starts a process standing in for an app container's process.
func startApp(t *testing.T, cred *syscall.Credential) int {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd.Process.Pid
}

// TestProcReadHelper is the reader run by the test above in a process with
// limited capabilities; run directly it does nothing.
func TestProcReadHelper(t *testing.T) {
	pid := os.Getenv("HEAPWATCH_PROC_READ_PID")
	if pid == "" {
		return
	}
	result := func(err error) string {
		if err != nil {
			return err.Error()
		}
		return "ok"
	}
	dir := "/proc/" + pid
	_, errEnv := os.ReadFile(dir + "/environ")
	_, errFD := os.ReadDir(dir + "/fd")
	_, errLink := os.Readlink(dir + "/fd/0")
	_, errRoot := os.ReadDir(dir + "/root/")
	out, _ := json.Marshal(map[string]string{
		"environ": result(errEnv), "fd-list": result(errFD), "fd-link": result(errLink), "root": result(errRoot),
	})
	fmt.Println(string(out))
}
