//go:build tools

// Package tools pins containerd's sources in this module: the runtime of the
// node the e2e/node tests run in the cgroup v2 VM.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
