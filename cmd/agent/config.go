package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/heapwatch/heapwatch/internal/pprof"
	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/watch"
	"github.com/heapwatch/heapwatch/settings"
	"github.com/heapwatch/heapwatch/store/storeurl"
)

// config is the agent's whole configuration: scalars from flags, the
// daemons from --config (a ConfigMap) on top of the built-in ones.
type config struct {
	NodeName    string
	Storage     string
	SpoolDir    string
	MetricsAddr string
	ProcRoot    string
	CgroupRoot  string
	PodsCgroup  string
	SpoolBytes  int64
	ConfigFile  string
	Interval    time.Duration
	Rescan      time.Duration
	// ThresholdBytes fires "absolute" captures (0: none).
	ThresholdBytes uint64
	// GrowthStep: a baseline capture at start, then one at every step.
	GrowthStep Step
	// Horizon of the predictive trigger against node memory (0: off).
	Horizon     time.Duration
	Cooldown    time.Duration
	MaxPerHour  int
	Profiles    []string
	BuiltIn     bool
	Grace       time.Duration
	MaxProfile  int64
	LogLevel    slog.Level
	ShowVersion bool
	// Daemons are the built-in ones (when BuiltIn) replaced or extended by
	// the configuration file's, by name.
	Daemons []daemonConfig
}

// daemonConfig is one daemon of the configuration file.
type daemonConfig struct {
	watch.DaemonSpec `json:",inline"`
	// Pprof is where its profiles are served: unix:///path/to.sock,
	// https://127.0.0.1:10250/debug/pprof, http://...; empty: memory only.
	Pprof string `json:"pprof,omitempty"`
	// BearerTokenFile holds a token sent as "Authorization: Bearer"
	// (https or unix only); CAFile, ServerName and InsecureSkipVerify
	// check an https endpoint's certificate (see pprof.URLOptions).
	BearerTokenFile    string `json:"bearerTokenFile,omitempty"`
	CAFile             string `json:"caFile,omitempty"`
	ServerName         string `json:"serverName,omitempty"`
	InsecureSkipVerify bool   `json:"insecureSkipVerify,omitempty"`
}

// source returns the daemon's profile source, nil when it has no pprof
// endpoint (memory only).
func (d daemonConfig) source(o pprof.Options, proc procfs.FS, log *slog.Logger) (*pprof.URL, error) {
	if d.Pprof == "" {
		return nil, nil
	}
	return pprof.NewURL(d.Pprof, pprof.URLOptions{Client: o, Proc: proc, BearerTokenFile: d.BearerTokenFile,
		CAFile: d.CAFile, ServerName: d.ServerName, InsecureSkipVerify: d.InsecureSkipVerify, Log: log})
}

// fileConfig is the --config file.
type fileConfig struct {
	Daemons []daemonConfig `json:"daemons"`
}

// nodeNamePlaceholder in a serverName is replaced by --node-name.
const nodeNamePlaceholder = "$(NODE_NAME)"

// serviceAccountToken is where Kubernetes mounts the agent's token.
const serviceAccountToken = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// builtIn are watched when present: each only when a process matches.
var builtIn = []daemonConfig{
	{DaemonSpec: watch.DaemonSpec{Name: "containerd", Exe: "containerd", Cgroup: "containerd.service"}, Pprof: "unix:///run/containerd/debug.sock"},
	// The kubelet's serving certificate names the node, and without
	// serverTLSBootstrap it is self-signed: its own CA.
	{DaemonSpec: watch.DaemonSpec{Name: "kubelet", Exe: "kubelet", Cgroup: "kubelet.service"}, Pprof: "https://127.0.0.1:10250/debug/pprof",
		BearerTokenFile: serviceAccountToken, CAFile: "/var/lib/kubelet/pki/kubelet.crt", ServerName: nodeNamePlaceholder},
	{DaemonSpec: watch.DaemonSpec{Name: "crio", Exe: "crio", Cgroup: "crio.service"}, Pprof: "http://127.0.0.1:6060/debug/pprof"},
	{DaemonSpec: watch.DaemonSpec{Name: "dockerd", Exe: "dockerd", Cgroup: "docker.service"}, Pprof: "unix:///var/run/docker.sock"},
}

// Flag defaults.
const (
	defaultInterval    = time.Second
	defaultRescan      = 10 * time.Second
	defaultHorizon     = 30 * time.Minute
	defaultCooldown    = time.Minute
	defaultMaxPerHour  = 20
	defaultGrace       = 10 * time.Second
	defaultSpoolDir    = "/var/lib/heapwatch-agent/spool"
	defaultMetricsAddr = ":9465"
)

