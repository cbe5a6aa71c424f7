// Package profstat sums a pprof profile per function, as 'go tool pprof
// -top' does, without a Go toolchain: the CLI's top and diff and the
// controller's "top in-use function" read profiles through it.
package profstat

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"

	"github.com/google/pprof/profile"
)

// Func is one function's share of a profile: Flat in the function itself,
// Cum with its callees.
type Func struct {
	Name      string
	Flat, Cum int64
}

// Aggregate sums one sample value per function. The first line of the first
// location is the innermost frame (inlined frames come first), so it gets
// the flat value; every function on the stack gets the cumulative value once.
func Aggregate(p *profile.Profile, idx int) (map[string]*Func, int64) {
	stats := map[string]*Func{}
	get := func(name string) *Func {
		s := stats[name]
		if s == nil {
			s = &Func{Name: name}
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
					get(name).Flat += v
				}
				if !seen[name] {
					seen[name] = true
					get(name).Cum += v
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

// Sorted lists the functions with a non-zero value, largest |flat| first.
func Sorted(stats map[string]*Func) []*Func {
	list := make([]*Func, 0, len(stats))
	for _, s := range stats {
		if s.Flat != 0 || s.Cum != 0 {
			list = append(list, s)
		}
	}
	slices.SortFunc(list, func(a, b *Func) int {
		return cmp.Or(cmp.Compare(abs(b.Flat), abs(a.Flat)), cmp.Compare(abs(b.Cum), abs(a.Cum)), cmp.Compare(a.Name, b.Name))
	})
	return list
}

// Top parses a profile and returns its functions by flat value of the
// sample type (inuse_space for a heap profile), with the total.
func Top(r io.Reader, sampleType string) ([]*Func, int64, error) {
	p, err := profile.Parse(r)
	if err != nil {
		return nil, 0, fmt.Errorf("not a pprof profile: %w", err)
	}
	idx, err := p.SampleIndexByName(sampleType)
	if err != nil {
		return nil, 0, err
	}
	stats, total := Aggregate(p, idx)
	return Sorted(stats), total, nil
}

func abs(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}
