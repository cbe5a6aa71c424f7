package inject_test

import (
	"flag"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/heapwatch/heapwatch/internal/webhook/inject"
	"github.com/heapwatch/heapwatch/internal/webhook/internal/golden"
	"github.com/heapwatch/heapwatch/internal/webhook/internal/podgen"
	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/settings"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func options(mods ...func(*inject.Options)) inject.Options {
	o := inject.Options{Image: "ghcr.io/heapwatch/heapwatch-sidecar:v1", Defaults: settings.Defaults(), NativeSidecar: true}
	for _, m := range mods {
		m(&o)
	}
	return o
}

func sidecarOf(t *testing.T, p *corev1.Pod) corev1.Container {
	t.Helper()
	for _, c := range append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...) {
		if c.Name == names.SidecarName {
			return c
		}
	}
	t.Fatalf("pod has no %s container", names.SidecarName)
	return corev1.Container{}
}

func env(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

func countEnv(c corev1.Container, name string) int {
	n := 0
	for _, e := range c.Env {
		if e.Name == name {
			n++
		}
	}
	return n
}

func TestInjectSkips(t *testing.T) {
	linux := []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/os", Operator: corev1.NodeSelectorOpIn, Values: []string{"linux"}}}
	win := []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/os", Operator: corev1.NodeSelectorOpIn, Values: []string{"windows"}}}
	tests := []struct {
		name    string
		pod     *corev1.Pod
		reason  inject.Reason
		warning string // substring of the single warning; "" means no warning
	}{
		{"status annotation", podgen.Pod("p", podgen.Annotations(names.StatusAnnotation, "injected")), inject.ReasonAlreadyInjected, ""},
		{"sidecar container", podgen.Pod("p", podgen.Containers(names.SidecarName)), inject.ReasonAlreadyInjected, ""},
		{"sidecar init container", podgen.Pod("p", podgen.InitContainer(names.SidecarName)), inject.ReasonAlreadyInjected, ""},
		{"annotation false", podgen.Pod("p", podgen.Annotations(names.InjectAnnotation, "false")), inject.ReasonOptOut, `annotation heapwatch.io/inject="false"`},
		{"annotation False", podgen.Pod("p", podgen.Annotations(names.InjectAnnotation, "False")), inject.ReasonOptOut, "opted out"},
		{"label disabled", podgen.Pod("p", podgen.Labels(names.InjectLabel, "disabled")), inject.ReasonOptOut, "label heapwatch.io/inject=disabled"},
		{"hostPID", podgen.Pod("p", podgen.HostPID()), inject.ReasonHostPID, "hostPID"},
		{"shareProcessNamespace false", podgen.Pod("p", podgen.ShareProcessNamespace(false)), inject.ReasonNoShareProcessNS, "shareProcessNamespace: false"},
		{"spec.os windows", podgen.Pod("p", podgen.OS(corev1.Windows)), inject.ReasonWindows, "Windows"},
		{"nodeSelector windows", podgen.Pod("p", podgen.NodeSelector("kubernetes.io/os", "windows")), inject.ReasonWindows, "Windows"},
		{"affinity windows only", podgen.Pod("p", podgen.RequiredNodeAffinity(win, win)), inject.ReasonWindows, "Windows"},
		{"volume name taken", podgen.Pod("p", podgen.Volume(names.SpoolVolume)), inject.ReasonVolumeNameConflict, `volume named "heapwatch-spool"`},
		{"not skipped: affinity linux or windows", podgen.Pod("p", podgen.RequiredNodeAffinity(linux, win)), "", ""},
		{"not skipped: shareProcessNamespace true", podgen.Pod("p", podgen.ShareProcessNamespace(true)), "", ""},
		{"not skipped: annotation true", podgen.Pod("p", podgen.Annotations(names.InjectAnnotation, "true")), "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.pod.DeepCopy()
			r := inject.Inject(tt.pod, options())
			if r.Reason != tt.reason {
				t.Fatalf("reason = %q, want %q", r.Reason, tt.reason)
			}
			if r.Injected != (tt.reason == "") {
				t.Errorf("Injected = %v with reason %q", r.Injected, r.Reason)
			}
			if tt.reason == "" {
				if len(r.Warnings) != 0 {
					t.Errorf("warnings = %q, want none", r.Warnings)
				}
				return
			}
			if !equality.Semantic.DeepEqual(before, tt.pod) {
				t.Errorf("skipped pod was changed")
			}
			switch {
			case tt.warning == "" && len(r.Warnings) != 0:
				t.Errorf("warnings = %q, want none", r.Warnings)
			case tt.warning != "" && (len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], tt.warning)):
				t.Errorf("warnings = %q, want one containing %q", r.Warnings, tt.warning)
			}
		})
	}
}

