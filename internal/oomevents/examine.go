package oomevents

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/heapwatch/heapwatch/capture/catalog"
	"github.com/heapwatch/heapwatch/internal/profstat"
	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/settings"
	"github.com/heapwatch/heapwatch/store"
)

// examine finds the final capture of one kill and says what the Event will.
func (r *Reconciler) examine(ctx context.Context, pod *corev1.Pod, container string, finished time.Time) verdict {
	sidecar := sidecarSpec(pod)
	if sidecar == nil {
		return without(CauseNoSidecar, "the pod has no heapwatch sidecar container")
	}
	cfg, _ := settings.Defaults().FromEnv(envLookup(sidecar.Env))
	if dir, ok := strings.CutPrefix(cfg.Storage, "file://"); ok {
		return verdict{captured: true, cause: CauseStoredInPod, eventType: corev1.EventTypeNormal, reason: ReasonStoredInPod,
			message: fmt.Sprintf("container %s was OOM-killed at %s; heapwatch stores its captures in the pod, under %s in container %s "+
				"(volume %s), which the controller cannot read: kubectl cp %s/%s:%s ./heapwatch-dumps -c %s, then heapwatch explain %s/%s/%s",
				container, finished.UTC().Format(time.RFC3339), dir, names.SidecarName, names.CapturesVolume,
				pod.Namespace, pod.Name, dir, names.SidecarName, pod.Namespace, pod.Name, container)}
	}
	st, err := r.storeFor(ctx, cfg.Storage)
	if err != nil {
		return without(CauseStorage, fmt.Sprintf("storage %s cannot be opened: %v", cfg.Storage, err))
	}
	k := catalog.Kill{Namespace: pod.Namespace, Pod: pod.Name, PodUID: string(pod.UID), Container: container, At: finished}
	final, seen, err := catalog.FindFinal(ctx, st, k, r.c.Tolerance)
	if err != nil {
		return without(CauseStorage, fmt.Sprintf("storage %s unreachable: %v", st, err))
	}
	if final == nil {
		switch {
		case !sidecarRunning(pod):
			return without(CauseNoSidecar, "the heapwatch sidecar was not running")
		case !hasMemoryLimit(pod, container):
			return without(CauseNoLimit, fmt.Sprintf("container %s has no memory limit, so the sidecar has no level to trigger on", container))
		case len(seen) > 0:
			return without(CauseNotFinal, fmt.Sprintf("%d capture(s) of %s in %s, none marked final for this kill (newest %s)",
				len(seen), container, st, seen[0].ID))
		}
		return without(CauseNone, fmt.Sprintf("no capture of %s in %s: no pprof endpoint found, or the leak was faster than the sampling", container, st))
	}
	m := final.Meta
	lead := m.OOMKilledAt.Sub(m.CapturedAt)
	msg := fmt.Sprintf("capture %s, %s before the OOM kill, working set %s of %s", final.ID, lead.Round(time.Millisecond),
		mib(m.Memory.WorkingSetBytes), limitString(m.Memory.LimitBytes))
	if top, err := topFunction(ctx, st, final); err == nil {
		msg += "; top in-use: " + top
	} else {
		msg += "; heap profile unreadable: " + err.Error()
	}
	msg += "; heapwatch explain " + final.ID
	return verdict{captured: true, cause: CauseFinal, eventType: corev1.EventTypeNormal, reason: ReasonCaptured,
		message: msg, capture: final.ID, lead: lead}
}

func without(cause, why string) verdict {
	return verdict{cause: cause, eventType: corev1.EventTypeWarning, reason: ReasonWithoutProfile,
		message: "OOM-killed without a heap profile: " + why}
}

// topFunction names the function holding the most in-use heap.
func topFunction(ctx context.Context, st store.Store, e *catalog.Entry) (string, error) {
	o, err := e.ProfileObject("heap")
	if err != nil {
		return "", err
	}
	rc, err := st.Get(ctx, o.Key)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	funcs, _, err := profstat.Top(rc, "inuse_space")
	if err != nil {
		return "", err
	}
	if len(funcs) == 0 || funcs[0].Flat <= 0 {
		return "", errors.New("no in-use heap in the profile")
	}
	return funcs[0].Name + " " + mib(uint64(funcs[0].Flat)), nil
}

func sidecarSpec(pod *corev1.Pod) *corev1.Container {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			if list[i].Name == names.SidecarName {
				return &list[i]
			}
		}
	}
	return nil
}

func sidecarRunning(pod *corev1.Pod) bool {
	for _, list := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for _, cs := range list {
			if cs.Name == names.SidecarName {
				return cs.State.Running != nil || cs.LastTerminationState.Terminated == nil
			}
		}
	}
	return false
}

func hasMemoryLimit(pod *corev1.Pod, container string) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name == container {
			_, ok := c.Resources.Limits[corev1.ResourceMemory]
			return ok
		}
	}
	return false
}

func envLookup(env []corev1.EnvVar) func(string) (string, bool) {
	return func(name string) (string, bool) {
		for _, e := range env {
			if e.Name == name && e.ValueFrom == nil {
				return e.Value, true
			}
		}
		return "", false
	}
}

func mib(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func limitString(b uint64) string {
	if b == 0 {
		return "no limit"
	}
	return mib(b)
}
