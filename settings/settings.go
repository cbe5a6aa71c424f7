// Package settings is the one definition of the sidecar's per-pod settings.
//
// Each setting has a key; the webhook reads it from the pod annotation
// heapwatch.io/<key>, renders it into the sidecar's environment as
// HEAPWATCH_<KEY>, and the sidecar parses it back. Key, default, parser and
// validation live together in the table below so the two binaries cannot
// drift apart.
package settings

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/store/storeurl"
)

const (
	// SecurityModeAuto, SecurityModeSameUID and SecurityModePrivilegedReader
	// are the values of the security-mode setting. The webhook resolves auto
	// to one of the other two per pod and hands the sidecar the mode it
	// chose, which the sidecar logs at start.
	SecurityModeAuto             = "auto"
	SecurityModeSameUID          = "same-uid"
	SecurityModePrivilegedReader = "privileged-reader"

	// goMemLimitPercent of the sidecar's memory limit becomes its
	// GOMEMLIMIT, leaving room for stacks and runtime overhead before the
	// kernel OOM-kills the sidecar.
	goMemLimitPercent = 85
)

var securityModes = []string{SecurityModeAuto, SecurityModeSameUID, SecurityModePrivilegedReader}

// Profile names the sidecar can fetch from /debug/pprof/<name>.
var knownProfiles = []string{"heap", "goroutine", "allocs"}

// Config is the typed, validated form of every per-pod setting.
type Config struct {
	// Thresholds are percentages of the container's memory limit, ascending.
	Thresholds []float64
	// ThresholdBytes is an absolute usage threshold; 0 means none. It is the
	// only trigger for containers without a memory limit.
	ThresholdBytes int64
	// Interval is the base sampling interval; the sidecar samples faster near
	// a threshold.
	Interval time.Duration
	// Cooldown is the minimum time between two captures of one container.
	Cooldown time.Duration
	// MaxPerHour caps captures per container and hour.
	MaxPerHour int
	// Horizon is how far ahead the predictive trigger looks; 0 disables it.
	Horizon time.Duration
	// Containers limits watching to these container names; empty means all.
	Containers []string
	// Ports limits pprof discovery to these ports; empty means every
	// listening port.
	Ports []int
	// PprofPath is the URL path under which pprof handlers are served.
	PprofPath string
	// Profiles are fetched in this order; heap is always first.
	Profiles []string
	// Storage is the destination URL (file:///dir or s3://bucket/prefix?...).
	Storage string
	// SpoolBytes bounds the local spool that holds captures until stored.
	SpoolBytes int64
	// CPURequest, CPULimit, MemoryRequest and MemoryLimit size the sidecar
	// container; the sidecar derives GOMEMLIMIT and GOMAXPROCS from the limits.
	CPURequest    resource.Quantity
	CPULimit      resource.Quantity
	MemoryRequest resource.Quantity
	MemoryLimit   resource.Quantity
	// SecurityMode is how the sidecar may read the app's /proc files: one of
	// the SecurityMode* constants.
	SecurityMode string
}

// Setting is one row of the table: a key with its default and codec.
type Setting struct {
	// Key is the lower-case, dash-separated name, e.g. "pprof-path".
	Key string
	// Default is the value used when neither annotation nor env var is set.
	Default string
	// Usage is one line for flags, docs and warnings.
	Usage string
	set   func(c *Config, v string) error
	get   func(c *Config) string
}

// Annotation is the pod annotation that overrides this setting.
func (s Setting) Annotation() string { return names.AnnotationPrefix + s.Key }

// EnvVar is the sidecar environment variable carrying this setting.
func (s Setting) EnvVar() string {
	return names.EnvPrefix + strings.ToUpper(strings.ReplaceAll(s.Key, "-", "_"))
}

// Format renders the setting's value in c in the syntax its parser accepts.
func (s Setting) Format(c *Config) string { return s.get(c) }

// Set parses v into c. On error c is unchanged.
func (s Setting) Set(c *Config, v string) error {
	trial := c.clone()
	if err := s.set(&trial, strings.TrimSpace(v)); err != nil {
		return fmt.Errorf("%s: invalid value %q: %w", s.Key, v, err)
	}
	*c = trial
	return nil
}

