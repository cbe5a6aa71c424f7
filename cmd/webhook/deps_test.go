package main

import (
	"testing"

	"github.com/heapwatch/heapwatch/internal/testkit"
)

// TestNoStorageSDK keeps the admission webhook free of the storage backends:
// it validates storage URLs with store/storeurl's pure grammar, and linking
// the AWS SDK (S3, STS, SSO, IMDS) would grow the binary and its attack
// surface for nothing.
func TestNoStorageSDK(t *testing.T) {
	testkit.ForbidDeps(t, "github.com/aws/")
}
