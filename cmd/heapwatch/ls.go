package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/capture/catalog"
)

const lsHelp = `Lists captures, newest first: time, capture ID, trigger, memory usage against the
limit, whether it is the final capture before an OOM kill, and stored size.
--namespace, --pod and --container narrow the listing to that part of the storage;
--node and --daemon list the captures the node agent took of host daemons
(containerd, the kubelet, ...): _node/<node>/<daemon>/<time>-<trigger>. A daemon's
series (baseline, then each growth step) lists newest first: 'heapwatch diff' of its
oldest and newest capture shows what grew.`

// defaultLimit keeps a listing of a busy bucket to what fits on a screen; each
// row costs one metadata download.
const defaultLimit = 50

// captureJSON is one capture in `ls --output json`: what the listing knows
// plus the stored metadata as is.
type captureJSON struct {
	ID            string            `json:"id"`
	Namespace     string            `json:"namespace"`
	Pod           string            `json:"pod"`
	Container     string            `json:"container"`
	Node          string            `json:"node,omitempty"`   // a host daemon's capture
	Daemon        string            `json:"daemon,omitempty"` // with node; namespace, pod and container are empty
	Time          time.Time         `json:"time"`
	Trigger       string            `json:"trigger"`
	UsagePercent  float64           `json:"usagePercent,omitempty"`
	SizeBytes     int64             `json:"sizeBytes"`
	Profiles      []string          `json:"profiles"`
	MetadataKey   string            `json:"metadataKey"`
	MetadataError string            `json:"metadataError,omitempty"`
	Metadata      *capture.Metadata `json:"metadata,omitempty"`
	Objects       []objectJSON      `json:"objects"`
}

type objectJSON struct {
	Key  string `json:"key"`
	Size int64  `json:"bytes"`
}

// lsOptions are the flags of ls.
type lsOptions struct {
	filter
	sinceArg string
	limit    int
	quiet    bool
}

func (a *app) lsCommand() *cobra.Command {
	var o lsOptions
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "captures, newest first",
		Long:    lsHelp,
		Args:    argCount(0, 0),
		RunE:    func(cmd *cobra.Command, _ []string) error { return a.ls(cmd.Context(), o) },
	}
	fs := cmd.Flags()
	// -n/--namespace is the same flag as explain's (and kubectl's).
	fs.StringVarP(&o.namespace, "namespace", "n", "", "only this namespace")
	fs.StringVar(&o.pod, "pod", "", "only this pod")
	fs.StringVarP(&o.container, "container", "c", "", "only this container")
	fs.StringVar(&o.node, "node", "", "only host daemons' captures of this node (the node agent's)")
	fs.StringVar(&o.daemon, "daemon", "", "only captures of this host daemon (e.g. containerd, kubelet)")
	fs.StringVar(&o.sinceArg, "since", "", "only captures newer than this (e.g. 30m, 2h, 7d)")
	fs.IntVar(&o.limit, "limit", defaultLimit, "show at most this many captures, newest first; 0 for all")
	fs.BoolVarP(&o.quiet, "quiet", "q", false, "print capture IDs only (for scripts)")
	for _, name := range []string{"namespace", "pod", "container", "node", "daemon", "since", "limit"} {
		_ = cmd.RegisterFlagCompletionFunc(name, cobra.NoFileCompletions)
	}
	return cmd
}

