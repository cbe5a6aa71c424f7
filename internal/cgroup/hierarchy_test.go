package cgroup

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMemoryHierarchy(t *testing.T) {
	for _, tt := range []struct {
		name  string
		files []string // created under the root
		want  string   // below the root
	}{
		{"v1 memory hierarchy", []string{"memory/memory.usage_in_bytes", "cpu/cpu.shares"}, "memory"},
		{"v2", []string{"cgroup.controllers", "memory.stat"}, ""},
		{"v2 with a group named memory", []string{"cgroup.controllers", "memory/memory.current"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for _, f := range tt.files {
				if err := os.MkdirAll(filepath.Dir(filepath.Join(root, f)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(root, f), []byte("0\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := MemoryHierarchy(root)
			if want := filepath.Join(root, tt.want); err != nil || got != want {
				t.Errorf("MemoryHierarchy = %q, %v; want %q", got, err, want)
			}
		})
	}
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := MemoryHierarchy(notDir); err == nil {
		t.Errorf("MemoryHierarchy of a file = %q, want an error", got)
	}
}
