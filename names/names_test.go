package names

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/heapwatch/heapwatch/internal/testkit"
)

// TestLeaf keeps names importable by every binary at no cost.
func TestLeaf(t *testing.T) {
	if diff := cmp.Diff([]string{"github.com/heapwatch/heapwatch/names"}, testkit.Deps(t)); diff != "" {
		t.Errorf("names depends on (-want +got):\n%s", diff)
	}
}
