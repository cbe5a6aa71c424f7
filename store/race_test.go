//go:build race

package store_test

// The race detector multiplies memory use; memory targets are not checked
// under it.
const raceEnabled = true
