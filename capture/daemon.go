package capture

// DaemonKind is the TargetKind of a host daemon's captures.
const DaemonKind = "daemon"

// NodeSegment leads every key of a host daemon's captures. A Kubernetes
// namespace can never start with "_", so these keys never mix with a pod's.
const NodeSegment = "_node"

// Daemon is a process on a node's host outside any pod (containerd, the
// kubelet, ...), the node agent's target. Its keys lead with
// _node/<node>/<daemon>.
type Daemon struct {
	Node, Name string
}

var _ Target = Daemon{}

func init() {
	RegisterTarget(DaemonKind, func(m *Metadata) Target { return Daemon{Node: m.Node, Name: m.Daemon} })
}

// Segments are _node, the node and the daemon's name.
func (d Daemon) Segments() [3]string { return [3]string{NodeSegment, d.Node, d.Name} }

// Describe sets the daemon's fields of the metadata; the pod's stay empty.
func (d Daemon) Describe(m *Metadata) {
	m.TargetKind = DaemonKind
	m.Namespace, m.Pod, m.PodUID, m.Container = "", "", "", ""
	m.Node, m.Daemon = d.Node, d.Name
}
