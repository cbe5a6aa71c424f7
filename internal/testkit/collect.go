package testkit

import (
	"bytes"
	"slices"
	"sync"
)

// Buffer collects output from several writers (a process's stdout and
// stderr) while the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Warnings collects the Warning headers an API server sends a client: it
// is a client-go rest.WarningHandler.
type Warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *Warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

// Get returns the warnings so far.
func (w *Warnings) Get() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.list)
}

// Reset forgets the warnings so far.
func (w *Warnings) Reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = nil
}
