package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/capture/catalog"
	"github.com/heapwatch/heapwatch/internal/profstat"
	"github.com/heapwatch/heapwatch/store"
)

const explainHelp = `Explains the last OOM kill of a container in one screen: the kill and the
final capture before it, the memory timeline of the minute before, where the
memory was (Go heap vs the cgroup's anon/file/shmem/kernel) with a verdict,
what grew since the earliest capture of the same container run, and the
commands to open the flame graph and the diff. --plot writes the timeline as
an SVG image. With -n/--namespace alone it lists the namespace's recent OOM
kills, read from the API server with your kubeconfig as kubectl does
(--kubeconfig, --context and the other kubectl flags; in a pod, its service
account), next to the capture each has.`

// explainReport is what explain prints, and its --output json.
type explainReport struct {
	Capture         string          `json:"capture"`
	Final           bool            `json:"finalBeforeOOMKill"`
	KilledAt        *time.Time      `json:"killedAt,omitempty"`
	Restarts        *int32          `json:"restarts,omitempty"`
	CapturedAt      time.Time       `json:"capturedAt"`
	LeadTimeSeconds float64         `json:"leadTimeSeconds,omitempty"`
	Memory          capture.Memory  `json:"memory"`
	Parts           memoryParts     `json:"memoryParts"`
	GoHeapInuse     int64           `json:"goHeapInuseBytes"`
	Verdict         string          `json:"verdict"`
	Baseline        string          `json:"baseline,omitempty"`
	Grew            []grown         `json:"grew"`
	Timeline        []capture.Point `json:"timeline"`
	Commands        []string        `json:"commands"`
}

// memoryParts is the cgroup's memory.stat split the way a person reads it.
type memoryParts struct {
	Anon   uint64 `json:"anonBytes"`
	File   uint64 `json:"fileBytes"`
	Shmem  uint64 `json:"shmemBytes"`
	Kernel uint64 `json:"kernelBytes"`
}

type grown struct {
	Function string `json:"function"`
	Bytes    int64  `json:"bytes"`
}

// explainOptions are the flags of explain.
type explainOptions struct {
	plot  string
	nodes int
	dir   string
	kube  kubeFlags
}

func (a *app) explainCommand() *cobra.Command {
	o := explainOptions{kube: newKubeFlags()}
	cmd := &cobra.Command{
		Use:               "explain <namespace>/<pod>[/<container>] | <capture> | -n <namespace> [<pod>[/<container>]]",
		Short:             "the last OOM kill in one screen: timeline, verdict, what grew",
		Long:              explainHelp,
		Args:              argCount(0, 1),
		ValidArgsFunction: a.completeCaptures(1),
		RunE:              func(cmd *cobra.Command, args []string) error { return a.explain(cmd.Context(), args, o) },
	}
	fs := cmd.Flags()
	fs.StringVar(&o.plot, "plot", "", "write the memory timeline to this SVG file")
	fs.IntVar(&o.nodes, "nodes", 5, "number of functions in what grew")
	fs.StringVarP(&o.dir, "dir", "o", "", "directory to save the profiles to (default the user cache directory)")
	_ = cmd.MarkFlagFilename("plot", "svg")
	_ = cmd.MarkFlagDirname("dir")
	_ = cmd.RegisterFlagCompletionFunc("nodes", cobra.NoFileCompletions)
	o.kube.addFlags(fs)
	return cmd
}

func (a *app) explain(ctx context.Context, pos []string, o explainOptions) error {
	ns := o.kube.namespace()
	switch {
	case len(pos) == 0 && ns == "":
		return fmt.Errorf("%w: explain takes a pod or capture, or -n <namespace> to list its OOM kills", errUsage)
	case len(pos) == 0:
		return a.listKills(ctx, o.kube)
	case ns != "":
		pos[0] = ns + "/" + pos[0]
	}
	if o.plot != "" && !strings.EqualFold(filepath.Ext(o.plot), ".svg") {
		return fmt.Errorf("%w: --plot %q: only SVG is written (name the file .svg)", errUsage, o.plot)
	}
	st, err := a.openStore(ctx)
	if err != nil {
		return err
	}
	final, base, err := explainTargets(ctx, st, pos[0])
	if err != nil {
		return err
	}
	r, err := a.buildReport(ctx, st, final, base, o.dir, o.nodes)
	if err != nil {
		return err
	}
	if o.plot != "" {
		if err := os.WriteFile(o.plot, []byte(timelineSVG(r.Timeline, r.KilledAt)), 0o644); err != nil {
			return err
		}
	}
	if r.KilledAt != nil {
		r.Restarts = o.kube.restarts(ctx, final)
	}
	if a.jsonOutput() {
		return writeJSON(a.stdout, r)
	}
	printReport(a.stdout, r)
	return nil
}