func (a *app) ls(ctx context.Context, o lsOptions) error {
	f := o.filter
	if err := f.check(); err != nil {
		return err
	}
	if o.sinceArg != "" {
		d, err := parseSince(o.sinceArg)
		if err != nil {
			return fmt.Errorf("%w: --since: %w", errUsage, err)
		}
		f.since = a.now().Add(-d)
	}
	if o.limit < 0 {
		return fmt.Errorf("%w: --limit %d: use 0 for all or a positive number", errUsage, o.limit)
	}
	st, err := a.openStore(ctx)
	if err != nil {
		return err
	}
	entries, err := catalog.Scan(ctx, st, f.prefix(), f.match)
	if err != nil {
		return err
	}
	total := len(entries)
	if o.limit > 0 && total > o.limit {
		entries = entries[:o.limit]
	}
	if len(entries) == 0 {
		if a.jsonOutput() {
			fmt.Fprintln(a.stdout, "[]")
		}
		fmt.Fprintf(a.stderr, "no captures in %s%s\n", st, describeFilter(f, o.sinceArg))
		return nil
	}
	if o.quiet {
		for _, e := range entries {
			fmt.Fprintln(a.stdout, e.ID)
		}
		return nil
	}
	if err := catalog.LoadMetadata(ctx, st, entries); err != nil {
		return err
	}
	for _, e := range entries {
		if e.MetaErr != nil {
			fmt.Fprintf(a.stderr, "warning: %s: unreadable metadata: %v\n", e.MetadataKey(), e.MetaErr)
		}
	}
	if a.jsonOutput() {
		out := make([]captureJSON, 0, len(entries))
		for _, e := range entries {
			out = append(out, toJSON(e))
		}
		if err := writeJSON(a.stdout, out); err != nil {
			return err
		}
	} else {
		a.table(entries)
	}
	if len(entries) < total {
		fmt.Fprintf(a.stderr, "showing the newest %d of %d captures; --limit 0 shows all\n", len(entries), total)
	}
	return nil
}

func (a *app) table(entries []*entry) {
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME (UTC)\tCAPTURE\tTRIGGER\tUSAGE / LIMIT\tOOM\tSIZE")
	for _, e := range entries {
		usage, oom := "?", ""
		if m := e.Meta; m != nil {
			usage = usageString(m.Memory)
			if m.Final {
				oom = "FINAL"
				if m.OOMKilledAt != nil {
					oom += " (killed " + m.OOMKilledAt.UTC().Format("15:04:05") + ")"
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Name.Time.UTC().Format("2006-01-02 15:04:05.000"),
			e.ID, e.Name.Trigger, usage, oom, bytesString(e.Size()))
	}
	tw.Flush()
}

func usageString(m capture.Memory) string {
	if m.LimitBytes == 0 {
		return bytesString(int64(m.UsageBytes)) + " / no limit"
	}
	return fmt.Sprintf("%s / %s (%.0f%%)", bytesString(int64(m.UsageBytes)), bytesString(int64(m.LimitBytes)),
		percent(m.UsageBytes, m.LimitBytes))
}

func percent(part, whole uint64) float64 {
	if whole == 0 {
		return 0
	}
	return 100 * float64(part) / float64(whole)
}

func toJSON(e *entry) captureJSON {
	c := captureJSON{
		ID: e.ID, Namespace: e.Name.Namespace, Pod: e.Name.Pod, Container: e.Name.Container,
		Time: e.Name.Time.UTC(), Trigger: e.Name.Trigger, SizeBytes: e.Size(),
		Profiles: e.Profiles(), MetadataKey: e.MetadataKey(), Metadata: e.Meta,
	}
	if node, daemon, ok := daemonOf(e.Name); ok {
		c.Namespace, c.Pod, c.Container, c.Node, c.Daemon = "", "", "", node, daemon
	}
	for _, o := range e.Objects {
		c.Objects = append(c.Objects, objectJSON{Key: o.Key, Size: o.Size})
	}
	if m := e.Meta; m != nil {
		c.UsagePercent = percent(m.Memory.UsageBytes, m.Memory.LimitBytes)
	}
	if e.MetaErr != nil {
		c.MetadataError = e.MetaErr.Error()
	}
	return c
}

func describeFilter(f filter, since string) string {
	var parts []string
	for _, p := range []struct{ name, v string }{{"namespace", f.namespace}, {"pod", f.pod}, {"container", f.container},
		{"node", f.node}, {"daemon", f.daemon}, {"since", since}} {
		if p.v != "" {
			parts = append(parts, p.name+"="+p.v)
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " matching " + strings.Join(parts, " ")
}

// parseSince reads a Go duration, also in days ("7d").
func parseSince(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a duration like 30m, 2h or 7d", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a duration like 30m, 2h or 7d", s)
	}
	return d, nil
}

// bytesString renders a size in binary units: 512 B, 1.5 KiB, 98.0 MiB.
func bytesString(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	v, exp := float64(n), 0
	for v >= unit*unit || v <= -unit*unit {
		v /= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", v/unit, "KMGTPE"[exp])
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
