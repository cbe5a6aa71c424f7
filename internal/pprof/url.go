package pprof

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/source"
)

// URL is the source of one host daemon whose profiles are served at a
// fixed place named by a URL, whatever its PID: a unix socket
// (unix:///run/containerd/debug.sock, containerd's [debug] address), HTTPS
// with a bearer token (the kubelet's https://127.0.0.1:10250/debug/pprof) or
// any http(s) URL. It owns what is known about its endpoint: for the
// daemon's current process (PID and start time), whether the endpoint
// answered as pprof, and if not why and since when.
type URL struct {
	raw    string // as configured, for logs and errors
	host   string // what the client is given as address
	port   int
	hints  []func(error) string // what to do about a failure, first that knows
	client *Client
	o      URLOptions

	mu    sync.Mutex
	state urlState
}

type urlState struct {
	pid   int
	start uint64
	ok    bool
	err   error
	at    time.Time
}

// URLOptions configure NewURL beyond the endpoint's URL.
type URLOptions struct {
	// Client bounds every request (timeouts, size cap) as for Ports; its
	// Path, Socket, TLS and Authorize are set from the URL and the fields
	// below.
	Client Options
	Proc   procfs.FS
	// BearerTokenFile holds a token sent as "Authorization: Bearer" (the
	// agent's ServiceAccount token). It is read again for every request,
	// so a rotated token is used as soon as the kubelet writes it.
	BearerTokenFile string
	// CAFile holds the PEM certificates an https endpoint's certificate
	// must chain to, read again at every TLS handshake. Empty: the system
	// roots. For a kubelet with a self-signed serving certificate (the
	// default without serverTLSBootstrap) this is that certificate itself,
	// /var/lib/kubelet/pki/kubelet.crt on the node.
	CAFile string
	// ServerName is the name the certificate must carry; empty: the URL's
	// host. A kubelet's certificate names the node, not 127.0.0.1.
	ServerName string
	// InsecureSkipVerify accepts any certificate (as metrics-server's
	// --kubelet-insecure-tls): the token is then sent to whoever answers.
	InsecureSkipVerify bool
	// RetryAfter is how long an endpoint that did not answer as pprof is
	// not asked again, unless a capture asks (default 5 s).
	RetryAfter time.Duration
	Log        *slog.Logger
}

var _ source.Source = (*URL)(nil)

// ErrBadURL reports a pprof endpoint string NewURL does not accept.
var ErrBadURL = errors.New("pprof: bad endpoint URL")

const maxTokenBytes = 64 << 10

