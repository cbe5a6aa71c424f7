// Package integration tests the webhook against a real kube-apiserver and
// etcd: registered through the MutatingWebhookConfiguration from deploy/,
// serving over TLS from a certificate directory laid out as the kubelet
// mounts a Secret.
package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/heapwatch/heapwatch/certs"
	"github.com/heapwatch/heapwatch/deploy"
	"github.com/heapwatch/heapwatch/internal/testenv"
	"github.com/heapwatch/heapwatch/internal/testkit"
	"github.com/heapwatch/heapwatch/internal/webhook"
	"github.com/heapwatch/heapwatch/internal/webhook/internal/podgen"
	"github.com/heapwatch/heapwatch/names"
)

const sidecarImage = "ghcr.io/heapwatch/heapwatch-sidecar:test"

var (
	restConfig *rest.Config
	// main is the webhook every test but the stopped-webhook one talks to,
	// registered with the configuration rendered from deploy/.
	main *server
	ca   *certs.CA
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	crds, err := testenv.CertManagerCRDs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env, err := testenv.Start(crds)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping envtest:", err)
		}
	}()
	restConfig = env.Config
	tmp, err := os.MkdirTemp("", "heapwatch-webhook-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	if ca, err = certs.NewCA("heapwatch-test-ca", time.Hour); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	main, err = startServer(filepath.Join(tmp, "main"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the webhook:", err)
		return 1
	}
	defer main.stop()
	if err := register(context.Background(), "heapwatch-under-test", main, nil); err != nil {
		fmt.Fprintln(os.Stderr, "registering the webhook:", err)
		return 1
	}
	return m.Run()
}

// server is one running webhook manager.
type server struct {
	port, metricsPort, probePort int
	certs                        *certDir
	cancel                       context.CancelFunc
	done                         chan error
}

// startServer runs the webhook as cmd/webhook does, on loopback, and waits
// until it reports ready; change adjusts the configuration.
func startServer(dir string, change ...func(*webhook.Config)) (*server, error) {
	s := &server{certs: &certDir{dir: dir}, done: make(chan error, 1)}
	if err := s.certs.rotate(); err != nil {
		return nil, err
	}
	ports, err := testenv.FreePorts(3)
	if err != nil {
		return nil, err
	}
	s.port, s.metricsPort, s.probePort = ports[0], ports[1], ports[2]
	cfg := webhook.DefaultConfig()
	cfg.Inject.Image = sidecarImage
	cfg.Inject.CredentialsSecret = "heapwatch-s3"
	cfg.CertDir = dir
	cfg.Host = "127.0.0.1"
	cfg.Port = s.port
	cfg.MetricsAddr = "127.0.0.1:" + strconv.Itoa(s.metricsPort)
	cfg.ProbeAddr = "127.0.0.1:" + strconv.Itoa(s.probePort)
	for _, c := range change {
		c(&cfg)
	}
	mgr, err := webhook.NewManager(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.done <- mgr.Start(ctx) }()
	if err := testenv.WaitReady(ctx, fmt.Sprintf("http://127.0.0.1:%d/readyz", s.probePort), 30*time.Second); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

func (s *server) stop() error {
	s.cancel()
	return <-s.done
}

func (s *server) url() string { return fmt.Sprintf("https://127.0.0.1:%d", s.port) }

// certDir lays out a serving certificate as the kubelet projects a Secret:
// the files are symlinks through ..data, which is swapped atomically to a
// new timestamped directory on every update.
type certDir struct {
	dir string
	gen int
	// serial of the certificate last written.
	serial string
}

func (d *certDir) rotate() error {
	certPEM, keyPEM, err := ca.Issue([]string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		return err
	}
	d.gen++
	gen := fmt.Sprintf("..gen_%d", d.gen)
	if err := os.MkdirAll(filepath.Join(d.dir, gen), 0o755); err != nil {
		return err
	}
	for name, data := range map[string][]byte{certs.CertFile: certPEM, certs.KeyFile: keyPEM, certs.CAFile: ca.PEM} {
		if err := os.WriteFile(filepath.Join(d.dir, gen, name), data, 0o600); err != nil {
			return err
		}
	}
	tmp := filepath.Join(d.dir, "..data_tmp")
	if err := os.Symlink(gen, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(d.dir, "..data")); err != nil {
		return err
	}
	for _, name := range []string{certs.CertFile, certs.KeyFile, certs.CAFile} {
		link := filepath.Join(d.dir, name)
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				return err
			}
		}
	}
	if d.gen > 1 {
		if err := os.RemoveAll(filepath.Join(d.dir, fmt.Sprintf("..gen_%d", d.gen-1))); err != nil {
			return err
		}
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return err
	}
	d.serial = leaf.SerialNumber.String()
	return nil
}