func TestInjectTypicalPod(t *testing.T) {
	for _, native := range []bool{true, false} {
		t.Run(map[bool]string{true: "native", false: "regular"}[native], func(t *testing.T) {
			p := podgen.Pod("", podgen.GenerateName("leaky-7d9f-"), podgen.InitContainer("migrate"), podgen.Containers("proxy"))
			r := inject.Inject(p, options(func(o *inject.Options) { o.NativeSidecar = native }))
			if !r.Injected || len(r.Warnings) != 0 {
				t.Fatalf("result = %+v, want injected without warnings", r)
			}
			if p.Spec.ShareProcessNamespace == nil || !*p.Spec.ShareProcessNamespace {
				t.Error("shareProcessNamespace not set")
			}
			if got := p.Annotations[names.StatusAnnotation]; got != names.StatusInjected {
				t.Errorf("status annotation = %q", got)
			}
			if got := p.Labels[names.StatusLabel]; got != names.StatusInjected {
				t.Errorf("status label = %q, want %q", got, names.StatusInjected)
			}
			if native {
				if n := len(p.Spec.InitContainers); n != 2 || p.Spec.InitContainers[1].Name != names.SidecarName {
					t.Fatalf("init containers = %v, want migrate then the sidecar", containerNames(p.Spec.InitContainers))
				}
				if rp := p.Spec.InitContainers[1].RestartPolicy; rp == nil || *rp != corev1.ContainerRestartPolicyAlways {
					t.Error("native sidecar lacks restartPolicy Always")
				}
			} else {
				if got := containerNames(p.Spec.Containers); !slices.Equal(got, []string{"app", "proxy", names.SidecarName}) {
					t.Fatalf("containers = %v", got)
				}
				if len(p.Spec.InitContainers) != 1 || p.Spec.Containers[2].RestartPolicy != nil {
					t.Error("regular sidecar must not be an init container or set restartPolicy")
				}
			}
			for _, c := range p.Spec.Containers {
				v, ok := env(c, names.ContainerNameEnv)
				if c.Name == names.SidecarName {
					if ok {
						t.Errorf("sidecar has %s", names.ContainerNameEnv)
					}
					continue
				}
				if v != c.Name {
					t.Errorf("container %s: %s = %q", c.Name, names.ContainerNameEnv, v)
				}
			}
			if _, ok := env(p.Spec.InitContainers[0], names.ContainerNameEnv); ok {
				t.Error("init container migrate got the container-name variable")
			}
			vols := map[string]corev1.Volume{}
			for _, v := range p.Spec.Volumes {
				vols[v.Name] = v
			}
			spool, ok := vols[names.SpoolVolume]
			if !ok || spool.EmptyDir == nil || spool.EmptyDir.SizeLimit == nil || spool.EmptyDir.SizeLimit.Value() != 320<<20 {
				t.Errorf("spool volume = %+v, want emptyDir with sizeLimit 320Mi (256Mi + 25%%)", spool)
			}
			if v, ok := vols[names.CapturesVolume]; !ok || v.EmptyDir == nil {
				t.Errorf("captures volume missing for the default file storage")
			}
		})
	}
}