// All lists every setting, in documentation order.
var All = []Setting{
	{Key: "thresholds", Default: "60,75,90",
		Usage: "comma-separated percentages of the container memory limit that trigger a capture (each fires once per rise)",
		set: func(c *Config, v string) (err error) {
			c.Thresholds, err = parsePercentages(v)
			return err
		},
		get: func(c *Config) string { return joinFloats(c.Thresholds) }},
	{Key: "threshold-bytes", Default: "0",
		Usage: "absolute usage that triggers a capture (e.g. 512Mi); 0 disables it; the only trigger for containers without a limit",
		set: func(c *Config, v string) (err error) {
			c.ThresholdBytes, err = parseBytes(v, 0)
			return err
		},
		get: func(c *Config) string { return formatBytes(c.ThresholdBytes) }},
	{Key: "interval", Default: "100ms",
		Usage: "base memory sampling interval (10ms..10s); sampling speeds up near a threshold",
		set: func(c *Config, v string) (err error) {
			c.Interval, err = parseDuration(v, 10*time.Millisecond, 10*time.Second)
			return err
		},
		get: func(c *Config) string { return c.Interval.String() }},
	{Key: "cooldown", Default: "30s",
		Usage: "minimum time between two captures of one container (0..1h)",
		set: func(c *Config, v string) (err error) {
			c.Cooldown, err = parseDuration(v, 0, time.Hour)
			return err
		},
		get: func(c *Config) string { return c.Cooldown.String() }},
	{Key: "max-per-hour", Default: "20",
		Usage: "cap on captures per container and hour (1..1000)",
		set: func(c *Config, v string) (err error) {
			c.MaxPerHour, err = parseInt(v, 1, 1000)
			return err
		},
		get: func(c *Config) string { return strconv.Itoa(c.MaxPerHour) }},
	{Key: "horizon", Default: "2s",
		Usage: "capture when the growth rate says the limit will be reached within this time (0 disables, max 1m)",
		set: func(c *Config, v string) (err error) {
			c.Horizon, err = parseDuration(v, 0, time.Minute)
			return err
		},
		get: func(c *Config) string { return c.Horizon.String() }},
	{Key: "containers", Default: "",
		Usage: "comma-separated container names to watch; empty watches every other container",
		set: func(c *Config, v string) (err error) {
			c.Containers, err = parseNames(v)
			return err
		},
		get: func(c *Config) string { return strings.Join(c.Containers, ",") }},
	{Key: "ports", Default: "",
		Usage: "comma-separated TCP ports to probe for pprof; empty probes every listening port",
		set: func(c *Config, v string) (err error) {
			c.Ports, err = parsePorts(v)
			return err
		},
		get: func(c *Config) string { return joinInts(c.Ports) }},
	{Key: "pprof-path", Default: "/debug/pprof",
		Usage: "URL path under which the app serves net/http/pprof",
		set: func(c *Config, v string) (err error) {
			c.PprofPath, err = parsePath(v)
			return err
		},
		get: func(c *Config) string { return c.PprofPath }},
	{Key: "profiles", Default: "heap,goroutine",
		Usage: "comma-separated profiles to fetch: heap, goroutine, allocs (heap is always fetched first)",
		set: func(c *Config, v string) (err error) {
			c.Profiles, err = parseProfiles(v)
			return err
		},
		get: func(c *Config) string { return strings.Join(c.Profiles, ",") }},
	{Key: "storage", Default: "file:///var/lib/heapwatch/captures",
		Usage: "where captures go: file:///dir or s3://bucket/prefix?region=...&endpoint=...&path-style=true&sse=aws:kms&kms-key=...",
		set: func(c *Config, v string) (err error) {
			c.Storage, err = parseStorage(v)
			return err
		},
		get: func(c *Config) string { return c.Storage }},
	{Key: "spool-bytes", Default: "256Mi",
		Usage: "bound on the local spool holding captures until stored (16Mi..10Gi); the oldest are dropped when full",
		set: func(c *Config, v string) (err error) {
			c.SpoolBytes, err = parseBytes(v, 16<<20)
			if err == nil && c.SpoolBytes > 10<<30 {
				err = errors.New("must be at most 10Gi")
			}
			return err
		},
		get: func(c *Config) string { return formatBytes(c.SpoolBytes) }},
	{Key: "security-mode", Default: SecurityModeAuto,
		Usage: "how the sidecar reads the app's /proc: same-uid (the app's uid and gid, no capabilities), privileged-reader (uid 0 with SYS_PTRACE and DAC_READ_SEARCH), or auto: same-uid where the pod allows it",
		set: func(c *Config, v string) error {
			if !slices.Contains(securityModes, v) {
				return fmt.Errorf("want one of %s", strings.Join(securityModes, ", "))
			}
			c.SecurityMode = v
			return nil
		},
		get: func(c *Config) string { return c.SecurityMode }},
	quantity("cpu-request", "20m", "sidecar CPU request", func(c *Config) *resource.Quantity { return &c.CPURequest }),
	quantity("cpu-limit", "500m", "sidecar CPU limit; also sets the sidecar's GOMAXPROCS", func(c *Config) *resource.Quantity { return &c.CPULimit }),
	quantity("memory-request", "48Mi", "sidecar memory request", func(c *Config) *resource.Quantity { return &c.MemoryRequest }),
	quantity("memory-limit", "128Mi", "sidecar memory limit; the sidecar keeps its Go heap under it (GOMEMLIMIT)", func(c *Config) *resource.Quantity { return &c.MemoryLimit }),
}

