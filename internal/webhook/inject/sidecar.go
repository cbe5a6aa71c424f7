package inject

import (
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	"github.com/heapwatch/heapwatch/names"
	"github.com/heapwatch/heapwatch/settings"
)

// Sidecar renders the sidecar container for cfg in security mode sec; the
// sidecar's HEAPWATCH_SECURITY_MODE is the mode chosen, not the request.
func Sidecar(cfg settings.Config, o Options, sec Security) corev1.Container {
	cfg.SecurityMode = sec.Mode
	res := parseResources(cfg)
	c := corev1.Container{
		Name:  names.SidecarName,
		Image: o.Image,
		Env: append([]corev1.EnvVar{
			fieldEnv(names.EnvPodName, "metadata.name"),
			fieldEnv(names.EnvPodNamespace, "metadata.namespace"),
			fieldEnv(names.EnvPodUID, "metadata.uid"),
			fieldEnv(names.EnvNodeName, "spec.nodeName"),
		}, settingsEnv(cfg, res)...),
		Resources:                res.requirements(),
		VolumeMounts:             []corev1.VolumeMount{{Name: names.SpoolVolume, MountPath: names.SpoolDir}},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext:          securityContext(sec),
	}
	if dir, _ := fileStorageDir(cfg.Storage); dir != "" {
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: names.CapturesVolume, MountPath: dir})
	}
	if o.CredentialsSecret != "" {
		c.EnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: o.CredentialsSecret},
			Optional:             ptr.To(true),
		}}}
	}
	if o.NativeSidecar {
		c.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
	}
	return c
}

func fieldEnv(name, fieldPath string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: fieldPath},
	}}
}

// settingsEnv renders the settings plus the Go runtime limits derived from
// the sidecar's own resources, as plain numbers.
func settingsEnv(cfg settings.Config, res resources) []corev1.EnvVar {
	rendered := cfg.Env()
	env := make([]corev1.EnvVar, 0, len(rendered)+2)
	for _, e := range rendered {
		env = append(env, corev1.EnvVar{Name: e.Name, Value: e.Value})
	}
	return append(env,
		corev1.EnvVar{Name: names.EnvGoMemLimit, Value: strconv.FormatInt(res.goMemLimit(), 10)},
		corev1.EnvVar{Name: names.EnvGoMaxProcs, Value: strconv.Itoa(res.goMaxProcs())},
	)
}

func volumes(cfg settings.Config) []corev1.Volume {
	spoolLimit := resource.NewQuantity(cfg.SpoolBytes+cfg.SpoolBytes/spoolHeadroomDivisor, resource.BinarySI)
	vs := []corev1.Volume{{Name: names.SpoolVolume, VolumeSource: corev1.VolumeSource{
		EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: spoolLimit},
	}}}
	if dir, _ := fileStorageDir(cfg.Storage); dir != "" {
		vs = append(vs, corev1.Volume{Name: names.CapturesVolume, VolumeSource: corev1.VolumeSource{
			EmptyDir: &corev1.EmptyDirVolumeSource{},
		}})
	}
	return vs
}
