package certs_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cmv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"

	"github.com/heapwatch/heapwatch/certs"
	"github.com/heapwatch/heapwatch/deploy"
)

// installed is what `kubectl apply -k deploy/kustomize/default` creates,
// decoded strictly with the owning project's API types (cert-manager's for
// the certificates): an unknown or misspelt field fails the test.
type installed struct {
	issuers      map[string]*cmv1.Issuer
	certificates map[string]*cmv1.Certificate
	deployment   *appsv1.Deployment
	service      *corev1.Service
	config       *admissionregistrationv1.MutatingWebhookConfiguration
}

func load(t *testing.T) installed {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{cmv1.AddToScheme, appsv1.AddToScheme, corev1.AddToScheme, admissionregistrationv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	objs, err := deploy.Render("../deploy/kustomize/default")
	if err != nil {
		t.Fatal(err)
	}
	in := installed{issuers: map[string]*cmv1.Issuer{}, certificates: map[string]*cmv1.Certificate{}}
	for _, o := range objs {
		raw, err := json.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := decoder.Decode(raw, nil, nil)
		if runtime.IsNotRegisteredError(err) {
			continue // kinds this test does not look at
		}
		if err != nil {
			t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
		}
		switch v := obj.(type) {
		case *cmv1.Issuer:
			in.issuers[v.Name] = v
		case *cmv1.Certificate:
			in.certificates[v.Name] = v
		case *appsv1.Deployment:
			in.deployment = v
		case *corev1.Service:
			in.service = v
		case *admissionregistrationv1.MutatingWebhookConfiguration:
			in.config = v
		}
	}
	if in.deployment == nil || in.service == nil || in.config == nil {
		t.Fatal("deploy/kustomize/default lacks the Deployment, Service or MutatingWebhookConfiguration")
	}
	return in
}

// TestManifestsReferenceEachOther follows every name from the webhook
// configuration to the Secret the webhook serves from.
func TestManifestsReferenceEachOther(t *testing.T) {
	in := load(t)
	ns := in.deployment.Namespace

	// inject-ca-from names the serving Certificate.
	ref := in.config.Annotations["cert-manager.io/inject-ca-from"]
	certNS, certName, _ := strings.Cut(ref, "/")
	serving, ok := in.certificates[certName]
	if !ok || certNS != serving.Namespace {
		t.Fatalf("cert-manager.io/inject-ca-from %q names no Certificate of the install", ref)
	}
	// The Certificate covers the Service the configuration calls.
	svc := in.config.Webhooks[0].ClientConfig.Service
	if svc.Name != in.service.Name || svc.Namespace != in.service.Namespace {
		t.Fatalf("webhook calls service %s/%s, the install has %s/%s", svc.Namespace, svc.Name, in.service.Namespace, in.service.Name)
	}
	for _, dns := range []string{svc.Name + "." + svc.Namespace + ".svc", svc.Name + "." + svc.Namespace + ".svc.cluster.local"} {
		if !slices.Contains(serving.Spec.DNSNames, dns) {
			t.Errorf("serving Certificate lacks DNS name %s (has %v)", dns, serving.Spec.DNSNames)
		}
	}
	if !slices.Contains(serving.Spec.Usages, cmv1.UsageServerAuth) {
		t.Error("serving Certificate lacks the server auth usage")
	}
	// Its Secret is what the Deployment mounts as the cert dir.
	var mountedSecret string
	for _, v := range in.deployment.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			mountedSecret = v.Secret.SecretName
		}
	}
	if serving.Spec.SecretName != mountedSecret {
		t.Errorf("serving Certificate writes Secret %q, the Deployment mounts %q", serving.Spec.SecretName, mountedSecret)
	}
	// Issuer chain: serving <- CA Issuer <- CA Certificate <- self-signed Issuer.
	caIssuer := issuerOf(t, in, serving)
	if caIssuer.Spec.CA == nil {
		t.Fatalf("serving Certificate's issuer %s is not a CA issuer", caIssuer.Name)
	}
	var caCert *cmv1.Certificate
	for _, c := range in.certificates {
		if c.Spec.SecretName == caIssuer.Spec.CA.SecretName {
			caCert = c
		}
	}
	if caCert == nil || !caCert.Spec.IsCA {
		t.Fatalf("CA issuer's Secret %q is written by no CA Certificate", caIssuer.Spec.CA.SecretName)
	}
	if root := issuerOf(t, in, caCert); root.Spec.SelfSigned == nil {
		t.Errorf("the CA Certificate's issuer %s is not self-signed", root.Name)
	}
	for _, c := range in.certificates {
		if c.Namespace != ns {
			t.Errorf("Certificate %s in namespace %s, the webhook runs in %s", c.Name, c.Namespace, ns)
		}
	}
}

func issuerOf(t *testing.T, in installed, c *cmv1.Certificate) *cmv1.Issuer {
	t.Helper()
	if c.Spec.IssuerRef.Kind != "Issuer" {
		t.Fatalf("Certificate %s: issuerRef kind %q, want a namespaced Issuer", c.Name, c.Spec.IssuerRef.Kind)
	}
	iss, ok := in.issuers[c.Spec.IssuerRef.Name]
	if !ok || iss.Namespace != c.Namespace {
		t.Fatalf("Certificate %s: issuer %q not in the install", c.Name, c.Spec.IssuerRef.Name)
	}
	return iss
}

func TestSelfSigned(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	ca, err := certs.WriteSelfSigned(dir, []string{"heapwatch-webhook.heapwatch-system.svc", "127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, certs.CertFile), filepath.Join(dir, certs.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, certs.CAFile))
	if err != nil || string(caPEM) != string(ca.PEM) {
		t.Fatalf("ca.crt differs from the returned CA (%v)", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	for _, host := range []string{"heapwatch-webhook.heapwatch-system.svc", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "other.example.com", Roots: roots}); err == nil {
		t.Error("certificate verifies for a host it was not issued for")
	}
	info, err := os.Stat(filepath.Join(dir, certs.KeyFile))
	if err != nil || info.Mode().Perm() != fs.FileMode(0o600) {
		t.Errorf("key file mode %v (%v), want 0600", info.Mode().Perm(), err)
	}
	if _, _, err := ca.Issue(nil, time.Hour); err == nil {
		t.Error("Issue without hosts succeeded")
	}
}
