package watch

// DaemonSpec says how to recognise one host daemon: by the name of its
// executable, or by its memory cgroup (a path, or a systemd unit whose
// cgroup path ends with it). Name names it in capture keys, logs and
// metrics.
type DaemonSpec struct {
	Name string `json:"name"`
	// Exe is matched against the basename of /proc/<pid>/exe, falling
	// back to comm (15 characters) when the link is unreadable.
	Exe string `json:"exe,omitempty"`
	// Cgroup is a cgroup path ("/system.slice/containerd.service") or a
	// systemd unit ("containerd.service").
	Cgroup string `json:"cgroup,omitempty"`
}