// servedSerial returns the serial of the certificate the server presents.
func (s *server) servedSerial() (string, error) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	conn, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

// register creates the MutatingWebhookConfiguration rendered from deploy/,
// every entry pointed at s over loopback with the test CA. With change, only
// the first entry is kept (tests giving it their own selector want one),
// adjusted by change.
func register(ctx context.Context, name string, s *server, change func(*admissionregistrationv1.MutatingWebhook)) error {
	objs, err := deploy.Render("../../../deploy/kustomize/default")
	if err != nil {
		return err
	}
	var cfg admissionregistrationv1.MutatingWebhookConfiguration
	for _, o := range objs {
		if o.GetKind() == "MutatingWebhookConfiguration" {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &cfg); err != nil {
				return err
			}
		}
	}
	if len(cfg.Webhooks) != 2 {
		return fmt.Errorf("deploy/ renders %d webhooks, want 2", len(cfg.Webhooks))
	}
	cfg.Name = name
	if change != nil {
		cfg.Webhooks = cfg.Webhooks[:1]
	}
	for i := range cfg.Webhooks {
		wh := &cfg.Webhooks[i]
		wh.ClientConfig = admissionregistrationv1.WebhookClientConfig{
			URL:      ptr.To(s.url() + *wh.ClientConfig.Service.Path),
			CABundle: ca.PEM,
		}
	}
	wh := &cfg.Webhooks[0]
	if change != nil {
		change(wh)
	}
	cs := kubernetes.NewForConfigOrDie(restConfig)
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &cfg, metav1.CreateOptions{}); err != nil {
		return err
	}
	// The API server picks configurations up asynchronously: wait until a
	// dry-run pod in a namespace the configuration selects is mutated (by
	// heapwatch, or by the other injector registered through this function).
	ns, err := namespaceFor(ctx, cs, wh.NamespaceSelector.MatchLabels)
	if err != nil {
		return err
	}
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := cs.CoreV1().Pods(ns).Create(ctx, podgen.Pod("probe"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, err
		}
		return p.Annotations[names.StatusAnnotation] != "" || p.Annotations[otherAnnotation] != "", nil
	})
}

var nsCounter struct {
	sync.Mutex
	n int
}

// namespaceFor creates a fresh namespace with labels.
func namespaceFor(ctx context.Context, cs kubernetes.Interface, labels map[string]string) (string, error) {
	nsCounter.Lock()
	nsCounter.n++
	name := fmt.Sprintf("team-%d", nsCounter.n)
	nsCounter.Unlock()
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		err = nil
	}
	return name, err
}

// client returns a clientset whose warnings land in the returned collector.
func client(t *testing.T) (kubernetes.Interface, *testkit.Warnings) {
	t.Helper()
	w := &testkit.Warnings{}
	cfg := rest.CopyConfig(restConfig)
	cfg.WarningHandler = w
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs, w
}

