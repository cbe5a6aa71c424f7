package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/heapwatch/heapwatch/internal/vm"
)

// criContainers is where containerd's CRI plugin checkpoints each
// container's status (root of containerdConfig + the plugin's directory).
const criContainers = "/var/lib/containerd/io.containerd.grpc.v1.cri/containers"

// Exit is what containerd recorded of a container's end, to the
// nanosecond: the API's container status rounds finishedAt down to whole
// seconds.
type Exit struct {
	// StartedAt is when runc started the container's process.
	StartedAt time.Time
	// FinishedAt is when the runc shim reaped the container's process: the
	// kubelet's finishedAt.
	FinishedAt time.Time
	ExitCode   int32
	Reason     string
	// OOMEventAt is when containerd logged the shim's TaskOOM event for the
	// container (the runtime's own sighting of the kill); zero if none.
	OOMEventAt time.Time
}

// ContainerExit reads containerd's record of a finished container, given
// its ID as the API reports it ("containerd://<id>" or the bare ID).
func (n *Node) ContainerExit(ctx context.Context, containerID string) (Exit, error) {
	id := strings.TrimPrefix(containerID, "containerd://")
	status := path.Join(criContainers, id, "status")
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	res, err := n.VM.Run(ctx, vm.Command{Argv: []string{"/bin/true"}, Collect: []string{status, "/var/log/containerd.log"}})
	if err != nil {
		return Exit{}, err
	}
	return parseExit(id, res.Files[status], res.Files["/var/log/containerd.log"])
}

// parseExit reads the CRI status checkpoint (a versioned JSON document with
// nanosecond timestamps) and containerd's log.
func parseExit(id string, status, log []byte) (Exit, error) {
	var st struct {
		Version    string
		StartedAt  int64
		FinishedAt int64
		ExitCode   int32
		Reason     string
	}
	if err := json.Unmarshal(status, &st); err != nil {
		return Exit{}, fmt.Errorf("node: container %s status: %w", id, err)
	}
	if st.Version != "v1" || st.FinishedAt == 0 {
		return Exit{}, fmt.Errorf("node: container %s status %s: not a finished container (version %q)", id, status, st.Version)
	}
	e := Exit{StartedAt: time.Unix(0, st.StartedAt).UTC(), FinishedAt: time.Unix(0, st.FinishedAt).UTC(), ExitCode: st.ExitCode, Reason: st.Reason}
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "TaskOOM event") || !strings.Contains(line, id) {
			continue
		}
		at, err := logTime(line)
		if err != nil {
			return Exit{}, fmt.Errorf("node: containerd log %q: %w", line, err)
		}
		e.OOMEventAt = at
		break
	}
	return e, sc.Err()
}

// logTime is the time="..." field of a logrus text line.
func logTime(line string) (time.Time, error) {
	_, rest, ok := strings.Cut(line, `time="`)
	v, _, ok2 := strings.Cut(rest, `"`)
	if !ok || !ok2 {
		return time.Time{}, fmt.Errorf("no time field")
	}
	return time.Parse(time.RFC3339Nano, v)
}
