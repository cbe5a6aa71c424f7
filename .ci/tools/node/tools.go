//go:build tools

// Package tools pins the kubelet's source in this module.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kubelet"
)
