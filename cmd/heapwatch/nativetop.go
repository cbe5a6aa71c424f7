package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/google/pprof/profile"

	"github.com/heapwatch/heapwatch/internal/profstat"
)

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
	stats, total := profstat.Aggregate(p, idx)
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
		bstats, btotal := profstat.Aggregate(bp, bidx)
		for name, b := range bstats {
			s := stats[name]
			if s == nil {
				s = &profstat.Func{Name: name}
				stats[name] = s
			}
			s.Flat -= b.Flat
			s.Cum -= b.Cum
		}
		fmt.Fprintf(w, "%s\nType: %s\nBase total: %s, new total: %s, change: %s\n", title, st.Type,
			format(btotal, st.Unit), format(total, st.Unit), format(total-btotal, st.Unit))
		total -= btotal
		// Percentages of a diff are of the base, as in pprof.
		pctBase = btotal
	} else {
		fmt.Fprintf(w, "%s\nType: %s\nTotal: %s\n", title, st.Type, format(total, st.Unit))
	}

	list := profstat.Sorted(stats)
	shown := list[:min(nodes, len(list))]
	fmt.Fprintf(w, "Showing top %d of %d functions\n", len(shown), len(list))
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "flat\tflat%\tsum%\tcum\tcum%\t")
	var sum int64
	for _, s := range shown {
		sum += s.Flat
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t %s\n", format(s.Flat, st.Unit), pct(s.Flat, pctBase),
			pct(sum, pctBase), format(s.Cum, st.Unit), pct(s.Cum, pctBase), s.Name)
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
