package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/heapwatch/heapwatch/internal/watch"
)

func init() { flagOutput = io.Discard }

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// TestFlags: each flag lands in its field; defaults hold otherwise.
func TestFlags(t *testing.T) {
	for _, tt := range []struct {
		args  []string
		check func(config) any
		want  any
	}{
		{nil, func(c config) any { return c.NodeName }, "node-a"},
		{[]string{"--node-name", "n2"}, func(c config) any { return c.NodeName }, "n2"},
		{nil, func(c config) any { return c.Interval }, time.Second},
		{[]string{"--interval", "250ms"}, func(c config) any { return c.Interval }, 250 * time.Millisecond},
		{nil, func(c config) any { return c.Rescan }, 10 * time.Second},
		{[]string{"--pods-cgroup", "hw-x/kubepods"}, func(c config) any { return c.PodsCgroup }, "hw-x/kubepods"},
		{[]string{"--storage", "file:///tmp/x"}, func(c config) any { return c.Storage }, "file:///tmp/x"},
		{[]string{"--metrics-bind-address", "127.0.0.1:1"}, func(c config) any { return c.MetricsAddr }, "127.0.0.1:1"},
		{nil, func(c config) any { return c.GrowthStep }, Step{Ratio: 0.25}},
		{[]string{"--growth-step", "1GiB"}, func(c config) any { return c.GrowthStep }, Step{Bytes: 1 << 30}},
		{[]string{"--growth-step", "10%"}, func(c config) any { return c.GrowthStep }, Step{Ratio: 0.1}},
		{[]string{"--growth-step", "0"}, func(c config) any { return c.GrowthStep }, Step{}},
		{[]string{"--threshold-bytes", "2Gi"}, func(c config) any { return c.ThresholdBytes }, uint64(2 << 30)},
		{[]string{"--threshold-bytes", "1.5G"}, func(c config) any { return c.ThresholdBytes }, uint64(1.5e9)},
		{nil, func(c config) any { return c.Profiles }, []string{"heap", "goroutine"}},
		{[]string{"--profiles", "heap,allocs"}, func(c config) any { return c.Profiles }, []string{"heap", "allocs"}},
		{nil, func(c config) any { return names(c) }, []string{"containerd", "kubelet", "crio", "dockerd"}},
	} {
		c, err := parseFlags(tt.args, env(map[string]string{"NODE_NAME": "node-a"}))
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		if diff := cmp.Diff(tt.want, tt.check(c)); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tt.args, diff)
		}
	}
}

func names(c config) []string {
	var out []string
	for _, d := range c.Daemons {
		out = append(out, d.Name)
	}
	return out
}

// TestBadFlags: a bad value fails with an error naming the flag.
func TestBadFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--interval", "0s"}, "--interval"},
		{[]string{"--interval", "soon"}, "-interval"},
		{[]string{"--rescan", "0s"}, "--rescan"},
		{[]string{"--growth-step", "lots"}, "-growth-step"},
		{[]string{"--growth-step", "-5%"}, "-growth-step"},
		{[]string{"--threshold-bytes", "-1"}, "-threshold-bytes"},
		{[]string{"--threshold-bytes", "2 potatoes"}, "-threshold-bytes"},
		{[]string{"--storage", "ftp://x"}, "--storage"},
		{[]string{"--storage", "file://relative"}, "--storage"},
		{[]string{"--node-name", "a/b"}, "--node-name"},
		{[]string{"--profiles", "goroutine,heap"}, "-profiles"},
		{[]string{"--profiles", "cpu"}, "-profiles"},
		{[]string{"--cooldown", "-1s"}, "--cooldown"},
		{[]string{"--max-per-hour", "-1"}, "--max-per-hour"},
		{[]string{"--builtin-daemons=false"}, "no daemons"},
		{[]string{"--config", "/nonexistent/agent.yaml"}, "--config"},
		{[]string{"stray"}, "unexpected argument"},
	} {
		_, err := parseFlags(tt.args, env(map[string]string{"NODE_NAME": "n1"}))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: err %v, want one naming %q", tt.args, err, tt.want)
		}
	}
}

// TestConfigFile: the file's daemons replace built-ins of the same name
// and add the others, in order.
func TestConfigFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(f, []byte(`
daemons:
- name: containerd
  exe: containerd
  cgroup: /system.slice/containerd.service
  pprof: unix:///run/k8s/containerd-debug.sock
- name: vector
  cgroup: vector.service
  pprof: http://127.0.0.1:8686/debug/pprof
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := parseFlags([]string{"--config", f}, env(map[string]string{"NODE_NAME": "n1"}))
	if err != nil {
		t.Fatal(err)
	}
	kubelet := builtIn[1]
	kubelet.ServerName = "n1" // the kubelet's certificate names the node
	want := []daemonConfig{
		{DaemonSpec: watch.DaemonSpec{Name: "containerd", Exe: "containerd", Cgroup: "/system.slice/containerd.service"}, Pprof: "unix:///run/k8s/containerd-debug.sock"},
		kubelet, builtIn[2], builtIn[3],
		{DaemonSpec: watch.DaemonSpec{Name: "vector", Cgroup: "vector.service"}, Pprof: "http://127.0.0.1:8686/debug/pprof"},
	}
	if diff := cmp.Diff(want, c.Daemons); diff != "" {
		t.Errorf("daemons (-want +got):\n%s", diff)
	}
	c, err = parseFlags([]string{"--config", f, "--builtin-daemons=false"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"containerd", "vector"}, names(c)); diff != "" {
		t.Errorf("without built-ins (-want +got):\n%s", diff)
	}
}

// TestBadConfigFile: a bad file fails with an error naming the field.
func TestBadConfigFile(t *testing.T) {
	for _, tt := range []struct {
		yaml, want string
	}{
		{"daemons:\n- name: x\n  exe: x\n  exec: y\n", `unknown field "exec"`},
		{"daemon:\n- name: x\n", `unknown field "daemon"`},
		{"daemons:\n- exe: x\n", "daemons[0].name: required"},
		{"daemons:\n- name: a/b\n  exe: x\n", "daemons[0].name"},
		{"daemons:\n- name: x\n  exe: x\n- name: x\n  exe: z\n", `daemons[1].name "x": listed twice`},
		{"daemons:\n- name: x\n", "exe or cgroup is required"},
		{"daemons:\n- name: x\n  exe: /usr/bin/x\n", "daemons[0].exe"},
		{"daemons:\n- name: x\n  cgroup: /\n", "daemons[0].cgroup"},
		{"daemons:\n- name: x\n  exe: x\n  pprof: tcp://1.2.3.4:5\n", "daemons[0].pprof"},
		{"daemons:\n- name: x\n  exe: x\n  pprof: unix://relative.sock\n", "daemons[0].pprof"},
		{"daemons:\n- name: x\n  exe: x\n  pprof: https:///debug/pprof\n", "daemons[0].pprof"},
		{"daemons:\n- name: x\n  exe: x\n  pprof: http://127.0.0.1:1/debug/pprof\n  bearerTokenFile: /t\n", "daemons[0].pprof: pprof: bad endpoint URL"},
		{"daemons:\n- name: x\n  exe: x\n  bearerTokenFile: /t\n", "need a pprof URL"},
		{"daemons:\n- name: x\n  exe: x\n  pprof: http://127.0.0.1:1/debug/pprof/heap\n", "daemons[0].pprof"},
		{"daemons: [", "yaml"},
	} {
		_, err := parseConfigFile([]byte(tt.yaml))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: err %v, want one containing %q", tt.yaml, err, tt.want)
		}
	}
}
