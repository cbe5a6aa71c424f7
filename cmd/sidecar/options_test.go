package main

import (
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/heapwatch/heapwatch/settings"
)

// TestEverySettingReachesItsOption sets each setting the sidecar reads to a
// value other than its default and checks that exactly the option of the
// part consuming it changes, to that value. A setting added to the table
// without being wired (or wired to the wrong option) fails here.
func TestEverySettingReachesItsOption(t *testing.T) {
	tests := []struct {
		setting settings.Setting
		value   string
		want    func(o *options) // the change from the defaults' options
	}{
		{settings.Thresholds, "50,80", func(o *options) { o.watch.Trigger.Thresholds = []float64{50, 80} }},
		{settings.ThresholdBytes, "1Gi", func(o *options) { o.watch.Trigger.Absolute = 1 << 30 }},
		{settings.Interval, "250ms", func(o *options) { o.watch.Trigger.Interval = 250 * time.Millisecond }},
		{settings.Cooldown, "5s", func(o *options) { o.watch.Trigger.Cooldown = 5 * time.Second }},
		{settings.MaxPerHour, "7", func(o *options) { o.watch.Trigger.MaxPerHour = 7 }},
		{settings.Horizon, "9s", func(o *options) { o.watch.Trigger.Horizon = 9 * time.Second }},
		{settings.Containers, "worker,app", func(o *options) { o.watch.Containers = []string{"app", "worker"} }},
		{settings.Ports, "6060,8080", func(o *options) { o.ports.Ports = []int{6060, 8080} }},
		{settings.PprofPath, "/internal/pprof", func(o *options) { o.client.Path = "/internal/pprof" }},
		{settings.Profiles, "allocs", func(o *options) { o.collect.Profiles = []string{"heap", "allocs"} }},
		{settings.Storage, "s3://bucket/prefix?region=eu-west-1", func(o *options) { o.storage = "s3://bucket/prefix?region=eu-west-1" }},
		{settings.SpoolBytes, "32Mi", func(o *options) { o.spool.MaxBytes = 32 << 20 }},
		{settings.SecurityMode, settings.SecurityModeSameUID, func(o *options) { o.securityMode = settings.SecurityModeSameUID }},
	}
	// The wiring's fields are zero here; compare unexported ones (a zero
	// procfs.FS) too.
	allow := cmp.Exporter(func(reflect.Type) bool { return true })
	defaults := newOptions(settings.Defaults())
	tested := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.setting.Key, func(t *testing.T) {
			tested[tt.setting.Key] = true
			cfg := settings.Defaults()
			if err := tt.setting.Set(&cfg, tt.value); err != nil {
				t.Fatal(err)
			}
			want := newOptions(settings.Defaults())
			tt.want(&want)
			if cmp.Equal(want, defaults, allow) {
				t.Fatalf("%s=%s is the default's option too: pick another value", tt.setting.Key, tt.value)
			}
			if diff := cmp.Diff(want, newOptions(cfg), allow); diff != "" {
				t.Errorf("%s=%s: options (-want +got):\n%s", tt.setting.Key, tt.value, diff)
			}
		})
	}
	for _, s := range settings.All {
		if !s.WebhookOnly && !tested[s.Key] {
			t.Errorf("setting %s is read by the sidecar but reaches no option in this test", s.Key)
		}
		if s.WebhookOnly && tested[s.Key] {
			t.Errorf("setting %s is webhook-only: the sidecar must not consume it", s.Key)
		}
	}
}
