package node

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseExit(t *testing.T) {
	const id = "bd5f63db66c7"
	status := `{"Version":"v1","Pid":0,"CreatedAt":1796261900000000000,"StartedAt":1796261901000000000,"FinishedAt":1796261925123456789,"ExitCode":137,"Reason":"OOMKilled","Message":"","Resources":null}`
	log := strings.Join([]string{
		`time="2026-12-03T01:38:44.100000000Z" level=info msg="TaskOOM event container_id:\"other\""`,
		`time="2026-12-03T01:38:44.181717690Z" level=info msg="TaskOOM event container_id:\"` + id + `\""`,
		`time="2026-12-03T01:38:45.200000000Z" level=info msg="TaskExit event container_id:\"` + id + `\""`,
	}, "\n")
	got, err := parseExit(id, []byte(status), []byte(log))
	if err != nil {
		t.Fatal(err)
	}
	want := Exit{
		StartedAt:  time.Unix(0, 1796261901000000000).UTC(),
		FinishedAt: time.Unix(0, 1796261925123456789).UTC(), ExitCode: 137, Reason: "OOMKilled",
		OOMEventAt: time.Date(2026, 12, 3, 1, 38, 44, 181717690, time.UTC),
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("parseExit (-want +got):\n%s", d)
	}

	for name, tt := range map[string]struct{ status, log, err string }{
		"running container": {`{"Version":"v1","StartedAt":1}`, "", "not a finished container"},
		"unknown version":   {`{"Version":"v9","FinishedAt":1}`, "", "not a finished container"},
		"no status":         {``, "", "status"},
		"bad log time":      {status, `time="yesterday" msg="TaskOOM event ` + id + `"`, "containerd log"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseExit(id, []byte(tt.status), []byte(tt.log))
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseExit = %v, want an error containing %q", err, tt.err)
			}
		})
	}
	got, err = parseExit(id, []byte(status), nil)
	if err != nil || !got.OOMEventAt.IsZero() {
		t.Errorf("without a TaskOOM line: %+v, %v; want a zero OOMEventAt", got, err)
	}
}
