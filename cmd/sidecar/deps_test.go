package main

import (
	"testing"

	"github.com/heapwatch/heapwatch/internal/testkit"
)

// TestNoKubernetesLibraries keeps the sidecar free of Kubernetes' client
// libraries: it reads plain values from its environment (the webhook parses
// the quantities and derives GOMEMLIMIT and GOMAXPROCS), so apimachinery
// and client-go would only grow the binary that runs in every pod.
func TestNoKubernetesLibraries(t *testing.T) {
	testkit.ForbidDeps(t, "k8s.io/apimachinery/", "k8s.io/client-go/")
}