// NewURL returns the source of the endpoint pprofURL names: unix:///path
// (a socket serving /debug/pprof/*), https://host:port/path or
// http://host:port/path (path: where the pprof index is, default
// /debug/pprof).
func NewURL(pprofURL string, o URLOptions) (*URL, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w %q: %s", ErrBadURL, pprofURL, fmt.Sprintf(format, args...))
	}
	u, err := url.Parse(pprofURL)
	switch {
	case pprofURL == "":
		return nil, fmt.Errorf("%w: empty; want unix:///path/to.sock, https://host:port/debug/pprof or http://host:port/debug/pprof", ErrBadURL)
	case err != nil:
		return nil, bad("%v", errors.Unwrap(err))
	case u.User != nil:
		return nil, bad("credentials in the URL are not accepted; use a bearer token file")
	case u.RawQuery != "" || u.Fragment != "":
		return nil, bad("a query or fragment has no meaning here")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = DefaultRediscoverAfter
	}
	s := &URL{raw: pprofURL}
	co := o.Client
	co.Socket, co.TLS, co.Authorize = "", nil, nil
	switch u.Scheme {
	case "unix":
		if u.Host != "" {
			return nil, bad("the socket path must be absolute: unix:///%s%s (three slashes)", u.Host, u.Path)
		}
		if !path.IsAbs(u.Path) || u.Path == "/" {
			return nil, bad("want unix:///absolute/path/to.sock")
		}
		if tlsSet(o) {
			return nil, bad("TLS settings given for a unix socket")
		}
		// The socket is the whole address: pprof is at its default path.
		co.Socket, co.Path = u.Path, DefaultPath
		s.host = "localhost"
		s.hints = append(s.hints, socketHint(u.Path))
	case "http", "https":
		if u.Hostname() == "" {
			return nil, bad("no host")
		}
		s.host = u.Host
		if p := u.Port(); p != "" {
			if s.port, err = strconv.Atoi(p); err != nil || s.port <= 0 || s.port > 65535 {
				return nil, bad("port %q", p)
			}
		}
		co.Path = strings.TrimRight(u.Path, "/")
		if name := path.Base(co.Path); knownProfile(name) {
			return nil, bad("name the pprof index (…/debug/pprof), not the %s profile", name)
		}
		if u.Scheme == "https" {
			co.TLS = tlsConfig(u.Hostname(), o)
			s.hints = append(s.hints, tlsHint)
		} else {
			if o.BearerTokenFile != "" {
				return nil, bad("a bearer token is sent over https or a unix socket only, never in clear text")
			}
			if tlsSet(o) {
				return nil, bad("TLS settings given for a plain http URL")
			}
		}
	case "":
		return nil, bad("no scheme; want unix://, https:// or http://")
	default:
		return nil, bad("scheme %q; want unix, https or http", u.Scheme)
	}
	if o.BearerTokenFile != "" {
		if _, err := readToken(o.BearerTokenFile); err != nil {
			return nil, fmt.Errorf("pprof: %s: %w", pprofURL, err)
		}
		file := o.BearerTokenFile
		co.Authorize = func(r *http.Request) error {
			tok, err := readToken(file)
			if err != nil {
				return err
			}
			r.Header.Set("Authorization", "Bearer "+tok)
			return nil
		}
		s.hints = append(s.hints, func(err error) string {
			if errors.Is(err, ErrRefused) {
				return "the endpoint refused the token in " + file + ": check that it is current and that its ServiceAccount may get nodes/proxy (the kubelet's /debug/pprof)"
			}
			return ""
		})
	}
	if o.CAFile != "" {
		if _, err := loadPool(o.CAFile); err != nil {
			return nil, fmt.Errorf("pprof: %s: %w", pprofURL, err)
		}
	}
	s.client = NewClient(co)
	s.o = o
	return s, nil
}

// tlsSet reports TLS settings, which only an https URL uses.
func tlsSet(o URLOptions) bool { return o.CAFile != "" || o.ServerName != "" || o.InsecureSkipVerify }

// knownProfile reports the names of Go's runtime profiles.
func knownProfile(name string) bool {
	switch name {
	case "heap", "allocs", "goroutine", "profile", "block", "mutex", "threadcreate", "trace", "cmdline", "symbol":
		return true
	}
	return false
}

// socketHint says how to enable a debug socket that is not there, in the
// daemon's own configuration words.
func socketHint(sock string) func(error) string {
	return func(err error) string {
		switch {
		case errors.Is(err, syscall.ENOENT):
			return fmt.Sprintf("no socket at %s: enable the daemon's debug socket; for containerd, in /etc/containerd/config.toml: [debug] address = %q, then restart containerd", sock, sock)
		case errors.Is(err, syscall.ECONNREFUSED):
			return fmt.Sprintf("nothing listens on %s: the daemon is not running or was started without its debug socket", sock)
		case errors.Is(err, syscall.EACCES):
			return fmt.Sprintf("no permission to connect to %s: the agent needs it mounted and runs as root", sock)
		}
		return ""
	}
}

// tlsHint says what to configure when the server's certificate is not
// trusted: the usual first failure against a kubelet.
func tlsHint(err error) string {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	switch {
	case errors.As(err, &unknown):
		return "the server's certificate is not signed by a trusted CA: set caFile (a kubelet with serverTLSBootstrap: the cluster CA, the ServiceAccount's ca.crt; with its self-signed certificate: /var/lib/kubelet/pki/kubelet.crt)"
	case errors.As(err, &host):
		return "the server's certificate does not name the host dialled: set serverName to a name it carries (a kubelet's: the node's name)"
	}
	return ""
}

// hint is the first hint that knows err.
func (s *URL) hint(err error) string {
	for _, h := range s.hints {
		if m := h(err); m != "" {
			return m
		}
	}
	return ""
}

