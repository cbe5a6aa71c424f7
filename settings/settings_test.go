package settings

import (
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultsParseAndRoundTrip(t *testing.T) {
	c := Defaults()
	if got, want := c.Thresholds, []float64{60, 75, 90}; !reflect.DeepEqual(got, want) {
		t.Errorf("Thresholds = %v, want %v", got, want)
	}
	if c.Interval != 100*time.Millisecond || c.Horizon != 2*time.Second || c.PprofPath != "/debug/pprof" {
		t.Errorf("unexpected defaults: %+v", c)
	}
	// Rendering to env and parsing back must give the same config: the
	// webhook renders, the sidecar parses.
	env := map[string]string{}
	for _, e := range c.Env() {
		env[e.Name] = e.Value
	}
	var zero Config
	back, problems := zero.FromEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if len(problems) > 0 {
		t.Fatalf("round trip problems: %v", problems)
	}
	if !reflect.DeepEqual(normal(back), normal(c)) {
		t.Errorf("round trip changed config:\n got %+v\nwant %+v", back, c)
	}
}

// normal lists what the sidecar reads, comparable with DeepEqual; the
// webhook-only settings are not rendered into its environment.
func normal(c Config) []string {
	var out []string
	for _, s := range All {
		if s.WebhookOnly {
			continue
		}
		out = append(out, s.Key+"="+s.Format(&c))
	}
	return out
}

func TestNamesAreDerivedFromKey(t *testing.T) {
	s, ok := Lookup("pprof-path")
	if !ok {
		t.Fatal("pprof-path not found")
	}
	if s.Annotation() != "heapwatch.io/pprof-path" || s.EnvVar() != "HEAPWATCH_PPROF_PATH" {
		t.Errorf("got %s %s", s.Annotation(), s.EnvVar())
	}
	seen := map[string]bool{}
	for _, s := range All {
		if s.WebhookOnly {
			continue
		}
		if seen[s.EnvVar()] {
			t.Errorf("duplicate env var %s", s.EnvVar())
		}
		seen[s.EnvVar()] = true
		if s.Usage == "" {
			t.Errorf("%s has no usage text", s.Key)
		}
	}
	if _, ok := Lookup("nope"); ok {
		t.Error("Lookup of unknown key succeeded")
	}
}

const errWanted = "<error>"

func TestSetValues(t *testing.T) {
	tests := []struct {
		key, value string
		want       string // formatted value after Set, or errWanted
	}{
		{"thresholds", "90, 60%,75,60", "60,75,90"},
		{"thresholds", "50.5", "50.5"},
		{"thresholds", "", errWanted},
		{"thresholds", "0,50", errWanted},
		{"thresholds", "100", errWanted},
		{"thresholds", "abc", errWanted},
		{"thresholds", "1,2,3,4,5,6,7,8,9,10,11", errWanted},
		{"threshold-bytes", "512Mi", "512Mi"},
		{"threshold-bytes", "0", "0"},
		{"threshold-bytes", "-1", errWanted},
		{"threshold-bytes", "lots", errWanted},
		{"interval", "10ms", "10ms"},
		{"interval", "5ms", errWanted},
		{"interval", "1m", errWanted},
		{"interval", "fast", errWanted},
		{"cooldown", "0s", "0s"},
		{"cooldown", "2h", errWanted},
		{"max-per-hour", "5", "5"},
		{"max-per-hour", "0", errWanted},
		{"max-per-hour", "1.5", errWanted},
		{"horizon", "0", "0s"},
		{"horizon", "5s", "5s"},
		{"horizon", "2m", errWanted},
		{"containers", "app, worker,app", "app,worker"},
		{"containers", "", ""}, // empty list is valid: means all
		{"containers", "Bad_Name", errWanted},
		{"ports", "8080, 6060,8080", "6060,8080"},
		{"ports", "", ""},
		{"ports", "0", errWanted},
		{"ports", "70000", errWanted},
		{"ports", "http", errWanted},
		{"pprof-path", "/internal/pprof/", "/internal/pprof"},
		{"pprof-path", "/", "/"},
		{"pprof-path", "debug/pprof", errWanted},
		{"pprof-path", "/debug pprof", errWanted},
		{"pprof-path", "/debug?x=1", errWanted},
		{"profiles", "goroutine,allocs", "heap,goroutine,allocs"},
		{"profiles", "", "heap"},
		{"profiles", "cpu", errWanted},
		{"storage", "file:///tmp/dumps", "file:///tmp/dumps"},
		{"storage", "s3://bucket/prefix?region=eu-west-1", "s3://bucket/prefix?region=eu-west-1"},
		{"storage", "file://relative/dir", errWanted},
		{"storage", "s3:///nobucket", errWanted},
		{"storage", "gs://bucket", errWanted},
		{"storage", "s3://bucket/p?regoin=eu-west-1", errWanted},
		{"spool-bytes", "1Gi", "1Gi"},
		{"spool-bytes", "1Mi", errWanted},
		{"spool-bytes", "20Gi", errWanted},
		{"security-mode", "same-uid", "same-uid"},
		{"security-mode", " privileged-reader ", "privileged-reader"},
		{"security-mode", "auto", "auto"},
		{"security-mode", "root", errWanted},
		{"security-mode", "", errWanted},
		{"memory-limit", "64Mi", "64Mi"},
		{"memory-limit", "0", errWanted},
		{"cpu-limit", "1", "1"},
		{"cpu-limit", "lots", errWanted},
	}
	for _, tt := range tests {
		t.Run(tt.key+"="+tt.value, func(t *testing.T) {
			s, ok := Lookup(tt.key)
			if !ok {
				t.Fatalf("unknown key %s", tt.key)
			}
			c := Defaults()
			before := s.Format(&c)
			err := s.Set(&c, tt.value)
			switch {
			case tt.want == errWanted:
				if err == nil {
					t.Fatalf("Set(%q) succeeded with %q, want an error", tt.value, s.Format(&c))
				}
				if !strings.Contains(err.Error(), tt.key) {
					t.Errorf("error %q does not name the key", err)
				}
				if got := s.Format(&c); got != before {
					t.Errorf("failed Set changed the value to %q", got)
				}
			case err != nil:
				t.Fatalf("Set(%q): %v", tt.value, err)
			default:
				if got := s.Format(&c); got != tt.want {
					t.Errorf("Format = %q, want %q", got, tt.want)
				}
			}
		})
	}
}

func TestFromAnnotationsKeepsGoodValuesAndReportsBadOnes(t *testing.T) {
	base := Defaults()
	c, problems := base.FromAnnotations(map[string]string{
		"heapwatch.io/interval":   "250ms",
		"heapwatch.io/thresholds": "50,banana",
		"heapwatch.io/ports":      "6060",
		"unrelated/annotation":    "x",
	})
	if c.Interval != 250*time.Millisecond || !reflect.DeepEqual(c.Ports, []int{6060}) {
		t.Errorf("good annotations not applied: %+v", c)
	}
	if !reflect.DeepEqual(c.Thresholds, base.Thresholds) {
		t.Errorf("bad thresholds annotation changed the value to %v", c.Thresholds)
	}
	if len(problems) != 1 {
		t.Fatalf("problems = %v, want one", problems)
	}
	msg := problems[0].Error()
	for _, want := range []string{"heapwatch.io/thresholds", `"50,banana"`, `using "60,75,90"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("problem %q does not contain %q", msg, want)
		}
	}
	// base must not be aliased by the result.
	c.Thresholds[0] = 1
	if base.Thresholds[0] == 1 {
		t.Error("FromAnnotations aliases the base config's slices")
	}
}

func TestFromEnvNamesTheVariable(t *testing.T) {
	_, problems := Defaults().FromEnv(func(k string) (string, bool) {
		if k == "HEAPWATCH_COOLDOWN" {
			return "soon", true
		}
		return "", false
	})
	if len(problems) != 1 || !strings.HasPrefix(problems[0].Error(), "HEAPWATCH_COOLDOWN: ") {
		t.Fatalf("problems = %v", problems)
	}
}

func TestAddFlags(t *testing.T) {
	c := Defaults()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	AddFlags(fs, "default-", &c)
	if err := fs.Parse([]string{"--default-interval=1s", "--default-profiles=allocs"}); err != nil {
		t.Fatal(err)
	}
	if c.Interval != time.Second || !reflect.DeepEqual(c.Profiles, []string{"heap", "allocs"}) {
		t.Errorf("flags not applied: %+v", c)
	}
	err := fs.Parse([]string{"--default-interval=never"})
	if err == nil || !strings.Contains(err.Error(), "default-interval") {
		t.Errorf("bad flag error = %v, want one naming the flag", err)
	}
}

func TestWatches(t *testing.T) {
	for _, tt := range []struct {
		containers []string
		name       string
		want       bool
	}{
		{nil, "app", true}, // an empty list watches every container
		{[]string{}, "app", true},
		{[]string{"app"}, "app", true},
		{[]string{"app", "worker"}, "worker", true},
		{[]string{"app"}, "worker", false},
		{[]string{"app"}, "", false},
	} {
		if got := (Config{Containers: tt.containers}).Watches(tt.name); got != tt.want {
			t.Errorf("Containers %q: Watches(%q) = %v, want %v", tt.containers, tt.name, got, tt.want)
		}
	}
}