// explainTargets finds the capture to explain (the newest final one of the
// container, else its newest) and the earliest capture of the same
// container run to diff it against (nil when there is none).
func explainTargets(ctx context.Context, st store.Store, arg string) (*entry, *entry, error) {
	arg = strings.TrimSuffix(arg, "/")
	var target *entry
	if parts := strings.Split(arg, "/"); len(parts) == 2 || len(parts) == 3 {
		if err := checkCaptureArg(arg); err != nil {
			return nil, nil, err
		}
		parts = append(parts, "")
		entries, err := catalog.Scan(ctx, st, capture.Prefix(parts[0], parts[1], parts[2]), func(capture.Name) bool { return true })
		if err != nil {
			return nil, nil, err
		}
		if len(entries) == 0 {
			return nil, nil, fmt.Errorf("%w under %s in %s; 'heapwatch ls' lists the captures", errNoCapture, arg, st)
		}
		if err := catalog.LoadMetadata(ctx, st, entries); err != nil {
			return nil, nil, err
		}
		target = entries[0]
		for _, e := range entries {
			if e.Meta != nil && e.Meta.Final {
				target = e
				break
			}
		}
	} else {
		e, err := resolve(ctx, st, arg)
		if err != nil {
			return nil, nil, err
		}
		target = e
	}
	if target.Meta == nil {
		if err := catalog.LoadMetadata(ctx, st, []*entry{target}); err != nil {
			return nil, nil, err
		}
		if target.MetaErr != nil {
			return nil, nil, fmt.Errorf("%s: unreadable metadata: %w", target.MetadataKey(), target.MetaErr)
		}
	}
	n := target.Name
	same, err := catalog.Scan(ctx, st, capture.Prefix(n.Namespace, n.Pod, n.Container), func(c capture.Name) bool {
		return c.Time.Before(n.Time)
	})
	if err != nil {
		return nil, nil, err
	}
	if err := catalog.LoadMetadata(ctx, st, same); err != nil {
		return nil, nil, err
	}
	// Newest first: walk back until the previous run's final capture.
	var base *entry
	for _, e := range same {
		m := e.Meta
		if m == nil || (m.PodUID != target.Meta.PodUID) || m.Final {
			break
		}
		base = e
	}
	return target, base, nil
}

func (a *app) buildReport(ctx context.Context, st store.Store, final, base *entry, dir string, nodes int) (*explainReport, error) {
	m := final.Meta
	r := &explainReport{Capture: final.ID, Final: m.Final, KilledAt: m.OOMKilledAt, CapturedAt: m.CapturedAt,
		Memory: m.Memory, Parts: partsOf(m), Timeline: m.Timeline, Grew: []grown{}}
	if m.OOMKilledAt != nil {
		r.LeadTimeSeconds = m.OOMKilledAt.Sub(m.CapturedAt).Seconds()
	}
	if r.Timeline == nil {
		r.Timeline = []capture.Point{}
	}
	stats, total, err := a.heapStats(ctx, st, final, dir)
	if err != nil {
		return nil, err
	}
	r.GoHeapInuse = total
	r.Verdict = verdict(m.Memory.WorkingSetBytes, total, r.Parts)
	if base != nil {
		r.Baseline = base.ID
		bstats, _, err := a.heapStats(ctx, st, base, dir)
		if err != nil {
			return nil, err
		}
		for name, b := range bstats {
			if s := stats[name]; s != nil {
				s.Flat -= b.Flat
			}
		}
	}
	list := profstat.Sorted(stats)
	slices.SortStableFunc(list, func(x, y *profstat.Func) int { return cmp.Compare(y.Flat, x.Flat) })
	for _, f := range list {
		if len(r.Grew) == nodes || f.Flat <= 0 {
			break
		}
		r.Grew = append(r.Grew, grown{Function: f.Name, Bytes: f.Flat})
	}
	storage := ""
	if a.storage != "" {
		storage = " --storage '" + a.storage + "'"
	}
	r.Commands = []string{"heapwatch" + storage + " open " + final.ID}
	if base != nil {
		r.Commands = append(r.Commands, "heapwatch"+storage+" diff "+base.ID+" "+final.ID+" --http localhost:")
	}
	return r, nil
}

