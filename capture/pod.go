package capture

// PodContainer is a container of a pod, the sidecar's target. Its keys
// lead with namespace/pod/container.
type PodContainer struct {
	Namespace, Pod, UID, Node string
	Container                 string
}

var _ Target = PodContainer{}

// Segments are namespace, pod and container.
func (p PodContainer) Segments() [3]string { return [3]string{p.Namespace, p.Pod, p.Container} }

// Describe sets the pod's fields of the metadata.
func (p PodContainer) Describe(m *Metadata) {
	m.TargetKind = ""
	m.Namespace, m.Pod, m.PodUID, m.Node, m.Container = p.Namespace, p.Pod, p.UID, p.Node, p.Container
}
