package oomevents

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestEventNameIsOnePerKill(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: strings.Repeat("p", 199) + "-" + strings.Repeat("q", 53), UID: "uid-1"}}
	t0 := time.Date(2026, 12, 2, 20, 0, 0, 0, time.UTC)
	a := eventName(pod, "app", t0)
	if errs := validation.IsDNS1123Subdomain(a); len(errs) != 0 {
		t.Errorf("event name %q is not a valid object name: %v", a, errs)
	}
	if b := eventName(pod, "app", t0.In(time.FixedZone("CET", 3600))); b != a {
		t.Errorf("the same kill in another zone got another name: %s, %s", a, b)
	}
	other := *pod
	other.UID = "uid-2"
	for what, b := range map[string]string{
		"next kill":       eventName(pod, "app", t0.Add(time.Second)),
		"other container": eventName(pod, "proxy", t0),
		"other pod UID":   eventName(&other, "app", t0),
	} {
		if b == a {
			t.Errorf("%s has the same event name %s", what, a)
		}
	}
}

func TestValidateNamesTheFlag(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	c.Tolerance, c.MaxAge = 0, time.Second
	err := c.Validate()
	for _, flag := range []string{"--tolerance", "--max-age"} {
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("Validate() = %v, want an error naming %s", err, flag)
		}
	}
}
