// Command demo shows heapwatch's main job on one Linux machine: it runs the
// leaky example app and the sidecar as an emulated pod (a shared PID
// namespace, a memory cgroup per container, as in the end-to-end tests),
// waits for the kernel to OOM-kill the app, and shows the profile the sidecar
// stored before the kill with the heapwatch CLI. `make demo` runs it; it needs
// root and a cgroup v1 memory hierarchy.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/internal/podsim"
	"github.com/heapwatch/heapwatch/store/s3test"
)

type options struct {
	storage string // "file" or "s3"
	dumps   string // where captures (or the S3 server's data) go
	shape   string
	limit   int64
	timeout time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.storage, "storage", "file", "file: captures go to -dumps; s3: to a local S3-compatible server (versitygw) keeping its data in -dumps/s3")
	flag.StringVar(&o.dumps, "dumps", "heapwatch-dumps", "directory for the captures")
	flag.StringVar(&o.shape, "shape", "doubling", "leak shape of the example app: linear, doubling, burst or jump")
	flag.Int64Var(&o.limit, "limit", 130<<20, "the app container's memory limit in bytes")
	flag.DurationVar(&o.timeout, "timeout", 3*time.Minute, "give up after this long")
	flag.Parse()
	// Ctrl-C cancels the context; run's deferred cleanup removes the pod's
	// cgroups and processes before we exit.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, out io.Writer) (err error) {
	if err := podsim.Supported(); err != nil {
		return fmt.Errorf("the demo runs real cgroups and a real OOM kill, which this machine cannot: %w\n"+
			"run it as root on Linux with a cgroup v1 memory hierarchy (/sys/fs/cgroup/memory)", err)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	dumps, err := filepath.Abs(o.dumps)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "heapwatch-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	started := time.Now()
	say(out, "building the sidecar, the heapwatch CLI and the leaky example app")
	bin := filepath.Join(work, "bin")
	if err := goBuild(ctx, bin, "cmd/sidecar", "cmd/heapwatch", "examples/leaky"); err != nil {
		return err
	}

	storageURL, env, stopStorage, err := startStorage(o.storage, dumps, work)
	if err != nil {
		return err
	}
	defer stopStorage()
	say(out, "captures go to %s", storageURL)

	// The sidecar's JSON log is shown only when something goes wrong.
	sidecarLog, err := os.Create(filepath.Join(work, "sidecar.log"))
	if err != nil {
		return err
	}
	defer sidecarLog.Close()
	defer func() {
		if err != nil {
			b, _ := os.ReadFile(sidecarLog.Name())
			fmt.Fprintf(out, "==> the sidecar's log:\n%s", b)
		}
	}()
	sidecarEnv := append([]string{"HEAPWATCH_STORAGE=" + storageURL, "POD_NAME=leaky-demo", "POD_NAMESPACE=demo",
		"NODE_NAME=" + hostname()}, env...)
	pod, err := podsim.Start(ctx, podsim.Spec{Name: "heapwatch-demo", Containers: []podsim.ContainerSpec{
		{Name: "heapwatch", Argv: []string{filepath.Join(bin, "sidecar"), "--spool-dir", filepath.Join(work, "spool"),
			"--metrics-addr", "127.0.0.1:0"}, Env: sidecarEnv, MemoryLimit: 128 << 20,
			Stdout: sidecarLog, Stderr: sidecarLog},
		{Name: "app", Argv: []string{filepath.Join(bin, "leaky"), "-addr", "127.0.0.1:0", "-shape", o.shape},
			MemoryLimit: o.limit},
	}})
	if err != nil {
		return err
	}
	defer pod.Close()
	app := pod.Container("app")
	say(out, "pod started: container app (leaky, shape %s, memory limit %d MiB) and the heapwatch sidecar", o.shape, o.limit>>20)

	code, err := app.Wait(ctx)
	if err != nil {
		return fmt.Errorf("waiting for the app to be OOM-killed: %w", err)
	}
	kills, err := app.OOMKills()
	if err != nil {
		return err
	}
	if kills == 0 {
		return fmt.Errorf("the app exited with code %d without an OOM kill", code)
	}
	say(out, "the kernel OOM-killed the app: exit code %d, oom_kill %d in memory.oom_control", code, kills)

	heapwatch := func(stdout, stderr io.Writer, args ...string) error {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "heapwatch"), append([]string{"--storage", storageURL}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = stdout, stderr
		return cmd.Run()
	}
	final, err := waitFinal(ctx, heapwatch, started)
	if err != nil {
		return err
	}
	say(out, "the sidecar stored the last profile before the kill: %s (%s, %s)", final.ID, final.Trigger, final.Reason)

	cli := func(args ...string) error {
		say(out, "heapwatch %s", strings.Join(args, " "))
		return heapwatch(out, out, args...)
	}
	if err := cli("ls", "--namespace", "demo"); err != nil {
		return fmt.Errorf("heapwatch ls: %w", err)
	}
	if err := cli("top", final.ID); err != nil {
		return fmt.Errorf("heapwatch top: %w", err)
	}
	say(out, "open it in the pprof web UI with:")
	if o.storage == "file" {
		fmt.Fprintf(out, "  go tool pprof -http=localhost:8080 %s\n", filepath.Join(dumps, filepath.FromSlash(final.Name().ProfileKey("heap"))))
		fmt.Fprintf(out, "  # or: go run ./cmd/heapwatch --storage %s open %s\n", storageURL, final.ID)
	} else {
		fmt.Fprintf(out, "  go run ./cmd/heapwatch --storage '%s' open %s   # while the demo's S3 server runs\n", storageURL, final.ID)
		fmt.Fprintf(out, "  (the server stopped with the demo; its data stays in %s)\n", filepath.Join(dumps, "s3"))
	}
	return nil
}