// readToken reads a bearer token file, bounded.
func readToken(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("bearer token: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenBytes+1))
	if err != nil {
		return "", fmt.Errorf("bearer token: %w", err)
	}
	tok := string(bytes.TrimSpace(b))
	switch {
	case len(b) > maxTokenBytes:
		return "", fmt.Errorf("bearer token %s is larger than %d bytes", file, maxTokenBytes)
	case tok == "":
		return "", fmt.Errorf("bearer token %s is empty", file)
	case strings.ContainsAny(tok, "\r\n"):
		return "", fmt.Errorf("bearer token %s has more than one line", file)
	}
	return tok, nil
}

// loadPool reads a PEM bundle of CA certificates.
func loadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// tlsConfig verifies the server against the system roots, or against
// o.CAFile read again at every handshake (a rotated CA or a kubelet's
// regenerated self-signed certificate is picked up without a restart).
func tlsConfig(host string, o URLOptions) *tls.Config {
	name := o.ServerName
	if name == "" {
		name = host
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: name}
	switch {
	case o.InsecureSkipVerify:
		cfg.InsecureSkipVerify = true
	case o.CAFile != "":
		// Verification is done here, with the pool of the moment.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			pool, err := loadPool(o.CAFile)
			if err != nil {
				return err
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err = cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: name})
			return err
		}
	}
	return cfg
}

// LogValue names the endpoint and, when it does not answer, why and what
// to do about it.
func (s *URL) LogValue() slog.Value {
	s.mu.Lock()
	st := s.state
	s.mu.Unlock()
	attrs := []slog.Attr{slog.String("url", s.raw)}
	if st.err != nil {
		attrs = append(attrs, slog.String("err", st.err.Error()))
		if h := s.hint(st.err); h != "" {
			attrs = append(attrs, slog.String("fix", h))
		}
	}
	return slog.GroupValue(attrs...)
}

// Endpoints returns the daemon's endpoint once, for the first live process
// of pids (the discoverer lists the daemon's main process first). What was
// found is remembered for that process; recheck asks again about an
// endpoint that did not answer.
func (s *URL) Endpoints(ctx context.Context, pids []int, recheck bool) []source.Endpoint {
	for _, pid := range pids {
		st, err := s.o.Proc.Proc(pid).Stat()
		if err != nil {
			continue
		}
		ep := source.Endpoint{PID: pid, StartTime: st.StartTime, Addr: s.raw, Port: s.port}
		if s.answers(ctx, ep, recheck) {
			return []source.Endpoint{ep}
		}
		return nil
	}
	return nil
}

func (s *URL) answers(ctx context.Context, ep source.Endpoint, recheck bool) bool {
	now := time.Now()
	s.mu.Lock()
	prev := s.state
	s.mu.Unlock()
	if prev.pid == ep.PID && prev.start == ep.StartTime && !prev.at.IsZero() &&
		(prev.ok || !recheck && now.Sub(prev.at) < s.o.RetryAfter) {
		return prev.ok
	}
	err := s.client.ProbeOne(ctx, s.host)
	st := urlState{pid: ep.PID, start: ep.StartTime, ok: err == nil, err: err, at: now}
	s.mu.Lock()
	s.state = st
	s.mu.Unlock()
	same := prev.pid == ep.PID && prev.start == ep.StartTime
	switch {
	case st.ok && (!prev.ok || !same):
		s.o.Log.Info("pprof endpoint found", "pid", ep.PID, "url", s.raw)
	case !st.ok && (prev.ok || prev.err == nil):
		// Once when it stops answering, not at every look; LogValue
		// has the latest reason.
		args := []any{"pid", ep.PID, "url", s.raw, "err", err}
		if h := s.hint(err); h != "" {
			args = append(args, "fix", h)
		}
		s.o.Log.Warn("pprof endpoint does not answer; the daemon's memory is still watched, captures wait for it", args...)
	}
	return st.ok
}

// Fetch streams one profile from the daemon's endpoint.
func (s *URL) Fetch(ctx context.Context, _ source.Endpoint, profile string, w io.Writer) (int64, error) {
	n, err := s.client.Fetch(ctx, s.host, profile, w)
	if err != nil {
		err = fmt.Errorf("%s: %w", s.raw, err)
		if h := s.hint(err); h != "" {
			err = fmt.Errorf("%w (%s)", err, h)
		}
	}
	return n, err
}

// Forget makes the next look probe the endpoint again.
func (s *URL) Forget(ep source.Endpoint) {
	s.mu.Lock()
	if s.state.pid == ep.PID && s.state.start == ep.StartTime {
		s.state = urlState{err: s.state.err}
	}
	s.mu.Unlock()
}
