// Package settings is the one definition of the sidecar's per-pod settings.
//
// Each setting has a key; the webhook reads it from the pod annotation
// heapwatch.io/<key>, renders it into the sidecar's environment as
// HEAPWATCH_<KEY>, and the sidecar parses it back. Key, default, parser and
// validation live together in the table below so the two binaries cannot
// drift apart. The sidecar's own resources (cpu/memory request/limit) are
// webhook-only: checked here with the quantity grammar, parsed by the
// webhook, never passed to the sidecar. The package is a leaf (no SDK, no
// apimachinery) because both binaries link it.
package settings

import (
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

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
	// container, as Kubernetes quantities. The webhook parses them and
	// derives the sidecar's GOMEMLIMIT and GOMAXPROCS from the limits; they
	// are not passed to the sidecar.
	CPURequest    string
	CPULimit      string
	MemoryRequest string
	MemoryLimit   string
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
	// WebhookOnly settings are consumed by the webhook alone (the sidecar's
	// resources) and are not rendered into the sidecar's environment.
	WebhookOnly bool
	set         func(c *Config, v string) error
	get         func(c *Config) string
}

// Annotation is the pod annotation that overrides this setting.
func (s Setting) Annotation() string { return names.AnnotationPrefix + s.Key }

// EnvVar is the sidecar environment variable carrying this setting; empty
// for a webhook-only setting.
func (s Setting) EnvVar() string {
	if s.WebhookOnly {
		return ""
	}
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

// The settings, one variable each so that code naming a setting is checked
// by the compiler (settings.Storage.Annotation(), not "heapwatch.io/storage").
var (
	Thresholds = Setting{Key: "thresholds", Default: "60,75,90",
		Usage: "comma-separated percentages of the container memory limit that trigger a capture (each fires once per rise)",
		set: func(c *Config, v string) (err error) {
			c.Thresholds, err = parsePercentages(v)
			return err
		},
		get: func(c *Config) string { return joinFloats(c.Thresholds) }}
	ThresholdBytes = Setting{Key: "threshold-bytes", Default: "0",
		Usage: "absolute usage that triggers a capture (e.g. 512Mi); 0 disables it; the only trigger for containers without a limit",
		set: func(c *Config, v string) (err error) {
			c.ThresholdBytes, err = parseBytes(v, 0)
			return err
		},
		get: func(c *Config) string { return formatBytes(c.ThresholdBytes) }}
	Interval = Setting{Key: "interval", Default: "100ms",
		Usage: "base memory sampling interval (10ms..10s); sampling speeds up near a threshold",
		set: func(c *Config, v string) (err error) {
			c.Interval, err = parseDuration(v, 10*time.Millisecond, 10*time.Second)
			return err
		},
		get: func(c *Config) string { return c.Interval.String() }}
	Cooldown = Setting{Key: "cooldown", Default: "30s",
		Usage: "minimum time between two captures of one container (0..1h)",
		set: func(c *Config, v string) (err error) {
			c.Cooldown, err = parseDuration(v, 0, time.Hour)
			return err
		},
		get: func(c *Config) string { return c.Cooldown.String() }}
	MaxPerHour = Setting{Key: "max-per-hour", Default: "20",
		Usage: "cap on captures per container and hour (1..1000)",
		set: func(c *Config, v string) (err error) {
			c.MaxPerHour, err = parseInt(v, 1, 1000)
			return err
		},
		get: func(c *Config) string { return strconv.Itoa(c.MaxPerHour) }}
	Horizon = Setting{Key: "horizon", Default: "2s",
		Usage: "capture when the growth rate says the limit will be reached within this time (0 disables, max 1m)",
		set: func(c *Config, v string) (err error) {
			c.Horizon, err = parseDuration(v, 0, time.Minute)
			return err
		},
		get: func(c *Config) string { return c.Horizon.String() }}
	Containers = Setting{Key: "containers", Default: "",
		Usage: "comma-separated container names to watch; empty watches every other container",
		set: func(c *Config, v string) (err error) {
			c.Containers, err = parseNames(v)
			return err
		},
		get: func(c *Config) string { return strings.Join(c.Containers, ",") }}
	Ports = Setting{Key: "ports", Default: "",
		Usage: "comma-separated TCP ports to probe for pprof; empty probes every listening port",
		set: func(c *Config, v string) (err error) {
			c.Ports, err = parsePorts(v)
			return err
		},
		get: func(c *Config) string { return joinInts(c.Ports) }}
	PprofPath = Setting{Key: "pprof-path", Default: "/debug/pprof",
		Usage: "URL path under which the app serves net/http/pprof",
		set: func(c *Config, v string) (err error) {
			c.PprofPath, err = parsePath(v)
			return err
		},
		get: func(c *Config) string { return c.PprofPath }}
	Profiles = Setting{Key: "profiles", Default: "heap,goroutine",
		Usage: "comma-separated profiles to fetch: heap, goroutine, allocs (heap is always fetched first)",
		set: func(c *Config, v string) (err error) {
			c.Profiles, err = parseProfiles(v)
			return err
		},
		get: func(c *Config) string { return strings.Join(c.Profiles, ",") }}
	Storage = Setting{Key: "storage", Default: "file:///var/lib/heapwatch/captures",
		Usage: "where captures go: file:///dir or s3://bucket/prefix?region=...&endpoint=...&path-style=true&sse=aws:kms&kms-key=...",
		set: func(c *Config, v string) (err error) {
			c.Storage, err = parseStorage(v)
			return err
		},
		get: func(c *Config) string { return c.Storage }}
	SpoolBytes = Setting{Key: "spool-bytes", Default: "256Mi",
		Usage: "bound on the local spool holding captures until stored (16Mi..10Gi); the oldest are dropped when full",
		set: func(c *Config, v string) (err error) {
			c.SpoolBytes, err = parseBytes(v, 16<<20)
			if err == nil && c.SpoolBytes > 10<<30 {
				err = errors.New("must be at most 10Gi")
			}
			return err
		},
		get: func(c *Config) string { return formatBytes(c.SpoolBytes) }}
	SecurityMode = Setting{Key: "security-mode", Default: SecurityModeAuto,
		Usage: "how the sidecar reads the app's /proc: same-uid (the app's uid and gid, no capabilities), privileged-reader (uid 0 with SYS_PTRACE and DAC_READ_SEARCH), or auto: same-uid where the pod allows it",
		set: func(c *Config, v string) error {
			if !slices.Contains(securityModes, v) {
				return fmt.Errorf("want one of %s", strings.Join(securityModes, ", "))
			}
			c.SecurityMode = v
			return nil
		},
		get: func(c *Config) string { return c.SecurityMode }}
	CPURequest    = quantity("cpu-request", "20m", "sidecar CPU request", func(c *Config) *string { return &c.CPURequest })
	CPULimit      = quantity("cpu-limit", "500m", "sidecar CPU limit; also sets the sidecar's GOMAXPROCS", func(c *Config) *string { return &c.CPULimit })
	MemoryRequest = quantity("memory-request", "48Mi", "sidecar memory request", func(c *Config) *string { return &c.MemoryRequest })
	MemoryLimit   = quantity("memory-limit", "128Mi", "sidecar memory limit; the sidecar keeps its Go heap under it (GOMEMLIMIT)", func(c *Config) *string { return &c.MemoryLimit })
)

// All lists every setting, in documentation order.
var All = []Setting{
	Thresholds, ThresholdBytes, Interval, Cooldown, MaxPerHour, Horizon, Containers, Ports, PprofPath, Profiles, Storage, SpoolBytes, SecurityMode,
	CPURequest, CPULimit, MemoryRequest, MemoryLimit,
}

// quantity is a setting sizing the sidecar's container. It is checked here
// with the quantity grammar only; the webhook, which alone consumes it,
// turns it into a resource.Quantity, so the sidecar links no apimachinery.
func quantity(key, def, usage string, field func(*Config) *string) Setting {
	return Setting{Key: key, Default: def, Usage: usage, WebhookOnly: true,
		set: func(c *Config, v string) error {
			m := quantityGrammar.FindStringSubmatch(v)
			if m == nil {
				return errors.New("not a Kubernetes quantity (e.g. 100m, 64Mi)")
			}
			if strings.HasPrefix(v, "-") || !strings.ContainsAny(m[1], "123456789") {
				return errors.New("must be positive")
			}
			*field(c) = v
			return nil
		},
		get: func(c *Config) string { return *field(c) }}
}

// quantityGrammar is the Kubernetes quantity syntax
// (<sign><number><suffix>, suffix binary SI, decimal SI or an exponent), as
// k8s.io/apimachinery's ParseQuantity accepts it.
var quantityGrammar = regexp.MustCompile(`^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+|[numkMGTPE])?$`)

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
// Webhook-only settings are not read: pods injected by an older webhook
// carry HEAPWATCH_CPU_REQUEST and the like, which mean nothing to the sidecar.
func (base Config) FromEnv(lookupEnv func(string) (string, bool)) (Config, []Problem) {
	return base.Override(Setting.EnvVar, func(name string) (string, bool) {
		if name == "" {
			return "", false
		}
		return lookupEnv(name)
	})
}

// EnvVar is one rendered environment variable.
type EnvVar struct{ Name, Value string }

// Env renders the settings the sidecar reads as its environment, in table
// order.
func (c Config) Env() []EnvVar {
	env := make([]EnvVar, 0, len(All))
	for _, s := range All {
		if s.WebhookOnly {
			continue
		}
		env = append(env, EnvVar{Name: s.EnvVar(), Value: s.Format(&c)})
	}
	return env
}

func (c Config) clone() Config {
	c.Thresholds = slices.Clone(c.Thresholds)
	c.Containers = slices.Clone(c.Containers)
	c.Ports = slices.Clone(c.Ports)
	c.Profiles = slices.Clone(c.Profiles)
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

// parseBytes reads a byte count in the Kubernetes quantity syntax (512Mi,
// 1G, 1.5Gi, 2e9): the form the settings have always had, so values rendered
// by an older webhook still parse. Fractions are exact; the result must be a
// whole number of bytes.
func parseBytes(v string, floor int64) (int64, error) {
	n, err := byteCount(v)
	if err != nil {
		return 0, err
	}
	if n != 0 && n < floor {
		return 0, fmt.Errorf("must be at least %s", formatBytes(floor))
	}
	return n, nil
}

var (
	errNotBytes     = errors.New("not a byte quantity (e.g. 512Mi, 1Gi)")
	errNotWholeByte = errors.New("must be a non-negative whole number of bytes")
)

// binarySuffixes are the powers of 1024, in order.
var binarySuffixes = []string{"Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}

// decimalExponents are the powers of ten of the decimal SI suffixes.
var decimalExponents = map[string]int64{"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

func byteCount(v string) (int64, error) {
	m := quantityGrammar.FindStringSubmatch(v)
	if m == nil {
		return 0, errNotBytes
	}
	sign, number, suffix := "", m[1], m[3]
	if v[0] == '-' || v[0] == '+' {
		sign = v[:1]
	}
	r, ok := new(big.Rat).SetString(sign + strings.TrimSuffix(number, "."))
	if !ok {
		return 0, errNotBytes
	}
	if r.Sign() == 0 {
		return 0, nil
	}
	var scale *big.Rat
	if i := slices.Index(binarySuffixes, suffix); i >= 0 {
		scale = new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), uint(10*(i+1))))
	} else {
		exp, ok := decimalExponents[suffix]
		if !ok { // an exponent: e<n> or E<n>
			var err error
			if exp, err = strconv.ParseInt(suffix[1:], 10, 64); err != nil || exp < -40 || exp > 40 {
				return 0, errNotWholeByte // too far out to be a byte count
			}
		}
		p := new(big.Int).Exp(big.NewInt(10), big.NewInt(max(exp, -exp)), nil)
		if scale = new(big.Rat).SetInt(p); exp < 0 {
			scale.Inv(scale)
		}
	}
	r.Mul(r, scale)
	if r.Sign() < 0 || !r.IsInt() || !r.Num().IsInt64() {
		return 0, errNotWholeByte
	}
	return r.Num().Int64(), nil
}

// formatBytes renders n as Kubernetes renders a binary-SI quantity: the
// largest power-of-1024 suffix that divides it exactly (256Mi, 1536), and
// decimal below 1Ki (1000 is 1k).
func formatBytes(n int64) string {
	if n < 1024 {
		if n == 1000 {
			return "1k"
		}
		return strconv.FormatInt(n, 10)
	}
	suffix := ""
	for i := 0; i < len(binarySuffixes) && n%1024 == 0; i++ {
		n /= 1024
		suffix = binarySuffixes[i]
	}
	return strconv.FormatInt(n, 10) + suffix
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
		if err := dnsLabel(n); err != nil {
			return nil, fmt.Errorf("%q is not a container name: %w", n, err)
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// dnsLabel checks an RFC 1123 label, the syntax of container names, with
// the message Kubernetes gives for it.
func dnsLabel(v string) error {
	const maxLen = 63
	if len(v) > maxLen {
		return fmt.Errorf("must be no more than %d characters", maxLen)
	}
	if !dnsLabelGrammar.MatchString(v) {
		if dnsSubdomainGrammar.MatchString(v) {
			return errors.New("must not contain dots")
		}
		return errors.New("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
	}
	return nil
}

var (
	dnsLabelGrammar     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubdomainGrammar = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

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

// Watches is the one rule of the containers setting, for the webhook (which
// names the watched containers) and the sidecar (which watches them): an
// empty list watches every container.
func Watches(containers []string, container string) bool {
	return len(containers) == 0 || slices.Contains(containers, container)
}

// Watches reports whether the sidecar watches the container of this name.
func (c Config) Watches(container string) bool { return Watches(c.Containers, container) }
