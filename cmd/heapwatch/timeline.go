package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/heapwatch/heapwatch/capture"
)

// Terminal chart size: fits an 80-column screen with its axis labels.
const (
	chartWidth  = 60
	chartHeight = 8
)

// printTimeline draws the working set over time against the limit: one
// column per time slice (its highest sample), '#' up to the working set,
// '-' on the limit row, '^' under a column where a trigger fired.
func printTimeline(w io.Writer, pts []capture.Point, limit uint64) {
	if len(pts) == 0 {
		fmt.Fprintln(w, "Timeline  no samples stored with this capture")
		return
	}
	first, last := pts[0].Time, pts[len(pts)-1].Time
	span := last.Sub(first)
	top := limit
	for _, p := range pts {
		top = max(top, p.WorkingSetBytes, p.UsageBytes)
	}
	if top == 0 {
		top = 1
	}
	cols := make([]uint64, chartWidth)
	marks := make([]bool, chartWidth)
	for _, p := range pts {
		c := 0
		if span > 0 {
			c = int(int64(chartWidth-1) * int64(p.Time.Sub(first)) / int64(span))
		}
		cols[c] = max(cols[c], p.WorkingSetBytes)
		marks[c] = marks[c] || p.Trigger != ""
	}
	// Columns without a sample carry the previous value: the line is flat
	// between samples.
	for c := 1; c < chartWidth; c++ {
		if cols[c] == 0 {
			cols[c] = cols[c-1]
		}
	}
	fmt.Fprintf(w, "Timeline  working set (#) against the limit (-), %d samples over %s; ^ a trigger fired\n", len(pts), span.Round(100*time.Millisecond))
	limitRow := -1
	if limit > 0 {
		limitRow = int(uint64(chartHeight) * limit / top)
	}
	for row := chartHeight; row >= 1; row-- {
		label := ""
		if row == chartHeight {
			label = bytesString(int64(top))
		}
		var b strings.Builder
		for c := range chartWidth {
			level := (cols[c]*uint64(chartHeight) + top/2) / top
			switch {
			case uint64(row) <= level:
				b.WriteByte('#')
			case row == limitRow:
				b.WriteByte('-')
			default:
				b.WriteByte(' ')
			}
		}
		fmt.Fprintf(w, "%10s |%s\n", label, b.String())
	}
	var m strings.Builder
	for _, on := range marks {
		m.WriteByte(map[bool]byte{false: ' ', true: '^'}[on])
	}
	fmt.Fprintf(w, "%10s +%s\n", "", strings.Repeat("-", chartWidth))
	fmt.Fprintf(w, "%10s  %s\n", "", strings.TrimRight(m.String(), " "))
	fmt.Fprintf(w, "%10s  %-*s%s\n", "", chartWidth-8, "-"+span.Round(time.Second).String(), "capture")
}

// timelineSVG draws the timeline as a standalone SVG image: usage and
// working set as lines, the limit dashed, triggers and the kill as marks.
func timelineSVG(pts []capture.Point, killedAt *time.Time) string {
	const w, h, pad = 800.0, 300.0, 40.0
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f">`+"\n", w, h, w, h)
	b.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
	if len(pts) == 0 {
		b.WriteString(`<text x="20" y="40">no samples stored with this capture</text></svg>` + "\n")
		return b.String()
	}
	first, last := pts[0].Time, pts[len(pts)-1].Time
	if killedAt != nil && killedAt.After(last) {
		last = *killedAt
	}
	span := max(last.Sub(first), time.Millisecond)
	var top uint64 = 1
	for _, p := range pts {
		top = max(top, p.LimitBytes, p.UsageBytes, p.WorkingSetBytes)
	}
	x := func(t time.Time) float64 { return pad + (w-2*pad)*float64(t.Sub(first))/float64(span) }
	y := func(v uint64) float64 { return h - pad - (h-2*pad)*float64(v)/float64(top) }
	line := func(color, dash string, val func(capture.Point) uint64) {
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="`, color, dash)
		for _, p := range pts {
			fmt.Fprintf(&b, "%.1f,%.1f ", x(p.Time), y(val(p)))
		}
		b.WriteString(`"/>` + "\n")
	}
	line("#999", ` stroke-dasharray="6 4"`, func(p capture.Point) uint64 { return p.LimitBytes })
	line("#1f77b4", "", func(p capture.Point) uint64 { return p.UsageBytes })
	line("#d62728", "", func(p capture.Point) uint64 { return p.WorkingSetBytes })
	for _, p := range pts {
		if p.Trigger != "" {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="4" fill="orange"><title>%s</title></circle>`+"\n", x(p.Time), y(p.WorkingSetBytes), p.Trigger)
		}
	}
	if killedAt != nil {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="black"/><text x="%.1f" y="%.0f" font-size="12">OOM kill</text>`+"\n",
			x(*killedAt), pad, x(*killedAt), h-pad, x(*killedAt)-50, pad-8)
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="12">%s</text>`+"\n", pad, pad-8, bytesString(int64(top)))
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="12">limit (dashed), usage (blue), working set (red) over %s</text>`+"\n", pad, h-12, span.Round(time.Second))
	b.WriteString("</svg>\n")
	return b.String()
}
