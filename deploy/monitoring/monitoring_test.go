package monitoring

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/heapwatch/heapwatch/internal/metrics"
	"github.com/heapwatch/heapwatch/internal/nodemem"
)

const (
	rulesFile     = "../helm/heapwatch/files/heapwatch-agent-rules.yaml"
	dashboardFile = "../helm/heapwatch/files/heapwatch-nodes-dashboard.json"
)

var promql = parser.NewParser(parser.Options{})

// exported returns the names of the metrics an agent exports once it has
// sampled a daemon and stored a capture: its node accounting collector and
// the pipeline's metrics, as cmd/agent registers them.
func exported(t *testing.T) []string {
	t.Helper()
	m := metrics.New()
	r, err := nodemem.NewReader("../../internal/nodemem/testdata/v1-cgroupfs/proc", "../../internal/nodemem/testdata/v1-cgroupfs/cgroup", "")
	if err != nil {
		t.Fatal(err)
	}
	acct := nodemem.NewCollector(r, slog.New(slog.NewTextHandler(io.Discard, nil)))
	acct.SetDaemon("containerd", 1<<30)
	m.Registry.MustRegister(acct)
	m.Capture("containerd", "step", metrics.OutcomeStored)
	return names(t, m.Registry)
}

func names(t *testing.T, g prometheus.Gatherer) []string {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		out = append(out, mf.GetName())
	}
	return out
}

// selected parses a PromQL expression and returns the metric names it
// selects.
func selected(t *testing.T, where, expr string) []string {
	t.Helper()
	e, err := promql.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %q: %v", where, expr, err)
		return nil
	}
	var out []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			if vs.Name == "" {
				t.Errorf("%s: %q selects series without a metric name", where, expr)
			}
			out = append(out, vs.Name)
		}
		return nil
	})
	if len(out) == 0 {
		t.Errorf("%s: %q selects no metric", where, expr)
	}
	return out
}

func TestRulesParse(t *testing.T) {
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, promql, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, err := range errs {
		t.Error(err)
	}
	if groups == nil {
		t.FailNow()
	}
	agent := exported(t)
	var alerts []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			for _, name := range selected(t, r.Alert, r.Expr) {
				if !slices.Contains(agent, name) {
					t.Errorf("%s uses %s, which the agent does not export", r.Alert, name)
				}
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("%s: needs a severity label and a summary", r.Alert)
			}
		}
	}
	// The alerts: unaccounted or daemon memory growing steadily,
	// a daemon above a share of the node.
	want := []string{"HeapwatchUnaccountedMemoryGrowing", "HeapwatchDaemonMemoryGrowing", "HeapwatchDaemonMemoryHigh"}
	if !slices.Equal(alerts, want) {
		t.Errorf("alerts %v, want %v", alerts, want)
	}
}

// labelValues matches a Grafana template query label_values(metric, label).
var labelValues = regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)$`)

func TestDashboardQueries(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Annotations struct {
			List []struct {
				Name string `json:"name"`
				Expr string `json:"expr"`
			} `json:"list"`
		} `json:"annotations"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	agent := exported(t)
	used := map[string]bool{}
	check := func(where, expr string) {
		for _, name := range selected(t, where, expr) {
			used[name] = true
			if !slices.Contains(agent, name) {
				t.Errorf("%s uses %s, which the agent does not export", where, name)
			}
		}
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			check("panel "+p.Title, q.Expr)
		}
	}
	if len(dash.Annotations.List) == 0 {
		t.Error("no annotations: captures must be marked on the graphs")
	}
	for _, a := range dash.Annotations.List {
		check("annotation "+a.Name, a.Expr)
	}
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(map[string]any)
		query, _ := q["query"].(string)
		m := labelValues.FindStringSubmatch(strings.TrimSpace(query))
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(metric, label)", v.Name, query)
			continue
		}
		check("variable "+v.Name, m[1])
	}
	// The panel: node vs pods vs daemons, and captures.
	for _, name := range []string{nodemem.MetricNode, nodemem.MetricDaemon, "heapwatch_captures_total"} {
		if !used[name] {
			t.Errorf("the dashboard never shows %s", name)
		}
	}
}