// heapStats sums the in-use heap of a capture's heap profile per function.
func (a *app) heapStats(ctx context.Context, st store.Store, e *entry, dir string) (map[string]*profstat.Func, int64, error) {
	file, _, err := a.fetchProfile(ctx, st, e.ID, "heap", dir)
	if err != nil {
		return nil, 0, err
	}
	p, err := readProfile(file)
	if err != nil {
		return nil, 0, err
	}
	idx, err := p.SampleIndexByName("inuse_space")
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", file, err)
	}
	stats, total := profstat.Aggregate(p, idx)
	return stats, total, nil
}

// partsOf reads memory.stat in either cgroup version: v2 names anon, file,
// shmem and kernel; v1 names rss and cache (shmem is inside cache) and has
// no kernel total, which is then what usage holds beyond anon and file.
func partsOf(m *capture.Metadata) memoryParts {
	s := m.MemoryStat
	first := func(keys ...string) uint64 {
		for _, k := range keys {
			if v, ok := s[k]; ok {
				return v
			}
		}
		return 0
	}
	p := memoryParts{Anon: first("anon", "total_rss", "rss"), File: first("file", "total_cache", "cache"),
		Shmem: first("shmem", "total_shmem")}
	if k, ok := s["kernel"]; ok {
		p.Kernel = k
	} else if used := p.Anon + p.File; m.Memory.UsageBytes > used {
		p.Kernel = m.Memory.UsageBytes - used
	}
	return p
}

// verdict says in one line where the working set was.
func verdict(workingSet uint64, heap int64, p memoryParts) string {
	if workingSet == 0 {
		return "no working set recorded"
	}
	if p.Shmem > uint64(max(heap, 0)) && p.Shmem*4 >= workingSet {
		return fmt.Sprintf("%s is shmem (%.0f %% of the working set): a memory-backed emptyDir or /dev/shm, not the Go heap",
			bytesString(int64(p.Shmem)), percent(p.Shmem, workingSet))
	}
	return fmt.Sprintf("the Go heap explains %.0f %% of the working set", percent(uint64(max(heap, 0)), workingSet))
}

func printReport(w io.Writer, r *explainReport) {
	fmt.Fprintf(w, "Capture   %s", r.Capture)
	if r.Final {
		fmt.Fprint(w, " (final before the OOM kill)")
	}
	fmt.Fprintln(w)
	if r.KilledAt != nil {
		fmt.Fprintf(w, "Kill      %s, %s after the capture", r.KilledAt.UTC().Format("2006-01-02 15:04:05.000 UTC"),
			time.Duration(r.LeadTimeSeconds*float64(time.Second)).Round(time.Millisecond))
		if r.Restarts != nil {
			fmt.Fprintf(w, "; %d restarts", *r.Restarts)
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintln(w, "Kill      none recorded after this capture")
	}
	fmt.Fprintf(w, "Memory    working set %s, usage %s\n", bytesString(int64(r.Memory.WorkingSetBytes)), usageString(r.Memory))
	fmt.Fprintf(w, "          anon %s, file %s, shmem %s, kernel %s; Go heap in use %s\n", bytesString(int64(r.Parts.Anon)),
		bytesString(int64(r.Parts.File)), bytesString(int64(r.Parts.Shmem)), bytesString(int64(r.Parts.Kernel)), bytesString(r.GoHeapInuse))
	fmt.Fprintf(w, "Verdict   %s\n\n", r.Verdict)
	printTimeline(w, r.Timeline, r.Memory.LimitBytes)
	if r.Baseline != "" {
		fmt.Fprintf(w, "\nWhat grew since %s (the earliest capture of this container run)\n", r.Baseline)
	} else {
		fmt.Fprintln(w, "\nTop in-use functions (no earlier capture of this container run)")
	}
	sign := map[bool]string{true: "+"}[r.Baseline != ""]
	for _, g := range r.Grew {
		fmt.Fprintf(w, "  %12s  %s\n", sign+bytesString(g.Bytes), g.Function)
	}
	fmt.Fprintln(w, "\nCommands")
	for _, c := range r.Commands {
		fmt.Fprintln(w, "  "+c)
	}
}