func quantity(key, def, usage string, field func(*Config) *resource.Quantity) Setting {
	return Setting{Key: key, Default: def, Usage: usage,
		set: func(c *Config, v string) error {
			q, err := resource.ParseQuantity(v)
			if err != nil {
				return errors.New("not a Kubernetes quantity (e.g. 100m, 64Mi)")
			}
			if q.Sign() <= 0 {
				return errors.New("must be positive")
			}
			*field(c) = q
			return nil
		},
		get: func(c *Config) string { return field(c).String() }}
}

// Lookup returns the setting with this key.
func Lookup(key string) (Setting, bool) {
	i := slices.IndexFunc(All, func(s Setting) bool { return s.Key == key })
	if i < 0 {
		return Setting{}, false
	}
	return All[i], true
}

// Defaults returns the built-in defaults. The table's defaults are tested to
// parse, so an error here is a programming error.
func Defaults() Config {
	var c Config
	for _, s := range All {
		if err := s.Set(&c, s.Default); err != nil {
			panic(fmt.Sprintf("settings: built-in default: %v", err))
		}
	}
	return c
}

// Problem is one value that could not be used; the field keeps its previous
// value (Used) and the caller reports the problem instead of failing.
type Problem struct {
	Setting Setting
	Source  string // the annotation or env var name the value came from
	Value   string
	Used    string
	Err     error
}

func (p Problem) Error() string {
	return fmt.Sprintf("%s: invalid value %q (%v); using %q", p.Source, p.Value, errors.Unwrap(p.Err), p.Used)
}

// Override applies values found by lookup on top of base. A value that does
// not parse leaves base's value for that field and is returned as a Problem,
// so one bad annotation or variable never discards the rest.
func (base Config) Override(source func(Setting) string, lookup func(name string) (string, bool)) (Config, []Problem) {
	c := base.clone()
	var problems []Problem
	for _, s := range All {
		name := source(s)
		v, ok := lookup(name)
		if !ok {
			continue
		}
		if err := s.Set(&c, v); err != nil {
			problems = append(problems, Problem{Setting: s, Source: name, Value: v, Used: s.Format(&c), Err: err})
		}
	}
	return c, problems
}

// FromAnnotations overrides base with the pod's heapwatch.io/<key> annotations.
func (base Config) FromAnnotations(annotations map[string]string) (Config, []Problem) {
	return base.Override(Setting.Annotation, func(name string) (string, bool) {
		v, ok := annotations[name]
		return v, ok
	})
}

// FromEnv overrides base with HEAPWATCH_<KEY> variables (os.LookupEnv).
func (base Config) FromEnv(lookupEnv func(string) (string, bool)) (Config, []Problem) {
	return base.Override(Setting.EnvVar, lookupEnv)
}

// GoMemLimit is the sidecar's GOMEMLIMIT in bytes, derived from its memory
// limit; the webhook renders it and the sidecar run by hand applies it.
func (c Config) GoMemLimit() int64 {
	return c.MemoryLimit.Value() * goMemLimitPercent / 100
}

// GoMaxProcs is the sidecar's GOMAXPROCS: its CPU limit rounded up to whole
// CPUs, at least 1.
func (c Config) GoMaxProcs() int {
	return int(max(1, (c.CPULimit.MilliValue()+999)/1000))
}

// EnvVar is one rendered environment variable.
type EnvVar struct{ Name, Value string }

// Env renders every setting as the sidecar's environment, in table order.
func (c Config) Env() []EnvVar {
	env := make([]EnvVar, 0, len(All))
	for _, s := range All {
		env = append(env, EnvVar{Name: s.EnvVar(), Value: s.Format(&c)})
	}
	return env
}