// parseFlags reads the command line (and $NODE_NAME, the hostname) and
// the --config file into a validated config. Errors name the flag or the
// file's field.
func parseFlags(args []string, getenv func(string) string) (config, error) {
	c := config{GrowthStep: Step{Ratio: 0.25}, BuiltIn: true, SpoolBytes: settings.Defaults().SpoolBytes}
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(flagOutput)
	node := getenv("NODE_NAME")
	if node == "" {
		node, _ = os.Hostname()
	}
	fs.StringVar(&c.NodeName, "node-name", node, "the node's name in capture keys (default $NODE_NAME, else the hostname)")
	fs.StringVar(&c.Storage, "storage", settings.Defaults().Storage, "where captures are stored: file:///dir or s3://bucket/prefix?region=...")
	fs.StringVar(&c.SpoolDir, "spool-dir", defaultSpoolDir, "directory holding captures until they are stored")
	fs.StringVar(&c.MetricsAddr, "metrics-bind-address", defaultMetricsAddr, "listen address of the Prometheus /metrics endpoint; empty disables it")
	fs.StringVar(&c.ProcRoot, "proc", "/proc", "the host's proc file system (the agent runs with hostPID)")
	fs.StringVar(&c.CgroupRoot, "cgroup-root", "/sys/fs/cgroup", "the host's cgroup file system, mounted read-only")
	fs.StringVar(&c.PodsCgroup, "pods-cgroup", "", "the pods' cgroup below the memory hierarchy, for node accounting (default: kubepods, then kubepods.slice; set it for a kubelet with its own --cgroup-root)")
	fs.Func("spool-bytes", fmt.Sprintf("bound of the local spool (default %d)", settings.Defaults().SpoolBytes), func(v string) error {
		b, err := parseBytes(v)
		c.SpoolBytes = int64(b)
		return err
	})
	fs.StringVar(&c.ConfigFile, "config", "", "YAML file listing daemons to watch: {daemons: [{name, exe, cgroup, pprof, bearerTokenFile}]}")
	fs.DurationVar(&c.Interval, "interval", defaultInterval, "sampling interval of each daemon's memory")
	fs.DurationVar(&c.Rescan, "rescan", defaultRescan, "how often the process list is read for daemons that started (a restart is seen within a second)")
	fs.Func("threshold-bytes", "capture when a daemon's memory reaches this many bytes (e.g. 2GiB; 0: none)", func(v string) error {
		b, err := parseBytes(v)
		c.ThresholdBytes = b
		return err
	})
	fs.Func("growth-step", `capture at start, then at every step of growth: a percentage ("25%": each capture at 1.25x the last) or bytes ("1GiB"); "0" disables (default "25%")`, func(v string) error {
		s, err := parseStep(v)
		c.GrowthStep = s
		return err
	})
	fs.DurationVar(&c.Horizon, "horizon", defaultHorizon, "capture when the growth rate reaches the node's memory (MemTotal) within this; 0 disables")
	fs.DurationVar(&c.Cooldown, "cooldown", defaultCooldown, "minimum time between two stored captures of one daemon")
	fs.IntVar(&c.MaxPerHour, "max-per-hour", defaultMaxPerHour, "cap of stored captures per daemon per hour (0: no cap)")
	fs.Func("profiles", `profiles fetched per capture, heap first (default "heap,goroutine")`, func(v string) error {
		var err error
		c.Profiles, err = parseProfiles(v)
		return err
	})
	fs.BoolVar(&c.BuiltIn, "builtin-daemons", true, "watch containerd, kubelet, crio and dockerd when they run")
	fs.DurationVar(&c.Grace, "shutdown-grace", defaultGrace, "on SIGTERM, time to finish running captures and uploads")
	fs.Int64Var(&c.MaxProfile, "max-profile-bytes", pprof.DefaultMaxBytes, "size cap of one fetched profile")
	fs.TextVar(&c.LogLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	fs.BoolVar(&c.ShowVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.Profiles == nil {
		c.Profiles = []string{"heap", "goroutine"}
	}
	if err := c.validate(); err != nil {
		return config{}, err
	}
	var file []daemonConfig
	if c.ConfigFile != "" {
		b, err := os.ReadFile(c.ConfigFile)
		if err != nil {
			return config{}, fmt.Errorf("--config: %w", err)
		}
		if file, err = parseConfigFile(b); err != nil {
			return config{}, fmt.Errorf("--config %s: %w", c.ConfigFile, err)
		}
	}
	if c.BuiltIn {
		c.Daemons = slices.Clone(builtIn)
	}
	for _, d := range file {
		if i := slices.IndexFunc(c.Daemons, func(b daemonConfig) bool { return b.Name == d.Name }); i >= 0 {
			c.Daemons[i] = d
		} else {
			c.Daemons = append(c.Daemons, d)
		}
	}
	for i := range c.Daemons {
		c.Daemons[i].ServerName = strings.ReplaceAll(c.Daemons[i].ServerName, nodeNamePlaceholder, c.NodeName)
	}
	if len(c.Daemons) == 0 {
		return config{}, errors.New("no daemons to watch: --builtin-daemons=false and no daemons in --config")
	}
	return c, nil
}

// flagOutput is where flag errors and usage go (tests silence it).
var flagOutput io.Writer = os.Stderr

func (c config) validate() error {
	switch {
	case c.NodeName == "":
		return errors.New("--node-name: empty (and $NODE_NAME and the hostname are unset)")
	case !namePattern.MatchString(c.NodeName):
		return fmt.Errorf("--node-name %q: only letters, digits, '.', '_' and '-'", c.NodeName)
	case c.Interval <= 0:
		return fmt.Errorf("--interval %v: must be positive", c.Interval)
	case c.Rescan <= 0:
		return fmt.Errorf("--rescan %v: must be positive", c.Rescan)
	case c.Horizon < 0:
		return fmt.Errorf("--horizon %v: must not be negative", c.Horizon)
	case c.Cooldown < 0:
		return fmt.Errorf("--cooldown %v: must not be negative", c.Cooldown)
	case c.MaxPerHour < 0:
		return fmt.Errorf("--max-per-hour %d: must not be negative", c.MaxPerHour)
	case c.MaxProfile <= 0:
		return fmt.Errorf("--max-profile-bytes %d: must be positive", c.MaxProfile)
	case c.SpoolDir == "":
		return errors.New("--spool-dir: empty")
	case c.SpoolBytes < 1<<20:
		return fmt.Errorf("--spool-bytes %d: at least 1MiB", c.SpoolBytes)
	}
	if err := storeurl.Validate(c.Storage); err != nil {
		return fmt.Errorf("--storage: %w", err)
	}
	return nil
}

// namePattern is what a node or daemon name may be: one key segment
// (capture.ParseKey must give it back unchanged).
var namePattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

// parseConfigFile decodes and checks the daemons of a --config file;
// an unknown field is an error (a typo must not silently watch nothing).
func parseConfigFile(b []byte) ([]daemonConfig, error) {
	var f fileConfig
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for i, d := range f.Daemons {
		field := func(name string) string { return fmt.Sprintf("daemons[%d].%s", i, name) }
		switch {
		case d.Name == "":
			return nil, fmt.Errorf("%s: required", field("name"))
		case !namePattern.MatchString(d.Name):
			return nil, fmt.Errorf("%s %q: only letters, digits, '.', '_' and '-'", field("name"), d.Name)
		case seen[d.Name]:
			return nil, fmt.Errorf("%s %q: listed twice", field("name"), d.Name)
		case d.Exe == "" && d.Cgroup == "":
			return nil, fmt.Errorf("daemons[%d] (%s): exe or cgroup is required to find it", i, d.Name)
		case strings.Contains(d.Exe, "/"):
			return nil, fmt.Errorf("%s %q: the executable's name, not a path", field("exe"), d.Exe)
		case d.Cgroup != "" && path.Clean(d.Cgroup) == "/":
			return nil, fmt.Errorf("%s %q: the root cgroup holds every process", field("cgroup"), d.Cgroup)
		}
		seen[d.Name] = true
		if d.Pprof == "" && (d.BearerTokenFile != "" || d.CAFile != "" || d.ServerName != "" || d.InsecureSkipVerify) {
			return nil, fmt.Errorf("daemons[%d] (%s): bearerTokenFile and TLS settings need a pprof URL", i, d.Name)
		}
		if _, err := d.source(pprof.Options{}, procfs.FS{}, nil); err != nil {
			return nil, fmt.Errorf("%s: %w", field("pprof"), err)
		}
	}
	return f.Daemons, nil
}

// parseProfiles checks a comma-separated profile list, heap first.
func parseProfiles(v string) ([]string, error) {
	var out []string
	for p := range strings.SplitSeq(v, ",") {
		p = strings.TrimSpace(p)
		if !slices.Contains([]string{"heap", "goroutine", "allocs"}, p) {
			return nil, fmt.Errorf("unknown profile %q (known: heap, goroutine, allocs)", p)
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	if len(out) == 0 || out[0] != "heap" {
		return nil, errors.New("heap must come first")
	}
	return out, nil
}

// Step is a growth step: a ratio of the last captured level, or bytes.
// The zero Step disables growth captures.
type Step struct {
	Ratio float64
	Bytes uint64
}

func parseStep(v string) (Step, error) {
	v = strings.TrimSpace(v)
	if p, ok := strings.CutSuffix(v, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || f < 0 || f > 10000 {
			return Step{}, fmt.Errorf("%q: want a percentage like 25%%", v)
		}
		return Step{Ratio: f / 100}, nil
	}
	b, err := parseBytes(v)
	if err != nil {
		return Step{}, err
	}
	return Step{Bytes: b}, nil
}

// byteUnits are the suffixes parseBytes accepts, longest first.
var byteUnits = []struct {
	suffix string
	mult   uint64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"B", 1},
}

// parseBytes reads "1GiB", "512Mi", "1.5G" or a plain number of bytes.
func parseBytes(v string) (uint64, error) {
	s, mult := strings.TrimSpace(v), uint64(1)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f*float64(mult) >= 1<<63 {
		return 0, fmt.Errorf("%q: want bytes like 1GiB, 512Mi or 1000000", v)
	}
	return uint64(f * float64(mult)), nil
}
