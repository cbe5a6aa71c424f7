package main

import (
	"context"
	"fmt"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"

	"github.com/heapwatch/heapwatch/capture/catalog"
)

// kubeFlags read the kubeconfig the way kubectl does, with kubectl's own
// flags: $KUBECONFIG or ~/.kube/config, --kubeconfig, --context,
// -n/--namespace and the rest, in-cluster when there is no kubeconfig.
type kubeFlags struct {
	*genericclioptions.ConfigFlags
}

func newKubeFlags() kubeFlags {
	return kubeFlags{genericclioptions.NewConfigFlags(true)}
}

func (k kubeFlags) addFlags(fs *pflag.FlagSet) {
	k.AddFlags(fs)
	fs.Lookup("namespace").Usage = "the pod's namespace; alone, list the namespace's recent OOM kills"
}

// namespace is -n as given; explain does not default it from the
// kubeconfig, since without it the argument may be a capture ID.
func (k kubeFlags) namespace() string { return *k.Namespace }

func (k kubeFlags) client() (kubernetes.Interface, error) {
	cfg, err := k.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return kubernetes.NewForConfig(cfg)
}

// kubeTimeout bounds the one optional API call of explain on a pod, so a
// kubeconfig for a cluster out of reach does not hold up the report.
const kubeTimeout = 5 * time.Second

// restarts is the container's restart count from its pod's status, when
// the kubeconfig reaches an API server and the pod is the one captured; nil
// otherwise, since explain works from the storage alone.
func (k kubeFlags) restarts(ctx context.Context, e *entry) *int32 {
	m := e.Meta
	if m == nil || m.PodUID == "" {
		return nil
	}
	cs, err := k.client()
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, kubeTimeout)
	defer cancel()
	p, err := cs.CoreV1().Pods(m.Namespace).Get(ctx, m.Pod, metav1.GetOptions{})
	if err != nil || string(p.UID) != m.PodUID {
		return nil
	}
	for _, c := range p.Status.ContainerStatuses {
		if c.Name == m.Container {
			return &c.RestartCount
		}
	}
	return nil
}

// killRow is one OOM kill a pod's status records.
type killRow struct {
	Pod        string    `json:"pod"`
	Container  string    `json:"container"`
	FinishedAt time.Time `json:"finishedAt"`
	Restarts   int32     `json:"restarts"`
	Capture    string    `json:"capture,omitempty"`
	Why        string    `json:"noCapture,omitempty"`
}

// listKills prints the namespace's OOM kills (each container's last
// termination, as the kubelet keeps it), newest first, with their captures.
func (a *app) listKills(ctx context.Context, k kubeFlags) error {
	cs, err := k.client()
	if err != nil {
		return err
	}
	pods, err := cs.CoreV1().Pods(k.namespace()).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing pods in %s: %w", k.namespace(), err)
	}
	st, err := a.openStore(ctx)
	if err != nil {
		return err
	}
	var rows []killRow
	for _, p := range pods.Items {
		for _, c := range p.Status.ContainerStatuses {
			t := c.LastTerminationState.Terminated
			if t == nil || t.Reason != "OOMKilled" {
				continue
			}
			row := killRow{Pod: p.Name, Container: c.Name, FinishedAt: t.FinishedAt.UTC(), Restarts: c.RestartCount}
			final, _, err := catalog.FindFinal(ctx, st, catalog.Kill{Namespace: p.Namespace, Pod: p.Name,
				PodUID: string(p.UID), Container: c.Name, At: t.FinishedAt.Time}, catalog.DefaultTolerance)
			switch {
			case err != nil:
				row.Why = err.Error()
			case final == nil:
				row.Why = "none in " + st.String()
			default:
				row.Capture = final.ID
			}
			rows = append(rows, row)
		}
	}
	slices.SortFunc(rows, func(x, y killRow) int { return y.FinishedAt.Compare(x.FinishedAt) })
	if a.jsonOutput() {
		if rows == nil {
			rows = []killRow{}
		}
		return writeJSON(a.stdout, rows)
	}
	if len(rows) == 0 {
		fmt.Fprintf(a.stderr, "no OOM kills recorded in the pods of namespace %s\n", k.namespace())
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KILLED (UTC)\tPOD/CONTAINER\tRESTARTS\tCAPTURE")
	for _, r := range rows {
		capt := r.Capture
		if capt == "" {
			capt = "- (" + r.Why + ")"
		}
		fmt.Fprintf(tw, "%s\t%s/%s\t%d\t%s\n", r.FinishedAt.Format("2006-01-02 15:04:05"), r.Pod, r.Container, r.Restarts, capt)
	}
	return tw.Flush()
}
