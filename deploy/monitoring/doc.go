// Package monitoring validates the node agent's PrometheusRule and Grafana
// dashboard (deploy/helm/heapwatch/files) with Prometheus's own rule and
// PromQL parsers, against the metrics the agent really exports. It is a
// module of its own so the Prometheus server's dependencies stay out of
// heapwatch's go.mod; `make test` runs it.
package monitoring
