// Package golden compares test output with files in testdata/, rewritten
// by the test package's -update flag.
package golden

import (
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

// YAML marshals v and compares it with the golden file at path; with update
// it first writes the file.
func YAML(t testing.TB, path string, v any, update bool) {
	t.Helper()
	got, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("differs from %s (run go test -update after an intended change and review the diff):\n%s", path, got)
	}
}
