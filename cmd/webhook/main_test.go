package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBinary builds the webhook and runs it as a user would locally: a bad
// flag set fails with a message naming the flag; a good one serves, reports
// ready with its self-signed certificate, and exits cleanly on SIGTERM.
func TestBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "webhook")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	t.Run("missing sidecar image", func(t *testing.T) {
		out, err := exec.Command(bin, "--cert-dir", t.TempDir()).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--sidecar-image is required") {
			t.Errorf("err %v, output %q: want a failure naming --sidecar-image", err, out)
		}
	})
	t.Run("bad default", func(t *testing.T) {
		out, err := exec.Command(bin, "--sidecar-image", "x:1", "--default-interval", "fast").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "-default-interval") {
			t.Errorf("err %v, output %q: want a failure naming --default-interval", err, out)
		}
	})

	t.Run("serves", func(t *testing.T) {
		ports := make([]int, 3)
		for i := range ports {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ports[i] = l.Addr().(*net.TCPAddr).Port
			l.Close()
		}
		var logs bytes.Buffer
		cmd := exec.Command(bin, "--sidecar-image", "ghcr.io/heapwatch/heapwatch-sidecar:test",
			"--cert-dir", t.TempDir(), "--self-signed", "localhost,127.0.0.1",
			"--webhook-host", "127.0.0.1", "--webhook-port", fmt.Sprint(ports[0]),
			"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", ports[1]),
			"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", ports[2]))
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		ready := false
		for deadline := time.Now().Add(20 * time.Second); !ready && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[2])); err == nil {
				resp.Body.Close()
				ready = resp.StatusCode == http.StatusOK
			}
		}
		if !ready {
			t.Fatalf("not ready within 20s; logs:\n%s", logs.String())
		}
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("exit after SIGTERM: %v; logs:\n%s", err, logs.String())
		}
		if !strings.Contains(logs.String(), `"msg":"starting"`) {
			t.Errorf("no JSON start line in the logs:\n%s", logs.String())
		}
	})
}
