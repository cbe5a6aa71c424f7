package metrics

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestNilMetricsIsANoOp(t *testing.T) {
	var m *Metrics
	m.Usage("app", 1, 2, 3)
	m.Capture("app", "threshold-60", OutcomeStored)
	m.Suppressed("app", "threshold-60", "cooldown")
	m.OOMKill("app")
	m.DetectionLatency(time.Millisecond)
	m.Uploaded()
	m.UploadFailed()
	m.SpoolBytes(1)
	m.SpoolDropped(1)
	m.SetUnwatched(map[string]string{"app": "no-limit"})
}

func TestServeExposesMetrics(t *testing.T) {
	m := New()
	m.Usage("app", 90, 100, 200)
	m.Capture("app", "threshold-60", OutcomeStored)
	m.Suppressed("app", "threshold-75", "cooldown")
	m.DetectionLatency(700 * time.Microsecond)
	m.SpoolDropped(4096)
	m.SetUnwatched(map[string]string{"gone": "no-limit"})
	m.SetUnwatched(map[string]string{"db": "permission-denied"}) // replaces the set

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, addr, slog.New(slog.DiscardHandler)) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	var body string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	for _, want := range []string{
		`heapwatch_container_memory_usage_ratio{container="app"} 0.5`,
		`heapwatch_captures_total{container="app",outcome="stored",trigger="threshold-60"} 1`,
		`heapwatch_triggers_suppressed_total{container="app",reason="cooldown",trigger="threshold-75"} 1`,
		`heapwatch_detection_latency_seconds_bucket{le="0.001"} 1`,
		`heapwatch_detection_latency_seconds_bucket{le="0.0005"} 0`,
		`heapwatch_spool_dropped_bytes_total 4096`,
		`heapwatch_unwatched_containers{container="db",reason="permission-denied"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(body, `container="gone"`) {
		t.Errorf("/metrics still has the unwatched container of a replaced set")
	}
}

func TestServeReportsListenError(t *testing.T) {
	if err := New().Serve(context.Background(), "256.0.0.1:1", slog.New(slog.DiscardHandler)); err == nil {
		t.Error("Serve on an impossible address succeeded")
	}
}
