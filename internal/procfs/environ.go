package procfs

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
)

// environCap bounds how much of an environment is scanned (ARG_MAX-sized
// environments exist; anything beyond this is not a real one).
const environCap = 8 << 20

// Getenv returns the value of key in /proc/<pid>/environ, as the process
// was started (later setenv calls are not visible). Reading it needs ptrace
// read access (CAP_SYS_PTRACE) and, the file being 0400 of the app's uid,
// CAP_DAC_READ_SEARCH when that uid is not ours.
func (p Proc) Getenv(key string) (string, bool, error) {
	f, err := os.Open(p.Path("environ"))
	if err != nil {
		return "", false, fmt.Errorf("procfs: pid %d: %w", p.PID, err)
	}
	defer f.Close()
	v, ok, err := LookupEnv(f, key)
	if err != nil {
		return "", false, fmt.Errorf("procfs: pid %d environ: %w", p.PID, err)
	}
	return v, ok, nil
}

// LookupEnv scans a NUL-separated KEY=VALUE list for key. The first
// occurrence wins, as in getenv(3).
func LookupEnv(r io.Reader, key string) (string, bool, error) {
	lr := &io.LimitedReader{R: r, N: environCap + 1}
	sc := bufio.NewScanner(lr)
	sc.Buffer(make([]byte, 0, 4096), environCap)
	sc.Split(splitNUL)
	prefix := []byte(key + "=")
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), prefix); ok {
			return string(v), true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", false, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if lr.N <= 0 {
		return "", false, fmt.Errorf("environ: %w (%d bytes)", ErrTooLarge, environCap)
	}
	return "", false, nil
}

func splitNUL(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}
