package trigger

import (
	"math"
	"strconv"
)

func fmtBytes(b float64) string {
	const unit = 1024
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	neg := b < 0
	b = math.Abs(b)
	for b >= unit && i < len(units)-1 {
		b /= unit
		i++
	}
	s := strconv.FormatFloat(b, 'f', 1, 64)
	if b == math.Trunc(b) {
		s = strconv.FormatFloat(b, 'f', 0, 64)
	}
	if neg {
		s = "-" + s
	}
	return s + units[i]
}
