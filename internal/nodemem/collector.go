package nodemem

import (
	"errors"
	"log/slog"
	"maps"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The metric names the agent exports for node accounting.
const (
	MetricNode   = "heapwatch_node_memory_bytes"
	MetricDaemon = "heapwatch_daemon_memory_bytes"
)

var (
	nodeDesc = prometheus.NewDesc(MetricNode,
		"The node's memory by part: total (MemTotal), used (MemTotal - MemAvailable), pods (working set of the kubepods cgroup), daemons (the watched host daemons), kernel (unreclaimable slab, kernel stacks, page tables) and unaccounted (used minus the others, at least 0).",
		[]string{"part"}, nil)
	daemonDesc = prometheus.NewDesc(MetricDaemon,
		"Memory of a watched host daemon: the working set of its service cgroup, else its RSS.",
		[]string{"daemon"}, nil)
)

// Collector exports a node's accounting, read at each scrape, with the
// daemons' bytes the agent hands in as it samples them. It is safe for
// concurrent use.
type Collector struct {
	r   *Reader
	log *slog.Logger

	mu      sync.Mutex
	daemons map[string]uint64
	noPods  bool // the missing kubepods cgroup was logged
}

// NewCollector returns a Collector reading through r.
func NewCollector(r *Reader, log *slog.Logger) *Collector {
	return &Collector{r: r, log: log, daemons: map[string]uint64{}}
}

// SetDaemon records a watched daemon's latest memory figure.
func (c *Collector) SetDaemon(name string, bytes uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.daemons[name] = bytes
}

// RemoveDaemon drops a daemon that is no longer running: its series ends
// and it leaves the daemons part.
func (c *Collector) RemoveDaemon(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.daemons, name)
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nodeDesc
	ch <- daemonDesc
}

// Read returns the node's parts now. Without a kubepods cgroup the pods
// part is 0 and ok is false.
func (c *Collector) Read() (p Parts, daemons map[string]uint64, podsOK bool, err error) {
	c.mu.Lock()
	daemons = maps.Clone(c.daemons)
	c.mu.Unlock()
	m, err := c.r.Meminfo()
	if err != nil {
		return Parts{}, daemons, false, err
	}
	pods, _, err := c.r.Pods()
	switch {
	case errors.Is(err, ErrNoPodsCgroup):
		c.logPods(false, err)
	case err != nil:
		return Parts{}, daemons, false, err
	default:
		c.logPods(true, nil)
		podsOK = true
	}
	return Compute(m, pods, daemons), daemons, podsOK, nil
}

// logPods logs the kubepods cgroup going missing once, and its return.
func (c *Collector) logPods(found bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if found == !c.noPods {
		return
	}
	c.noPods = !found
	if found {
		c.log.Info("kubepods cgroup found: the pods part is exported again")
	} else {
		c.log.Warn("the pods part of node memory is not exported (pods' memory counts as unaccounted)", "err", err)
	}
}

// Collect implements prometheus.Collector. A failure to read meminfo or
// the pods' cgroup fails the scrape of the node series (the daemons'
// series are still sent).
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	p, daemons, podsOK, err := c.Read()
	for name, b := range daemons {
		ch <- prometheus.MustNewConstMetric(daemonDesc, prometheus.GaugeValue, float64(b), name)
	}
	if err != nil {
		ch <- prometheus.NewInvalidMetric(nodeDesc, err)
		return
	}
	for part, b := range p.Map() {
		if part == PartPods && !podsOK {
			continue
		}
		ch <- prometheus.MustNewConstMetric(nodeDesc, prometheus.GaugeValue, float64(b), part)
	}
}
