// Package podgen builds pods for tests: a typical Go app pod by default,
// changed by options.
package podgen

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Option changes a pod under construction.
type Option func(*corev1.Pod)

// Pod returns a pod named name (use GenerateName for controller-made pods)
// with one container "app" that has a memory limit, as a Deployment would
// create it.
func Pod(name string, opts ...Option) *corev1.Pod {
	p := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "leaky"}},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{App("app")},
		},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// App returns an app container with requests and a memory limit.
func App(name string) corev1.Container {
	return corev1.Container{
		Name:  name,
		Image: "registry.example/leaky:1.0",
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		Env:   []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
		},
	}
}

// Namespace sets the pod's namespace.
func Namespace(ns string) Option { return func(p *corev1.Pod) { p.Namespace = ns } }

// GenerateName clears the name and sets generateName, as controllers do.
func GenerateName(prefix string) Option {
	return func(p *corev1.Pod) { p.Name, p.GenerateName = "", prefix }
}

// Annotations adds annotations in key, value pairs.
func Annotations(kv ...string) Option {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		for i := 0; i+1 < len(kv); i += 2 {
			p.Annotations[kv[i]] = kv[i+1]
		}
	}
}

// Labels adds labels in key, value pairs.
func Labels(kv ...string) Option {
	return func(p *corev1.Pod) {
		for i := 0; i+1 < len(kv); i += 2 {
			p.Labels[kv[i]] = kv[i+1]
		}
	}
}

// Containers adds app containers with these names.
func Containers(names ...string) Option {
	return func(p *corev1.Pod) {
		for _, n := range names {
			p.Spec.Containers = append(p.Spec.Containers, App(n))
		}
	}
}

// InitContainer adds a regular init container.
func InitContainer(name string) Option {
	return func(p *corev1.Pod) {
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: name, Image: "registry.example/migrate:1.0"})
	}
}

// HostPID puts the pod in the host's PID namespace.
func HostPID() Option { return func(p *corev1.Pod) { p.Spec.HostPID = true } }

// ShareProcessNamespace sets shareProcessNamespace explicitly.
func ShareProcessNamespace(v bool) Option {
	return func(p *corev1.Pod) { p.Spec.ShareProcessNamespace = ptr.To(v) }
}

// OS sets spec.os.name.
func OS(name corev1.OSName) Option {
	return func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: name} }
}

// NodeSelector adds a node selector entry.
func NodeSelector(key, value string) Option {
	return func(p *corev1.Pod) {
		if p.Spec.NodeSelector == nil {
			p.Spec.NodeSelector = map[string]string{}
		}
		p.Spec.NodeSelector[key] = value
	}
}

// RequiredNodeAffinity adds one required node selector term per expression
// list; terms are ORed by the scheduler.
func RequiredNodeAffinity(terms ...[]corev1.NodeSelectorRequirement) Option {
	return func(p *corev1.Pod) {
		ns := &corev1.NodeSelector{}
		for _, t := range terms {
			ns.NodeSelectorTerms = append(ns.NodeSelectorTerms, corev1.NodeSelectorTerm{MatchExpressions: t})
		}
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: ns}}
	}
}

// Volume adds an emptyDir volume.
func Volume(name string) Option {
	return func(p *corev1.Pod) {
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	}
}

// Env sets an env var in the named container.
func Env(container, name, value string) Option {
	return func(p *corev1.Pod) {
		for i := range p.Spec.Containers {
			if p.Spec.Containers[i].Name == container {
				p.Spec.Containers[i].Env = append(p.Spec.Containers[i].Env, corev1.EnvVar{Name: name, Value: value})
			}
		}
	}
}

// RunAs sets the pod-level runAsUser and runAsGroup.
func RunAs(uid, gid int64) Option {
	return func(p *corev1.Pod) {
		psc := podSecurity(p)
		psc.RunAsUser, psc.RunAsGroup = ptr.To(uid), ptr.To(gid)
	}
}

// ContainerSecurity sets the named container's security context.
func ContainerSecurity(container string, sc *corev1.SecurityContext) Option {
	return func(p *corev1.Pod) {
		for i := range p.Spec.Containers {
			if p.Spec.Containers[i].Name == container {
				p.Spec.Containers[i].SecurityContext = sc
			}
		}
	}
}

// Restricted makes the pod, as built so far, pass Pod Security restricted
// apart from the user it runs as: runAsNonRoot and RuntimeDefault seccomp
// for the pod, no privilege escalation and no capabilities for every
// container. Give it after the options adding containers.
func Restricted() Option {
	return func(p *corev1.Pod) {
		psc := podSecurity(p)
		psc.RunAsNonRoot = ptr.To(true)
		psc.SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
		for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
			for i := range cs {
				if cs[i].SecurityContext == nil {
					cs[i].SecurityContext = &corev1.SecurityContext{}
				}
				cs[i].SecurityContext.AllowPrivilegeEscalation = ptr.To(false)
				cs[i].SecurityContext.Capabilities = &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}
			}
		}
	}
}

func podSecurity(p *corev1.Pod) *corev1.PodSecurityContext {
	if p.Spec.SecurityContext == nil {
		p.Spec.SecurityContext = &corev1.PodSecurityContext{}
	}
	return p.Spec.SecurityContext
}
