// Package wire is the protocol between the VM harness (internal/vm) and its
// guest init (internal/vm/guest): one JSON object per line over the VM's
// second serial port. It imports nothing of ours, so the guest stays small.
package wire

// TmpfsRootArg on the kernel command line makes the guest init move its
// root from the initramfs into a tmpfs before anything else.
const TmpfsRootArg = "heapwatch.tmpfsroot"

// Request asks the guest to run one command.
type Request struct {
	ID   int      `json:"id"`
	Argv []string `json:"argv,omitempty"`
	// Env is added to the guest's base environment (PATH, HOME, TMPDIR).
	Env []string `json:"env,omitempty"`
	Dir string   `json:"dir,omitempty"`
	// Collect lists guest paths (files, or directories walked) whose
	// contents come back with the result.
	Collect []string `json:"collect,omitempty"`
	// PowerOff ends the guest instead of running a command.
	PowerOff bool `json:"poweroff,omitempty"`
}

// Message is what the guest sends: Ready once after boot, then for each
// request any number of Output chunks and one Done.
type Message struct {
	Ready  bool   `json:"ready,omitempty"`
	Kernel string `json:"kernel,omitempty"` // uname -r, with Ready

	ID     int    `json:"id,omitempty"`
	Output []byte `json:"output,omitempty"` // stdout and stderr, interleaved

	Done bool `json:"done,omitempty"`
	// Exit is the exit code, 128+signal when the command was killed.
	Exit int `json:"exit,omitempty"`
	// Err says why the command could not run or a file could not be read.
	Err   string            `json:"err,omitempty"`
	Files map[string][]byte `json:"files,omitempty"`
}
