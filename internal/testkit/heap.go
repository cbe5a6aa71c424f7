package testkit

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/google/pprof/profile"

	"github.com/heapwatch/heapwatch/capture"
	"github.com/heapwatch/heapwatch/store"
)

// FinalHeap checks that m was taken before its kill and that its heap
// profile, read from st, parses and names want as the top in-use function
// (flat, the first frame outside the runtime).
func FinalHeap(st store.Store, m *capture.Metadata, want string) error {
	if m.OOMKilledAt == nil || !m.CapturedAt.Before(*m.OOMKilledAt) {
		return fmt.Errorf("final capture %s taken at %v, kill at %v: want before", m.ID, m.CapturedAt, m.OOMKilledAt)
	}
	i := slices.IndexFunc(m.Profiles, func(p capture.Profile) bool { return p.Name == "heap" })
	if i < 0 || m.Profiles[i].Error != "" {
		return fmt.Errorf("final capture %s has no complete heap profile: %+v", m.ID, m.Profiles)
	}
	b, err := ReadObject(st, m.Profiles[i].Key)
	if err != nil {
		return err
	}
	p, err := profile.ParseData(b)
	if err != nil {
		return fmt.Errorf("heap profile %s: %w", m.Profiles[i].Key, err)
	}
	top, err := TopInUse(p)
	if err != nil {
		return fmt.Errorf("heap profile %s: %w", m.Profiles[i].Key, err)
	}
	if top != want {
		return fmt.Errorf("capture %s: top in-use function %q, want %q (trigger %s: %s)", m.ID, top, want, m.Trigger, m.Reason)
	}
	return nil
}

// TopInUse returns the function holding the most in-use bytes (flat), the
// first frame outside the runtime.
func TopInUse(p *profile.Profile) (string, error) {
	idx := slices.IndexFunc(p.SampleType, func(st *profile.ValueType) bool { return st.Type == "inuse_space" })
	if idx < 0 {
		return "", fmt.Errorf("no inuse_space sample type")
	}
	flat := map[string]int64{}
	for _, s := range p.Sample {
		if fn := leafFunction(s); fn != "" {
			flat[fn] += s.Value[idx]
		}
	}
	top, most := "", int64(0)
	for fn, v := range flat {
		if v > most {
			top, most = fn, v
		}
	}
	if top == "" {
		return "", fmt.Errorf("no in-use samples")
	}
	return top, nil
}

func leafFunction(s *profile.Sample) string {
	for _, loc := range s.Location {
		for _, line := range loc.Line {
			if name := line.Function.Name; !strings.HasPrefix(name, "runtime.") {
				return name
			}
		}
	}
	return ""
}

// ReadObject is the whole object at key in st.
func ReadObject(st store.Store, key string) ([]byte, error) {
	rc, err := st.Get(context.Background(), key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}
