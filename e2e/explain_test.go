package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/heapwatch/heapwatch/capture"
)

var updateGolden = os.Getenv("HEAPWATCH_UPDATE_GOLDEN") != ""

// explainSkeleton keeps the labelled lines of `heapwatch explain` with IDs,
// durations, sizes and numbers masked: the structure a golden file can hold
// for a real, never identical, OOM kill.
func explainSkeleton(out string) string {
	masks := []struct {
		re   *regexp.Regexp
		with string
	}{
		{regexp.MustCompile(`e2e/leaky-0/app/\S+`), "ID"},
		{regexp.MustCompile(`'file://[^']+'`), "'URL'"},
		{regexp.MustCompile(`\d+(\.\d+)? (B|KiB|MiB|GiB)\b`), "SIZE"},
		{regexp.MustCompile(`\d+(\.\d+)?(ms|µs|s)\b`), "DUR"},
		{regexp.MustCompile(`\d+`), "N"},
	}
	var b strings.Builder
	for line := range strings.SplitSeq(out, "\n") {
		if line == "" || strings.HasPrefix(line, " ") {
			continue
		}
		for _, m := range masks {
			line = m.re.ReplaceAllString(line, m.with)
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// explainReport is the part of `explain --output json` checked here.
type explainReport struct {
	Capture     string         `json:"capture"`
	KilledAt    *time.Time     `json:"killedAt"`
	Verdict     string         `json:"verdict"`
	GoHeapInuse int64          `json:"goHeapInuseBytes"`
	Parts       map[string]int `json:"memoryParts"`
	Grew        []struct{ Function string }
	Timeline    []capture.Point `json:"timeline"`
}

// runHeapwatch runs the built CLI against storage and returns its standard output.
func runHeapwatch(t *testing.T, storage string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(heapwatchBin, append([]string{"--storage", storage}, args...)...)
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+t.TempDir(), "HOME="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("heapwatch %v: %v\n%s", args, err, out)
	}
	return out
}

// TestExplainRealOOMKill runs `heapwatch explain` on the captures of real
// OOM kills: a Go heap leak and a tmpfs (shmem) leak, whose working set
// grows while the Go heap does not.
func TestExplainRealOOMKill(t *testing.T) {
	for _, tt := range []struct {
		shape, verdict, grew string
	}{
		{"linear", "the Go heap explains", "main.leakLinear"},
		{"shmem", "is shmem", ""},
	} {
		t.Run(tt.shape, func(t *testing.T) {
			args := []string{"-rate", "20"}
			if tt.shape == "shmem" {
				shm := fmt.Sprintf("/dev/shm/heapwatch-e2e-%d-%d", os.Getpid(), time.Now().UnixNano())
				args = append(args, "-shm-file", shm)
				// Registered before startPod's cleanup, so it runs after the
				// pod is gone: the tmpfs pages stay charged until removed.
				t.Cleanup(func() { os.Remove(shm) })
			}
			r := startPod(t, podOptions{shape: tt.shape, appArgs: args})
			r.waitOOMKill(t, time.Minute)
			m := finalCapture(t, openStore(t, r.storage), 30*time.Second)

			out := runHeapwatch(t, r.storage, "explain", "e2e/leaky-0/app")
			got := explainSkeleton(string(out))
			golden := filepath.Join("testdata", "explain-"+tt.shape+".golden")
			if updateGolden {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("explain structure differs from %s:\n got:\n%s\nwant:\n%s\nfull output:\n%s", golden, got, want, out)
			}

			var rep explainReport
			js := runHeapwatch(t, r.storage, "--output", "json", "explain", m.ID)
			if err := json.Unmarshal(js, &rep); err != nil {
				t.Fatalf("%v\n%s", err, js)
			}
			if rep.Capture != m.ID || rep.KilledAt == nil {
				t.Fatalf("explained %s (killed %v), want the final capture %s with its kill", rep.Capture, rep.KilledAt, m.ID)
			}
			// The timeline holds the samples before the kill, rising towards
			// the limit.
			if len(rep.Timeline) < 10 {
				t.Fatalf("timeline has %d samples, want the seconds before the kill", len(rep.Timeline))
			}
			for _, p := range rep.Timeline {
				if p.Time.After(*rep.KilledAt) || rep.KilledAt.Sub(p.Time) > time.Minute+time.Second {
					t.Errorf("timeline sample at %v is not in the minute before the kill at %v", p.Time, *rep.KilledAt)
				}
			}
			firstWS, lastWS := rep.Timeline[0].WorkingSetBytes, rep.Timeline[len(rep.Timeline)-1].WorkingSetBytes
			if lastWS <= firstWS || lastWS < appLimit/2 {
				t.Errorf("working set went from %d to %d bytes, want a rise to near the %d limit", firstWS, lastWS, appLimit)
			}
			if !bytes.Contains([]byte(rep.Verdict), []byte(tt.verdict)) {
				t.Errorf("verdict %q, want %q (heap %d B, parts %v)", rep.Verdict, tt.verdict, rep.GoHeapInuse, rep.Parts)
			}
			if tt.grew != "" && (len(rep.Grew) == 0 || rep.Grew[0].Function != tt.grew) {
				t.Errorf("what grew = %+v, want %s first", rep.Grew, tt.grew)
			}
			if tt.shape == "shmem" && rep.GoHeapInuse > appLimit/4 {
				t.Errorf("Go heap %d B in a shmem leak, want it small", rep.GoHeapInuse)
			}
		})
	}
}
