package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/heapwatch/heapwatch/certs"
	"github.com/heapwatch/heapwatch/internal/testenv"
)

var (
	loadRate     = flag.Int("load-rate", 500, "requests per second of BenchmarkLoadHTTPS")
	loadDuration = flag.Duration("load-duration", 5*time.Second, "duration of BenchmarkLoadHTTPS")
)

// apiServerPod is a Deployment's pod exactly as a real kube-apiserver sends
// it to a mutating webhook (defaulted, with managedFields and an owner),
// captured from the envtest API server: two containers, a probe, a
// ConfigMap volume, heapwatch and Prometheus annotations.
func apiServerPod(b *testing.B) []byte {
	b.Helper()
	raw, err := os.ReadFile("testdata/apiserver-pod.json")
	if err != nil {
		b.Fatal(err)
	}
	return raw
}

// BenchmarkHandle measures one admission decision and patch, without HTTP.
func BenchmarkHandle(b *testing.B) {
	h := NewHandler(testOptions(), slog.New(slog.NewJSONHandler(io.Discard, nil)))
	raw := apiServerPod(b)
	injected := applyPatch(b, raw, h.Handle(context.Background(), request(raw, "team-a")))
	for _, bc := range []struct {
		name string
		raw  []byte
	}{{"inject", raw}, {"already-injected", injected}} {
		b.Run(bc.name, func(b *testing.B) {
			req := request(bc.raw, "team-a")
			b.ReportAllocs()
			for b.Loop() {
				if resp := h.Handle(context.Background(), req); !resp.Allowed {
					b.Fatal(resp.Result)
				}
			}
		})
	}
}

// BenchmarkLoadHTTPS runs the real server (manager, TLS, controller-runtime's
// HTTP handling) on loopback and sends AdmissionReviews at a fixed rate
// (open loop: latency counts from each request's scheduled send time, so a
// stall is not hidden by the sender waiting). It reports p50/p99 latency and
// the achieved throughput; b.N is ignored, one run is the measurement.
func BenchmarkLoadHTTPS(b *testing.B) {
	url, client := startBenchServer(b)
	body := admissionReviewBody(b, apiServerPod(b))
	post := func() error {
		resp, err := client.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		answer, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		// A cheap check keeps the load client's CPU out of the way of the
		// server's; the tests check the answers in full.
		if !bytes.Contains(answer, []byte(`"allowed":true`)) || !bytes.Contains(answer, []byte(`"patch":"`)) {
			return fmt.Errorf("unexpected answer %.200s", answer)
		}
		return nil
	}
	// Warm up connections and code paths.
	for range 50 {
		if err := post(); err != nil {
			b.Fatal(err)
		}
	}
	n := int(loadDuration.Seconds() * float64(*loadRate))
	interval := time.Second / time.Duration(*loadRate)
	latencies := make([]time.Duration, n)
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		errs  int
		first error
		start = time.Now()
	)
	cpuBefore := cpuTime(b)
	b.ResetTimer()
	for i := range n {
		scheduled := start.Add(time.Duration(i) * interval)
		if d := time.Until(scheduled); d > 0 {
			time.Sleep(d)
		}
		wg.Go(func() {
			err := post()
			latencies[i] = time.Since(scheduled)
			if err != nil {
				errMu.Lock()
				errs++
				if first == nil {
					first = err
				}
				errMu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := cpuTime(b) - cpuBefore
	if errs > 0 {
		b.Fatalf("%d of %d requests failed, first: %v", errs, n, first)
	}
	slices.Sort(latencies)
	pct := func(p float64) float64 { return float64(latencies[int(p*float64(n-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(latencies[n-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(n)/elapsed.Seconds(), "req/s")
	// CPU of the whole process, load client included, per request: what
	// the latencies cost, and why they grow when other work takes the CPUs.
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(n), "cpu-ms/req")
	b.ReportMetric(0, "ns/op") // one fixed run; ns/op would be meaningless
}

// cpuTime is the user and system CPU time this process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func admissionReviewBody(b *testing.B, pod []byte) []byte {
	b.Helper()
	req := request(pod, "team-a")
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  &req.AdmissionRequest,
	})
	if err != nil {
		b.Fatal(err)
	}
	return body
}

// startBenchServer runs the manager as cmd/webhook does, with a self-signed
// certificate, and returns the webhook URL and an HTTP/2 client trusting it
// (the API server talks HTTP/2 to webhooks over TLS).
func startBenchServer(b *testing.B) (string, *http.Client) {
	b.Helper()
	dir := b.TempDir()
	ca, err := certs.WriteSelfSigned(dir, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	ports, err := testenv.FreePorts(3)
	if err != nil {
		b.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Inject = testOptions()
	cfg.CertDir, cfg.Host, cfg.Port = dir, "127.0.0.1", ports[0]
	cfg.MetricsAddr, cfg.ProbeAddr = "127.0.0.1:"+strconv.Itoa(ports[1]), "127.0.0.1:"+strconv.Itoa(ports[2])
	// Production logs every admission as JSON; so does the benchmark.
	mgr, err := NewManager(cfg, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 100,
	}}
	if err := testenv.WaitReady(ctx, fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[2]), 20*time.Second); err != nil {
		b.Fatal(err)
	}
	return fmt.Sprintf("https://127.0.0.1:%d%s", ports[0], Path), client
}
