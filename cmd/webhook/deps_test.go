package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoStorageSDK keeps the admission webhook free of the storage backends:
// it validates storage URLs with store/storeurl's pure grammar, and linking
// the AWS SDK (S3, STS, SSO, IMDS) would grow the binary and its attack
// surface for nothing.
func TestNoStorageSDK(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for pkg := range strings.SplitSeq(string(out), "\n") {
		if strings.HasPrefix(pkg, "github.com/aws/") {
			t.Errorf("cmd/webhook depends on %s", pkg)
		}
	}
}