// enabled creates a namespace opted in to injection.
func enabled(t *testing.T, cs kubernetes.Interface, extra ...string) string {
	t.Helper()
	labels := map[string]string{names.InjectLabel: "enabled"}
	for i := 0; i+1 < len(extra); i += 2 {
		labels[extra[i]] = extra[i+1]
	}
	ns, err := namespaceFor(context.Background(), cs, labels)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

func sidecarOf(p *corev1.Pod) *corev1.Container {
	for i, c := range p.Spec.InitContainers {
		if c.Name == names.SidecarName {
			return &p.Spec.InitContainers[i]
		}
	}
	for i, c := range p.Spec.Containers {
		if c.Name == names.SidecarName {
			return &p.Spec.Containers[i]
		}
	}
	return nil
}

func countSidecars(p *corev1.Pod) int {
	n := 0
	for _, c := range append(append([]corev1.Container(nil), p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name == names.SidecarName {
			n++
		}
	}
	return n
}

func envValue(c *corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

// assertInjected checks the pod as stored by the API server.
func assertInjected(t *testing.T, p *corev1.Pod) {
	t.Helper()
	sc := sidecarOf(p)
	if sc == nil {
		t.Fatalf("pod %s/%s has no sidecar", p.Namespace, p.Name)
	}
	if countSidecars(p) != 1 {
		t.Errorf("pod has %d sidecars", countSidecars(p))
	}
	if sc.Image != sidecarImage || sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("sidecar image %q restartPolicy %v", sc.Image, sc.RestartPolicy)
	}
	if p.Spec.ShareProcessNamespace == nil || !*p.Spec.ShareProcessNamespace {
		t.Error("shareProcessNamespace not set")
	}
	if p.Annotations[names.StatusAnnotation] != names.StatusInjected {
		t.Errorf("status annotation = %q", p.Annotations[names.StatusAnnotation])
	}
	for _, c := range p.Spec.Containers {
		if e, _ := envValue(&c, names.ContainerNameEnv); e.Value != c.Name {
			t.Errorf("container %s: %s = %q", c.Name, names.ContainerNameEnv, e.Value)
		}
	}
}

func assertNotInjected(t *testing.T, p *corev1.Pod) {
	t.Helper()
	if n := countSidecars(p); n != 0 || p.Annotations[names.StatusAnnotation] != "" || ptr.Deref(p.Spec.ShareProcessNamespace, false) {
		t.Errorf("pod %s/%s was injected (%d sidecars, status %q)", p.Namespace, p.Name, n, p.Annotations[names.StatusAnnotation])
	}
}

const otherAnnotation = "other.example.com/injected"

// startOtherInjector serves a second mutating webhook, standing in for any
// other injector in a cluster (a service mesh, a secrets agent): it adds an
// annotation once. It returns the URL to register.
func startOtherInjector(t *testing.T) string {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	decoder := admission.NewDecoder(clientgoscheme.Scheme)
	srv := httptest.NewUnstartedServer(&admission.Webhook{Handler: admission.HandlerFunc(func(_ context.Context, req admission.Request) admission.Response {
		pod := &corev1.Pod{}
		if err := decoder.Decode(req, pod); err != nil {
			return admission.Errored(http.StatusBadRequest, err)
		}
		if pod.Annotations[otherAnnotation] != "" {
			return admission.Allowed("")
		}
		mutated := pod.DeepCopy()
		if mutated.Annotations == nil {
			mutated.Annotations = map[string]string{}
		}
		mutated.Annotations[otherAnnotation] = "done"
		raw, err := json.Marshal(mutated)
		if err != nil {
			return admission.Errored(http.StatusInternalServerError, err)
		}
		return admission.PatchResponseFromRaw(req.Object.Raw, raw)
	})})
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL + "/mutate"
}

// metric returns the value of one series from the server's /metrics.
func (s *server) metric(t *testing.T, series string) float64 {
	t.Helper()
	return metricAt(t, s.metricsPort, series)
}

// metricAt returns the value of one series from /metrics on a loopback port.
func metricAt(t *testing.T, port int, series string) float64 {
	t.Helper()
	v, err := testenv.Metric(port, series)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
