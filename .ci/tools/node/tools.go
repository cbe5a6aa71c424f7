//go:build tools

// Package tools pins the kubelet's and kube-controller-manager's source in
// this module (the controller-manager runs the Job controller on the host).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
