package inject

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/heapwatch/heapwatch/settings"
)

// goMemLimitPercent of the sidecar's memory limit becomes its GOMEMLIMIT,
// leaving room for stacks and runtime overhead before the kernel OOM-kills
// the sidecar.
const goMemLimitPercent = 85

// resources are the sidecar container's requests and limits: the settings'
// quantity strings parsed. Only the webhook parses quantities; the sidecar
// gets plain GOMEMLIMIT and GOMAXPROCS values instead.
type resources struct {
	cpuRequest, cpuLimit, memoryRequest, memoryLimit resource.Quantity
}

// parseResources parses the four quantity settings of cfg. A Config from
// the settings' parsers holds only values their quantity grammar accepted,
// and that grammar accepts nothing ParseQuantity rejects (settings'
// TestQuantityGrammarMatchesKubernetes), so a panic here is a programming
// error, as a bad built-in default is.
func parseResources(cfg settings.Config) resources {
	return resources{
		cpuRequest:    resource.MustParse(cfg.CPURequest),
		cpuLimit:      resource.MustParse(cfg.CPULimit),
		memoryRequest: resource.MustParse(cfg.MemoryRequest),
		memoryLimit:   resource.MustParse(cfg.MemoryLimit),
	}
}

// requirements are the sidecar container's resources.
func (r resources) requirements() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: r.cpuRequest, corev1.ResourceMemory: r.memoryRequest},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: r.cpuLimit, corev1.ResourceMemory: r.memoryLimit},
	}
}

// goMemLimit is the sidecar's GOMEMLIMIT in bytes, derived from its memory
// limit.
func (r resources) goMemLimit() int64 {
	return r.memoryLimit.Value() * goMemLimitPercent / 100
}

// goMaxProcs is the sidecar's GOMAXPROCS: its CPU limit rounded up to whole
// CPUs, at least 1.
func (r resources) goMaxProcs() int {
	return int(max(1, (r.cpuLimit.MilliValue()+999)/1000))
}