func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func TestInjectSettings(t *testing.T) {
	tests := []struct {
		name     string
		opts     []podgen.Option
		env      map[string]string // expected sidecar env values
		requests corev1.ResourceList
		warnings []string // expected warnings, exactly
	}{
		{
			name: "annotations override defaults",
			opts: []podgen.Option{podgen.Annotations("heapwatch.io/thresholds", "90, 50", "heapwatch.io/interval", "250ms", "heapwatch.io/storage", "s3://bucket/prof?region=eu-west-1")},
			env:  map[string]string{"HEAPWATCH_THRESHOLDS": "50,90", "HEAPWATCH_INTERVAL": "250ms", "HEAPWATCH_STORAGE": "s3://bucket/prof?region=eu-west-1", "HEAPWATCH_COOLDOWN": "30s"},
		},
		{
			name:     "invalid value keeps the default and warns",
			opts:     []podgen.Option{podgen.Annotations("heapwatch.io/interval", "fast", "heapwatch.io/cooldown", "1m")},
			env:      map[string]string{"HEAPWATCH_INTERVAL": "100ms", "HEAPWATCH_COOLDOWN": "1m0s"},
			warnings: []string{`heapwatch.io/interval: invalid value "fast" (not a duration (e.g. 100ms, 30s)); using "100ms"`},
		},
		{
			name: "huge invalid value is quoted shortened",
			opts: []podgen.Option{podgen.Annotations("heapwatch.io/thresholds", strings.Repeat("9", 3<<20))},
			env:  map[string]string{"HEAPWATCH_THRESHOLDS": "60,75,90"},
			warnings: []string{`heapwatch.io/thresholds: invalid value "` + strings.Repeat("9", 20) + "..." + strings.Repeat("9", 60) +
				`" ("` + strings.Repeat("9", 19) + `...` + strings.Repeat("9", 9) + `" is not a percentage between 0 and 100 (exclusive)); using "60,75,90"`},
		},
		{
			name:     "memory request above limit is clamped",
			opts:     []podgen.Option{podgen.Annotations("heapwatch.io/memory-request", "1Gi")},
			requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")},
			warnings: []string{"heapwatch.io/memory-request 1Gi exceeds heapwatch.io/memory-limit 128Mi; using 128Mi"},
		},
		{
			name:     "file storage on the spool falls back to the default",
			opts:     []podgen.Option{podgen.Annotations("heapwatch.io/storage", "file:///var/lib/heapwatch")},
			env:      map[string]string{"HEAPWATCH_STORAGE": "file:///var/lib/heapwatch/captures"},
			warnings: []string{`heapwatch.io/storage: invalid value "file:///var/lib/heapwatch" (file storage directory /var/lib/heapwatch overlaps / or the spool /var/lib/heapwatch/spool); using "file:///var/lib/heapwatch/captures"`},
		},
		{
			name:     "unknown container named",
			opts:     []podgen.Option{podgen.Annotations("heapwatch.io/containers", "app,worker")},
			env:      map[string]string{"HEAPWATCH_CONTAINERS": "app,worker"},
			warnings: []string{"heapwatch.io/containers names no container of this pod: worker"},
		},
		{
			name:     "inject annotation typo still injects",
			opts:     []podgen.Option{podgen.Annotations(names.InjectAnnotation, "no")},
			warnings: []string{`heapwatch.io/inject: invalid value "no" (want "true" or "false"); injecting`},
		},
		{
			name: "runtime limits follow the sidecar's limits",
			opts: []podgen.Option{podgen.Annotations("heapwatch.io/memory-limit", "200Mi", "heapwatch.io/cpu-limit", "1500m")},
			env:  map[string]string{"GOMEMLIMIT": "178257920", "GOMAXPROCS": "2"},
		},
		{
			name: "small CPU limit still gets one proc",
			opts: []podgen.Option{podgen.Annotations("heapwatch.io/cpu-limit", "100m")},
			env:  map[string]string{"GOMAXPROCS": "1", "GOMEMLIMIT": "114085068"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := podgen.Pod("p", tt.opts...)
			r := inject.Inject(p, options())
			if !r.Injected {
				t.Fatalf("not injected: %s", r.Reason)
			}
			if !slices.Equal(r.Warnings, tt.warnings) {
				t.Errorf("warnings:\n got %q\nwant %q", r.Warnings, tt.warnings)
			}
			sc := sidecarOf(t, p)
			for k, want := range tt.env {
				if got, _ := env(sc, k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			for k, want := range tt.requests {
				if got := sc.Resources.Requests[k]; got.Cmp(want) != 0 {
					t.Errorf("requests.%s = %v, want %v", k, &got, &want)
				}
			}
			for _, e := range sc.Env {
				if countEnv(sc, e.Name) != 1 {
					t.Errorf("sidecar env %s defined more than once", e.Name)
				}
			}
			if sc.Resources.Requests.Memory().Cmp(*sc.Resources.Limits.Memory()) > 0 {
				t.Errorf("memory request %v above limit %v", sc.Resources.Requests.Memory(), sc.Resources.Limits.Memory())
			}
		})
	}
}

func TestInjectWatchedContainers(t *testing.T) {
	p := podgen.Pod("p", podgen.Containers("proxy"), podgen.Env("app", names.ContainerNameEnv, "stale"),
		podgen.Annotations("heapwatch.io/containers", "app"))
	if r := inject.Inject(p, options()); !r.Injected {
		t.Fatalf("not injected: %s", r.Reason)
	}
	app, proxy := p.Spec.Containers[0], p.Spec.Containers[1]
	if v, _ := env(app, names.ContainerNameEnv); v != "app" || countEnv(app, names.ContainerNameEnv) != 1 {
		t.Errorf("app: %s = %q (defined %d times), want one definition \"app\"", names.ContainerNameEnv, v, countEnv(app, names.ContainerNameEnv))
	}
	if _, ok := env(proxy, names.ContainerNameEnv); ok {
		t.Error("unwatched container proxy got the container-name variable")
	}
}

func TestInjectFileStorageMount(t *testing.T) {
	tests := []struct {
		storage string
		mount   string // "" means no captures volume
	}{
		{"file:///var/lib/heapwatch/captures", "/var/lib/heapwatch/captures"},
		{"file:///data/profiles/", "/data/profiles"},
		{"s3://bucket/prefix", ""},
	}
	for _, tt := range tests {
		t.Run(tt.storage, func(t *testing.T) {
			p := podgen.Pod("p", podgen.Annotations("heapwatch.io/storage", tt.storage))
			if r := inject.Inject(p, options()); !r.Injected || len(r.Warnings) != 0 {
				t.Fatalf("result = %+v", r)
			}
			var mount string
			for _, m := range sidecarOf(t, p).VolumeMounts {
				if m.Name == names.CapturesVolume {
					mount = m.MountPath
				}
			}
			hasVolume := slices.ContainsFunc(p.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == names.CapturesVolume })
			if mount != tt.mount || hasVolume != (tt.mount != "") {
				t.Errorf("captures mount = %q (volume %v), want %q", mount, hasVolume, tt.mount)
			}
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	bad := options(func(o *inject.Options) {
		o.Image = ""
		o.CredentialsSecret = "Bad_Name"
		o.Defaults.Storage = "file:///"
		o.Defaults.MemoryRequest = "1Gi"
	})
	err := bad.Validate()
	if err == nil {
		t.Fatal("Validate accepted bad options")
	}
	for _, flag := range []string{"--sidecar-image", "--credentials-secret", "--default-storage", "--default-memory-request"} {
		if !strings.Contains(err.Error(), flag) {
			t.Errorf("error %q does not name %s", err, flag)
		}
	}
	if err := options(func(o *inject.Options) { o.CredentialsSecret = "heapwatch-s3" }).Validate(); err != nil {
		t.Errorf("good options: %v", err)
	}
}

// TestSidecarGolden pins the rendered sidecar container; run with -update
// after an intended change and review the diff.
func TestSidecarGolden(t *testing.T) {
	tests := []struct {
		name string
		opts inject.Options
		ann  map[string]string
		sec  inject.Security
	}{
		{"native-defaults", options(), nil, inject.Security{Mode: settings.SecurityModePrivilegedReader}},
		{"native-same-uid", options(), nil, inject.Security{Mode: settings.SecurityModeSameUID, UID: 1000, GID: 3000}},
		{"regular-s3-credentials", options(func(o *inject.Options) {
			o.NativeSidecar = false
			o.CredentialsSecret = "heapwatch-s3"
		}), map[string]string{"heapwatch.io/storage": "s3://captures/team-a?region=eu-west-1", "heapwatch.io/cpu-limit": "2", "heapwatch.io/memory-limit": "256Mi"}, inject.Security{Mode: settings.SecurityModePrivilegedReader}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, problems := tt.opts.Defaults.FromAnnotations(tt.ann)
			if len(problems) > 0 {
				t.Fatalf("problems: %v", problems)
			}
			golden.YAML(t, filepath.Join("testdata", tt.name+".yaml"), inject.Sidecar(cfg, tt.opts, tt.sec), *update)
		})
	}
}
