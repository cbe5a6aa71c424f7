package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/heapwatch/heapwatch/store"
)

const (
	topHelp = `Prints the functions holding the most memory in one profile of a capture (default
the heap profile, in-use bytes) with 'go tool pprof -top', or with the built-in
report when --native is given or go is not on PATH.`
	openHelp = `Opens one profile of a capture (default heap) in the pprof web UI
('go tool pprof -http'); Ctrl-C stops it.`
	diffHelp = `Shows what grew between two captures, typically two steps of a threshold
ladder: 'go tool pprof -top -diff_base older newer', or the web UI with --http.`
)

// pprofOptions are the flags of top, open and diff.
type pprofOptions struct {
	native      bool
	sampleIndex string
	nodes       int
	dir         string
	http        string
	noBrowser   bool
}

func (o *pprofOptions) register(fs *pflag.FlagSet, cmd string) {
	fs.StringVar(&o.sampleIndex, "sample-index", "", "pprof sample index (default inuse_space for heap, alloc_space for allocs)")
	fs.StringVarP(&o.dir, "dir", "o", "", "directory to save the profiles to (default the user cache directory)")
	if cmd != "open" {
		fs.BoolVar(&o.native, "native", false, "use the built-in top report instead of 'go tool pprof'")
		fs.IntVar(&o.nodes, "nodes", 20, "number of functions to show")
	}
	if cmd != "top" {
		def := "localhost:" // pprof picks a free port
		if cmd == "diff" {
			def = "" // diff prints a top report unless --http is given
		}
		fs.StringVar(&o.http, "http", def, "serve the pprof web UI on this address")
		fs.BoolVar(&o.noBrowser, "no-browser", false, "do not open a browser for the web UI")
	}
}

// sampleIndexFor is the sample index shown when none is asked for: memory
// held now for heap (the leak), memory allocated for allocs.
func (o *pprofOptions) sampleIndexFor(profile string) string {
	switch {
	case o.sampleIndex != "":
		return o.sampleIndex
	case profile == "heap":
		return "inuse_space"
	case profile == "allocs":
		return "alloc_space"
	}
	return ""
}

// fetchProfile resolves a capture and downloads one of its profiles.
func (a *app) fetchProfile(ctx context.Context, st store.Store, arg, profile, dir string) (string, *entry, error) {
	e, err := resolve(ctx, st, arg)
	if err != nil {
		return "", nil, err
	}
	o, err := e.ProfileObject(profile)
	if err != nil {
		return "", nil, err
	}
	if dir == "" {
		dir = filepath.Join(cacheDir(), filepath.FromSlash(e.ID))
	}
	p, err := download(ctx, st, o, dir)
	return p, e, err
}

// cacheDir keeps downloaded profiles so open, top and diff on the same
// capture download it once.
func cacheDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "heapwatch")
}

func profileArg(pos []string, i int) string {
	if len(pos) > i {
		return pos[i]
	}
	return "heap"
}

// pprofCommands are top, open and diff: name, arguments, summary, help,
// and how many of the arguments are captures.
var pprofCommands = []struct {
	name, use, short, long string
	captures               int
}{
	{"top", "top <capture> [profile]", "the top functions of a profile (default heap, in-use bytes)", topHelp, 1},
	{"open", "open <capture> [profile]", "the pprof web UI on a profile", openHelp, 1},
	{"diff", "diff <older> <newer> [profile]", "what grew between two captures (pprof -diff_base)", diffHelp, 2},
}

// pprofCommand is top, open or diff: the first n arguments are captures,
// the optional next one names the profile.
func (a *app) pprofCommand(name, use, short, long string, n int) *cobra.Command {
	var o pprofOptions
	cmd := &cobra.Command{
		Use:               use,
		Short:             short,
		Long:              long,
		Args:              argCount(n, n+1),
		ValidArgsFunction: a.completeCaptures(n),
		RunE:              func(cmd *cobra.Command, args []string) error { return a.runPprof(cmd.Context(), args, n, o) },
	}
	o.register(cmd.Flags(), name)
	_ = cmd.MarkFlagDirname("dir")
	for _, f := range []string{"sample-index", "nodes", "http"} {
		if cmd.Flags().Lookup(f) != nil {
			_ = cmd.RegisterFlagCompletionFunc(f, cobra.NoFileCompletions)
		}
	}
	return cmd
}

// runPprof downloads the profile of each of the first n arguments and shows
// the last, against the first when there are two.
func (a *app) runPprof(ctx context.Context, pos []string, n int, o pprofOptions) error {
	st, err := a.openStore(ctx)
	if err != nil {
		return err
	}
	profile := profileArg(pos, n)
	var files, ids []string
	var times []time.Time
	for _, arg := range pos[:n] {
		file, e, err := a.fetchProfile(ctx, st, arg, profile, o.dir)
		if err != nil {
			return err
		}
		files, ids, times = append(files, file), append(ids, e.ID), append(times, e.Name.Time)
	}
	file, base := files[n-1], ""
	if n == 2 {
		base = files[0]
		if times[0].After(times[1]) {
			fmt.Fprintf(a.stderr, "note: %s was captured after %s; showing the change from the first to the second\n", ids[0], ids[1])
		}
	}
	saved := strings.Join(files, " and ")
	if o.http != "" {
		goBin, err := exec.LookPath("go")
		if err != nil {
			return fmt.Errorf("the pprof web UI needs Go ('go' is not on PATH); saved at %s", saved)
		}
		return a.pprof(ctx, goBin, file, base, profile, o)
	}
	goBin := a.goTool(o.native, saved)
	if goBin == "" {
		return nativeTop(a.stdout, strings.Join(ids, " -> "), file, base, o.sampleIndexFor(profile), o.nodes)
	}
	return a.pprof(ctx, goBin, file, base, profile, o)
}

// goTool returns the go command to run pprof with, or "" for the built-in
// report (asked for, or no Go installed: then say so once).
func (a *app) goTool(native bool, saved string) string {
	if native {
		return ""
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintf(a.stderr, "note: 'go' is not on PATH, using the built-in report; install Go for full pprof (saved at %s)\n", saved)
		return ""
	}
	return goBin
}

// pprof runs 'go tool pprof' on file (against base when diffing): the top
// report, or the web UI when o.http is set.
func (a *app) pprof(ctx context.Context, goBin, file, base, profile string, o pprofOptions) error {
	args := []string{"tool", "pprof"}
	if o.http != "" {
		addr := o.http
		if host, ok := strings.CutSuffix(addr, ":0"); ok {
			addr = host + ":" // pprof picks a free port for "host:" but would print ":0" as given
		}
		args = append(args, "-http="+addr)
		if o.noBrowser {
			args = append(args, "-no_browser")
		}
	} else {
		args = append(args, "-top", "-nodecount="+strconv.Itoa(o.nodes))
	}
	if si := o.sampleIndexFor(profile); si != "" {
		args = append(args, "-sample_index="+si)
	}
	if base != "" {
		args = append(args, "-diff_base="+base)
	}
	args = append(args, file)
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Stdout, cmd.Stderr = a.stdout, a.stderr
	// 'go tool' runs pprof as a child: give them a process group so that
	// cancelling (Ctrl-C) stops both.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if o.http != "" {
		fmt.Fprintf(a.stderr, "opening %s in the pprof web UI; Ctrl-C stops it\n", file)
	}
	err := cmd.Run()
	if ctx.Err() != nil && o.http != "" {
		return nil // the web UI ends with Ctrl-C
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return fmt.Errorf("go tool pprof failed (%w); the profile is saved at %s", exit, file)
	}
	return err
}
