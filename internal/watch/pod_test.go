package watch

import (
	"os"
	"testing"

	"github.com/heapwatch/heapwatch/capture"
)

func TestPodFromEnv(t *testing.T) {
	host, _ := os.Hostname()
	env := map[string]string{"POD_NAME": "web-1", "POD_NAMESPACE": "shop", "POD_UID": "u", "NODE_NAME": "n1"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if got := PodFromEnv(lookup); got != (capture.PodContainer{Namespace: "shop", Pod: "web-1", UID: "u", Node: "n1"}) {
		t.Errorf("PodFromEnv = %+v", got)
	}
	none := func(string) (string, bool) { return "", false }
	got := PodFromEnv(none)
	if got.Pod != host || got.Node != host || got.Namespace == "" {
		t.Errorf("fallback = %+v, want hostname %q", got, host)
	}
}