func (c Config) clone() Config {
	c.Thresholds = slices.Clone(c.Thresholds)
	c.Containers = slices.Clone(c.Containers)
	c.Ports = slices.Clone(c.Ports)
	c.Profiles = slices.Clone(c.Profiles)
	c.CPURequest = c.CPURequest.DeepCopy()
	c.CPULimit = c.CPULimit.DeepCopy()
	c.MemoryRequest = c.MemoryRequest.DeepCopy()
	c.MemoryLimit = c.MemoryLimit.DeepCopy()
	return c
}

// splitList splits a comma-separated list, ignoring spaces and empty items.
func splitList(v string) []string {
	var out []string
	for item := range strings.SplitSeq(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

const maxThresholds = 10

func parsePercentages(v string) ([]float64, error) {
	items := splitList(strings.ReplaceAll(v, "%", ""))
	if len(items) == 0 {
		return nil, errors.New("need at least one percentage")
	}
	if len(items) > maxThresholds {
		return nil, fmt.Errorf("at most %d thresholds", maxThresholds)
	}
	out := make([]float64, 0, len(items))
	for _, item := range items {
		p, err := strconv.ParseFloat(item, 64)
		if err != nil || p <= 0 || p >= 100 {
			return nil, fmt.Errorf("%q is not a percentage between 0 and 100 (exclusive)", item)
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func parseBytes(v string, floor int64) (int64, error) {
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return 0, errors.New("not a byte quantity (e.g. 512Mi, 1Gi)")
	}
	n, ok := q.AsInt64()
	if !ok || n < 0 {
		return 0, errors.New("must be a non-negative whole number of bytes")
	}
	if n != 0 && n < floor {
		return 0, fmt.Errorf("must be at least %s", formatBytes(floor))
	}
	return n, nil
}

func formatBytes(n int64) string {
	return resource.NewQuantity(n, resource.BinarySI).String()
}

func parseDuration(v string, lo, hi time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, errors.New("not a duration (e.g. 100ms, 30s)")
	}
	if d < lo || d > hi {
		return 0, fmt.Errorf("must be between %v and %v", lo, hi)
	}
	return d, nil
}

func parseInt(v string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("must be a whole number between %d and %d", lo, hi)
	}
	return n, nil
}

func parseNames(v string) ([]string, error) {
	names := splitList(v)
	for _, n := range names {
		if errs := validation.IsDNS1123Label(n); len(errs) > 0 {
			return nil, fmt.Errorf("%q is not a container name: %s", n, errs[0])
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

func parsePorts(v string) ([]int, error) {
	var ports []int
	for _, item := range splitList(v) {
		p, err := strconv.Atoi(item)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("%q is not a TCP port (1..65535)", item)
		}
		ports = append(ports, p)
	}
	slices.Sort(ports)
	return slices.Compact(ports), nil
}

func parsePath(v string) (string, error) {
	if !strings.HasPrefix(v, "/") {
		return "", errors.New("must start with /")
	}
	u, err := url.Parse(v)
	if err != nil || u.Path != v || strings.ContainsAny(v, " ?#") {
		return "", errors.New("must be a plain URL path without spaces, query or fragment")
	}
	if len(v) > 1 {
		v = strings.TrimRight(v, "/")
	}
	return v, nil
}

func parseProfiles(v string) ([]string, error) {
	out := []string{"heap"}
	for _, p := range splitList(v) {
		if !slices.Contains(knownProfiles, p) {
			return nil, fmt.Errorf("unknown profile %q (known: %s)", p, strings.Join(knownProfiles, ", "))
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// parseStorage checks the URL with the storage URL grammar (the one store.Open
// uses, without its SDK), so an annotation typo (an unknown query parameter, a relative path) is caught at
// admission, not when the first capture is lost.
func parseStorage(v string) (string, error) {
	if err := storeurl.Validate(v); err != nil {
		return "", err
	}
	return v, nil
}

func joinFloats(fs []float64) string {
	parts := make([]string, len(fs))
	for i, f := range fs {
		parts[i] = strconv.FormatFloat(f, 'f', -1, 64)
	}
	return strings.Join(parts, ",")
}

func joinInts(is []int) string {
	parts := make([]string, len(is))
	for i, n := range is {
		parts[i] = strconv.Itoa(n)
	}
	return strings.Join(parts, ",")
}

// AddFlags registers one flag per setting, named prefix+key, that writes into
// c; a bad flag value fails flag parsing with a message naming the flag.
func AddFlags(fs *flag.FlagSet, prefix string, c *Config) {
	for _, s := range All {
		fs.Func(prefix+s.Key, fmt.Sprintf("%s (default %q)", s.Usage, s.Default), func(v string) error {
			return s.Set(c, v)
		})
	}
}
