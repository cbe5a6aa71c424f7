package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"strconv"
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
// its ID as the API reports it ("containerd://<id>" or the bare ID). The
// kubelet removes a dead container (and containerd its status checkpoint)
// as soon as a newer one of the same pod and name has died; containerd's
// log, which outlives it, then stands in.
func (n *Node) ContainerExit(ctx context.Context, containerID string) (Exit, error) {
	id := strings.TrimPrefix(containerID, "containerd://")
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	res, err := n.VM.Run(ctx, vm.Command{Argv: []string{"/bin/sh", "-c", "cat " + path.Join(criContainers, id, "status") + " 2>/dev/null; true"},
		Collect: []string{containerdLog}})
	if err != nil {
		return Exit{}, err
	}
	return parseExit(id, res.Output, res.Files[containerdLog])
}

// containerdLog is where the node's containerd logs (logrus text, info).
const containerdLog = "/var/log/containerd.log"

// parseExit reads the CRI status checkpoint (a versioned JSON document with
// nanosecond timestamps) and containerd's log; without the checkpoint, the
// log's lines for the container: its exit event (exit status, and exited_at
// to the nanosecond), its start (logged right after the status took
// startedAt) and a TaskOOM event, which is what makes containerd's reason
// OOMKilled.
func parseExit(id string, status, log []byte) (Exit, error) {
	logged, exited, err := parseLog(id, log)
	if err != nil {
		return Exit{}, err
	}
	if len(bytes.TrimSpace(status)) > 0 {
		e, err := parseStatus(id, status)
		e.OOMEventAt = logged.OOMEventAt
		return e, err
	}
	if !exited {
		return Exit{}, fmt.Errorf("node: container %s: no status checkpoint, and no exit event in containerd's log", id)
	}
	return logged, nil
}

// parseLog is what containerd's log tells of a container's end, and
// whether it logged the exit at all.
func parseLog(id string, log []byte) (e Exit, exited bool, err error) {
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, id) {
			continue
		}
		switch {
		case strings.Contains(line, "TaskOOM event"):
			if e.OOMEventAt.IsZero() {
				if e.OOMEventAt, err = logTime(line); err != nil {
					return Exit{}, false, fmt.Errorf("node: containerd log %q: %w", line, err)
				}
			}
		case strings.Contains(line, "StartContainer for") && strings.Contains(line, "returns successfully"):
			if e.StartedAt, err = logTime(line); err != nil {
				return Exit{}, false, fmt.Errorf("node: containerd log %q: %w", line, err)
			}
		case strings.Contains(line, "received container exit event"):
			m := exitEvent.FindStringSubmatch(line)
			if m == nil {
				return Exit{}, false, fmt.Errorf("node: containerd log %q: no exit_status and exited_at", line)
			}
			code, _ := strconv.ParseInt(m[1], 10, 32)
			sec, _ := strconv.ParseInt(m[2], 10, 64)
			nsec, _ := strconv.ParseInt(m[3], 10, 64)
			e.ExitCode, e.FinishedAt, exited = int32(code), time.Unix(sec, nsec).UTC(), true
		}
	}
	switch {
	case !e.OOMEventAt.IsZero():
		e.Reason = "OOMKilled"
	case e.ExitCode != 0:
		e.Reason = "Error"
	default:
		e.Reason = "Completed"
	}
	return e, exited, sc.Err()
}

// exitEvent is the exit status and exited_at of containerd's "received
// container exit event" line.
var exitEvent = regexp.MustCompile(`exit_status:(\d+) exited_at:\{seconds:(\d+) nanos:(\d+)\}`)

// parseStatus reads the CRI status checkpoint.
func parseStatus(id string, status []byte) (Exit, error) {
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
	return Exit{StartedAt: time.Unix(0, st.StartedAt).UTC(), FinishedAt: time.Unix(0, st.FinishedAt).UTC(), ExitCode: st.ExitCode, Reason: st.Reason}, nil
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
