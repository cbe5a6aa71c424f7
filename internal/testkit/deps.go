package testkit

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// Deps lists, sorted, the packages outside the standard library that the
// package in the test's directory links (go list -deps .): for tests that
// keep a binary or a shared contract free of a dependency.
func Deps(t testing.TB) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	slices.Sort(deps)
	return deps
}

// ForbidDeps fails the test for every package the test's package links
// whose import path starts with one of prefixes.
func ForbidDeps(t testing.TB, prefixes ...string) {
	t.Helper()
	for _, pkg := range Deps(t) {
		if slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(pkg, p) }) {
			t.Errorf("depends on %s", pkg)
		}
	}
}
