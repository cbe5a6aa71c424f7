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
	start := `time="2026-12-03T01:38:21.004000000Z" level=info msg="StartContainer for \"` + id + `\" returns successfully"`
	oom := `time="2026-12-03T01:38:44.181717690Z" level=info msg="TaskOOM event container_id:\"` + id + `\""`
	exit := func(code string) string {
		return `time="2026-12-03T01:38:45.200000000Z" level=info msg="received container exit event container_id:\"` + id + `\" id:\"` + id + `\" pid:369 exit_status:` + code + ` exited_at:{seconds:1796261925 nanos:123456789}"`
	}
	others := []string{
		`time="2026-12-03T01:38:44.100000000Z" level=info msg="TaskOOM event container_id:\"other\""`,
		`time="2026-12-03T01:38:46.000000000Z" level=info msg="received container exit event container_id:\"other\" id:\"other\" pid:1 exit_status:1 exited_at:{seconds:1 nanos:2}"`,
	}
	log := func(lines ...string) string { return strings.Join(append(lines, others...), "\n") }
	oomAt := time.Date(2026, 12, 3, 1, 38, 44, 181717690, time.UTC)
	finished := time.Unix(0, 1796261925123456789).UTC()
	loggedStart := time.Date(2026, 12, 3, 1, 38, 21, 4000000, time.UTC)
	for name, tt := range map[string]struct {
		status, log string
		want        Exit
	}{
		"status checkpoint": {status, log(start, oom, exit("137")), Exit{
			StartedAt: time.Unix(0, 1796261901000000000).UTC(), FinishedAt: finished, ExitCode: 137, Reason: "OOMKilled", OOMEventAt: oomAt}},
		"status without a TaskOOM line": {status, log(start, exit("137")), Exit{
			StartedAt: time.Unix(0, 1796261901000000000).UTC(), FinishedAt: finished, ExitCode: 137, Reason: "OOMKilled"}},
		"removed container, OOM-killed": {"", log(start, oom, exit("137")), Exit{
			StartedAt: loggedStart, FinishedAt: finished, ExitCode: 137, Reason: "OOMKilled", OOMEventAt: oomAt}},
		"removed container, failed": {"\n", log(start, exit("2")), Exit{
			StartedAt: loggedStart, FinishedAt: finished, ExitCode: 2, Reason: "Error"}},
		"removed container, completed": {"", log(start, exit("0")), Exit{
			StartedAt: loggedStart, FinishedAt: finished, ExitCode: 0, Reason: "Completed"}},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := parseExit(id, []byte(tt.status), []byte(tt.log))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("parseExit (-want +got):\n%s", d)
			}
		})
	}

	for name, tt := range map[string]struct{ status, log, err string }{
		"running container":       {`{"Version":"v1","StartedAt":1}`, "", "not a finished container"},
		"unknown version":         {`{"Version":"v9","FinishedAt":1}`, "", "not a finished container"},
		"bad status":              {`{"Version":`, "", "status"},
		"removed, never exited":   {"", log(start, oom), "no exit event"},
		"bad log time":            {status, `time="yesterday" msg="TaskOOM event ` + id + `"`, "containerd log"},
		"exit event without time": {"", `time="2026-12-03T01:38:45Z" msg="received container exit event container_id:\"` + id + `\" exit_status:137"`, "no exit_status and exited_at"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseExit(id, []byte(tt.status), []byte(tt.log))
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseExit = %v, want an error containing %q", err, tt.err)
			}
		})
	}
}
