package main

import (
	"cmp"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"text/tabwriter"

	"github.com/google/pprof/profile"
)

// funcStat is one function's share of a profile: flat in the function
// itself, cum with its callees.
type funcStat struct {
	name      string
	flat, cum int64
}

// nativeTop prints a report like 'go tool pprof -top' without a Go
// toolchain: functions by flat value (of file minus base when diffing).
func nativeTop(w io.Writer, title, file, base, sampleIndex string, nodes int) error {
	p, err := readProfile(file)
	if err != nil {
		return err
	}
	idx, err := p.SampleIndexByName(sampleIndex)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	st := p.SampleType[idx]
	stats, total := aggregate(p, idx)
	pctBase := total
	if base != "" {
		bp, err := readProfile(base)
		if err != nil {
			return err
		}
		bidx, err := bp.SampleIndexByName(st.Type)
		if err != nil {
			return fmt.Errorf("%s: %w", base, err)
		}
		bstats, btotal := aggregate(bp, bidx)
		for name, b := range bstats {
			s := stats[name]
			if s == nil {
				s = &funcStat{name: name}
				stats[name] = s
			}
			s.flat -= b.flat
			s.cum -= b.cum
		}
		fmt.Fprintf(w, "%s\nType: %s\nBase total: %s, new total: %s, change: %s\n", title, st.Type,
			format(btotal, st.Unit), format(total, st.Unit), format(total-btotal, st.Unit))
		total -= btotal
		// Percentages of a diff are of the base, as in pprof.
		pctBase = btotal
	} else {
		fmt.Fprintf(w, "%s\nType: %s\nTotal: %s\n", title, st.Type, format(total, st.Unit))
	}

	list := make([]*funcStat, 0, len(stats))
	for _, s := range stats {
		if s.flat != 0 || s.cum != 0 {
			list = append(list, s)
		}
	}
	slices.SortFunc(list, func(a, b *funcStat) int {
		return cmp.Or(cmp.Compare(abs(b.flat), abs(a.flat)), cmp.Compare(abs(b.cum), abs(a.cum)), cmp.Compare(a.name, b.name))
	})
	shown := list[:min(nodes, len(list))]
	fmt.Fprintf(w, "Showing top %d of %d functions\n", len(shown), len(list))
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "flat\tflat%\tsum%\tcum\tcum%\t")
	var sum int64
	for _, s := range shown {
		sum += s.flat
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t %s\n", format(s.flat, st.Unit), pct(s.flat, pctBase),
			pct(sum, pctBase), format(s.cum, st.Unit), pct(s.cum, pctBase), s.name)
	}
	return tw.Flush()
}

func readProfile(file string) (*profile.Profile, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s is not a pprof profile: %w", file, err)
	}
	return p, nil
}

// aggregate sums one sample value per function. The first line of the first
// location is the innermost frame (inlined frames come first), so it gets
// the flat value; every function on the stack gets the cumulative value once.
func aggregate(p *profile.Profile, idx int) (map[string]*funcStat, int64) {
	stats := map[string]*funcStat{}
	get := func(name string) *funcStat {
		s := stats[name]
		if s == nil {
			s = &funcStat{name: name}
			stats[name] = s
		}
		return s
	}
	var total int64
	for _, smp := range p.Sample {
		v := smp.Value[idx]
		total += v
		seen := map[string]bool{}
		for i, loc := range smp.Location {
			for j, name := range frameNames(loc) {
				if i == 0 && j == 0 {
					get(name).flat += v
				}
				if !seen[name] {
					seen[name] = true
					get(name).cum += v
				}
			}
		}
	}
	return stats, total
}

func frameNames(loc *profile.Location) []string {
	var names []string
	for _, l := range loc.Line {
		if l.Function != nil && l.Function.Name != "" {
			names = append(names, l.Function.Name)
		}
	}
	if len(names) == 0 {
		names = append(names, "0x"+strconv.FormatUint(loc.Address, 16))
	}
	return names
}

func format(v int64, unit string) string {
	if unit == "bytes" {
		return bytesString(v)
	}
	return strconv.FormatInt(v, 10)
}

func pct(v, total int64) string {
	if total == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f%%", 100*float64(v)/float64(total))
}

func abs(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}
