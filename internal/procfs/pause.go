package procfs

// IsPause reports whether the process is a pod's infrastructure ("pause")
// process, which the sidecar must not watch: comm "pause", or PID 1 holding
// no listening socket (in a shared PID namespace PID 1 is the sandbox's
// init, never an app container).
func (p Proc) IsPause() (bool, error) {
	comm, err := p.Comm()
	if err != nil {
		return false, err
	}
	if comm == "pause" {
		return true, nil
	}
	if p.PID != 1 {
		return false, nil
	}
	ls, err := p.ListeningPorts()
	if err != nil {
		return false, err
	}
	return len(ls) == 0, nil
}