func say(out io.Writer, format string, args ...any) {
	fmt.Fprintf(out, "==> "+format+"\n", args...)
}

// goBuild builds the module's packages into dir; it runs from any directory
// of the module (make demo runs at the top, the test in examples/demo).
func goBuild(ctx context.Context, dir string, pkgs ...string) error {
	args := []string{"build", "-o", dir + "/"}
	for _, p := range pkgs {
		args = append(args, "github.com/heapwatch/heapwatch/"+p)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, b)
	}
	return nil
}

// startStorage returns the storage URL, the environment the sidecar and CLI
// need to reach it, and a function that stops it.
func startStorage(kind, dumps, work string) (string, []string, func(), error) {
	switch kind {
	case "file":
		return "file://" + dumps, nil, func() {}, nil
	case "s3":
		bin, err := s3test.FindBinary()
		if err != nil {
			return "", nil, nil, fmt.Errorf("building the local S3 server: %w", err)
		}
		// A fresh bucket each run: the server's data is the demo's own.
		data := filepath.Join(dumps, "s3")
		if err := os.RemoveAll(data); err != nil {
			return "", nil, nil, err
		}
		if err := os.MkdirAll(data, 0o750); err != nil {
			return "", nil, nil, err
		}
		srv, err := s3test.Run(bin, data, filepath.Join(work, "versitygw.log"))
		if err != nil {
			return "", nil, nil, fmt.Errorf("starting the local S3 server: %w", err)
		}
		return srv.URL("demo"), srv.Env(), srv.Stop, nil
	}
	return "", nil, nil, fmt.Errorf("-storage %q: want file or s3", kind)
}

// waitFinal asks the heapwatch CLI until it lists the capture the sidecar
// marked final for this run's kill (the storage may hold earlier runs').
func waitFinal(ctx context.Context, heapwatch func(stdout, stderr io.Writer, args ...string) error, since time.Time) (*capture.Metadata, error) {
	for {
		var listing bytes.Buffer
		// Quiet while polling: "no captures" is expected at first.
		if err := heapwatch(&listing, io.Discard, "ls", "--namespace", "demo", "--pod", "leaky-demo", "--output", "json"); err != nil {
			return nil, fmt.Errorf("heapwatch ls: %w", err)
		}
		var rows []struct{ Metadata *capture.Metadata }
		if err := json.Unmarshal(listing.Bytes(), &rows); err != nil {
			return nil, fmt.Errorf("heapwatch ls --output json: %w", err)
		}
		for _, r := range rows {
			if m := r.Metadata; m != nil && m.Final && !m.CapturedAt.Before(since) {
				return m, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no capture marked final before the kill: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
