package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoKubernetesLibraries keeps the sidecar free of Kubernetes' client
// libraries: it reads plain values from its environment (the webhook parses
// the quantities and derives GOMEMLIMIT and GOMAXPROCS), so apimachinery
// and client-go would only grow the binary that runs in every pod.
func TestNoKubernetesLibraries(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for pkg := range strings.SplitSeq(string(out), "\n") {
		if strings.HasPrefix(pkg, "k8s.io/apimachinery/") || strings.HasPrefix(pkg, "k8s.io/client-go/") {
			t.Errorf("cmd/sidecar depends on %s", pkg)
		}
	}
}
