package pprof

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/heapwatch/heapwatch/internal/procfs"
	"github.com/heapwatch/heapwatch/internal/testkit"
)

const childDaemon = "pprof-daemon" // serves pprof on the socket $HEAPWATCH_TEST_SOCKET

func TestMain(m *testing.M) {
	testkit.RunChild(map[string]func() int{childDaemon: func() int {
		ln, err := net.Listen("unix", os.Getenv("HEAPWATCH_TEST_SOCKET"))
		if err != nil {
			return 1
		}
		_ = http.Serve(ln, pprofMux(DefaultPath))
		return 1
	}})
	os.Exit(m.Run())
}

func proc(t *testing.T) procfs.FS {
	t.Helper()
	fs, err := procfs.NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

// sockDir is a fresh temp dir with a short path: a socket path is limited
// to 108 bytes, which t.TempDir's long names can exceed.
func sockDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hw-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// unixListener listens on a fresh socket.
func unixListener(t *testing.T) (net.Listener, string) {
	t.Helper()
	sock := filepath.Join(sockDir(t), "debug.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, sock
}

// rawUnix runs serve on every connection accepted on a fresh socket.
func rawUnix(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, sock := unixListener(t)
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			go serve(c)
		}
	}()
	return sock
}

func newURL(t *testing.T, raw string, o URLOptions) (*URL, *testkit.Buffer) {
	t.Helper()
	var logs testkit.Buffer
	if o.Client.FetchTimeout == 0 {
		o.Client = fast
	}
	o.Proc = proc(t)
	o.Log = slog.New(slog.NewTextHandler(&logs, nil))
	s, err := NewURL(raw, o)
	if err != nil {
		t.Fatalf("NewURL(%q): %v", raw, err)
	}
	return s, &logs
}

func checkHeap(t *testing.T, s *URL, pid int) {
	t.Helper()
	ctx := context.Background()
	eps := s.Endpoints(ctx, []int{pid}, true)
	if len(eps) != 1 || eps[0].PID != pid {
		t.Fatalf("Endpoints = %+v, want one of pid %d (source %v)", eps, pid, s.LogValue())
	}
	var b bytes.Buffer
	n, err := s.Fetch(ctx, eps[0], "heap", &b)
	if err != nil {
		t.Fatalf("Fetch heap: %v", err)
	}
	if n != int64(b.Len()) || n == 0 {
		t.Fatalf("Fetch returned %d, wrote %d", n, b.Len())
	}
	if _, err := profile.Parse(&b); err != nil {
		t.Fatalf("heap from %s does not parse: %v", s.raw, err)
	}
}

func TestNewURLRejects(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("t0k\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		url  string
		o    URLOptions
		want string
	}{
		{"", URLOptions{}, "empty; want unix:///"},
		{"/run/containerd/debug.sock", URLOptions{}, "no scheme"},
		{"tcp://127.0.0.1:6060", URLOptions{}, `scheme "tcp"`},
		{"unix://run/containerd/debug.sock", URLOptions{}, "unix:///run/containerd/debug.sock (three slashes)"},
		{"unix:///", URLOptions{}, "unix:///absolute/path"},
		{"unix:///run/x.sock?debug=1", URLOptions{}, "query"},
		{"https://", URLOptions{}, "no host"},
		{"https://127.0.0.1:99999/debug/pprof", URLOptions{}, `port "99999"`},
		{"https://127.0.0.1:10250/debug/pprof/heap", URLOptions{}, "not the heap profile"},
		{"https://user:pw@127.0.0.1:10250/debug/pprof", URLOptions{}, "credentials in the URL"},
		{"http://127.0.0.1:6060/debug/pprof", URLOptions{BearerTokenFile: token}, "never in clear text"},
		{"http://127.0.0.1:6060/debug/pprof", URLOptions{CAFile: token}, "TLS settings"},
		{"http://127.0.0.1:6060/debug/pprof", URLOptions{ServerName: "node-a"}, "TLS settings"},
		{"unix:///run/containerd/debug.sock", URLOptions{InsecureSkipVerify: true}, "TLS settings given for a unix socket"},
		{"https://127.0.0.1:10250/debug/pprof", URLOptions{BearerTokenFile: filepath.Join(dir, "missing")}, "bearer token: open"},
		{"https://127.0.0.1:10250/debug/pprof", URLOptions{BearerTokenFile: empty}, "is empty"},
		{"https://127.0.0.1:10250/debug/pprof", URLOptions{CAFile: token}, "holds no PEM certificate"},
		{"https://127.0.0.1:10250/debug/pprof", URLOptions{CAFile: filepath.Join(dir, "missing")}, "CA file: open"},
	} {
		_, err := NewURL(tc.url, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewURL(%q) = %v, want an error saying %q", tc.url, err, tc.want)
		}
		if strings.Contains(tc.want, "bearer") || strings.Contains(tc.want, "CA file") || strings.Contains(tc.want, "empty") && tc.url != "" || strings.Contains(tc.want, "PEM") {
			continue
		}
		if !errors.Is(err, ErrBadURL) {
			t.Errorf("NewURL(%q) = %v, want an ErrBadURL", tc.url, err)
		}
	}
	for _, ok := range []string{"unix:///run/containerd/debug.sock", "https://127.0.0.1:10250/debug/pprof", "http://localhost:6060", "http://[::1]:6060/debug/pprof/"} {
		if _, err := NewURL(ok, URLOptions{}); err != nil {
			t.Errorf("NewURL(%q): %v", ok, err)
		}
	}
}

// TestURLUnixSocket: a profile over a unix socket, the endpoint remembered
// for the process, probed again after Forget.
func TestURLUnixSocket(t *testing.T) {
	ln, sock := unixListener(t)
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: pprofMux(DefaultPath)}}
	srv.Start()
	t.Cleanup(srv.Close)
	s, logs := newURL(t, "unix://"+sock, URLOptions{})
	checkHeap(t, s, os.Getpid())
	if eps := s.Endpoints(context.Background(), []int{1 << 30, os.Getpid()}, true); len(eps) != 1 || eps[0].PID != os.Getpid() || eps[0].Addr != "unix://"+sock || eps[0].Port != 0 {
		t.Errorf("Endpoints past a gone PID = %+v", eps)
	}
	if eps := s.Endpoints(context.Background(), []int{1 << 30}, true); len(eps) != 0 {
		t.Errorf("Endpoints of a gone process = %+v", eps)
	}
	if n := strings.Count(logs.String(), "pprof endpoint found"); n != 1 {
		t.Errorf("%d log lines 'found', want 1:\n%s", n, logs)
	}
}

// TestURLBadSockets: a socket that accepts and never answers, one that
// is not HTTP, one with nobody listening and a missing one each give no
// endpoint within the bounds, with a log line saying why (and, for the
// missing one, how to enable it), once.
func TestURLBadSockets(t *testing.T) {
	stale := sockDir(t)
	refused := filepath.Join(stale, "refused.sock")
	ln, err := net.Listen("unix", refused)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	missing := filepath.Join(stale, "debug.sock")

	for _, tc := range []struct {
		name, sock string
		want       []string
		is         error
		fix        string
	}{
		{"silent", rawUnix(t, silent), []string{"timeout awaiting response headers"}, nil, ""},
		{"not HTTP", rawUnix(t, garbage), []string{"malformed HTTP response"}, nil, ""},
		{"nobody listening", refused, []string{"connection refused", "nothing listens on " + refused}, syscall.ECONNREFUSED, "nothing listens on " + refused},
		{"missing", missing, []string{"no such file", `[debug] address = \"` + missing + `\"`, "memory is still watched"}, syscall.ENOENT,
			`[debug] address = "` + missing + `"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, logs := newURL(t, "unix://"+tc.sock, URLOptions{})
			ctx := context.Background()
			start := time.Now()
			for _, recheck := range []bool{false, false, true} {
				if eps := s.Endpoints(ctx, []int{os.Getpid()}, recheck); len(eps) != 0 {
					t.Fatalf("Endpoints = %+v, want none", eps)
				}
			}
			// Two probes at most, each bounded by ProbeTimeout.
			if d := time.Since(start); d > 2*fast.ProbeTimeout+time.Second {
				t.Errorf("three looks took %v", d)
			}
			for _, w := range tc.want {
				if !strings.Contains(logs.String(), w) {
					t.Errorf("log lacks %q:\n%s", w, logs)
				}
			}
			if n := strings.Count(logs.String(), "pprof endpoint does not answer"); n != 1 {
				t.Errorf("%d warnings, want 1 (once while it does not answer):\n%s", n, logs)
			}
			lv := s.LogValue().String()
			if !strings.Contains(lv, tc.sock) || !strings.Contains(lv, "err=") {
				t.Errorf("LogValue = %s, want the socket and the error", lv)
			}
			if tc.is != nil {
				var b bytes.Buffer
				if _, err := s.Fetch(ctx, source0(tc.sock), "heap", &b); !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.fix) {
					t.Errorf("Fetch = %v, want %v and %q", err, tc.is, tc.fix)
				}
			}
		})
	}
}

// TestURLDaemonRestarts: a daemon process serving its socket exits and a
// new one (another PID) takes the same socket: the source answers for the
// new process, and its profiles come from it.
func TestURLDaemonRestarts(t *testing.T) {
	sock := filepath.Join(sockDir(t), "debug.sock")
	s, logs := newURL(t, "unix://"+sock, URLOptions{})
	ctx := context.Background()
	start := func() int {
		cmd := testkit.Child(childDaemon)
		cmd.Env = append(cmd.Env, "HEAPWATCH_TEST_SOCKET="+sock)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		testkit.WaitFor(t, 10*time.Second, "the daemon's socket", func() bool {
			c, err := net.Dial("unix", sock)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		return cmd.Process.Pid
	}
	first := start()
	checkHeap(t, s, first)
	p, _ := os.FindProcess(first)
	_ = p.Kill()
	testkit.WaitFor(t, 10*time.Second, "the first daemon to exit", func() bool {
		_, err := os.Stat("/proc/" + strconv.Itoa(first) + "/stat")
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(first) + "/stat")
		return err != nil || bytes.Contains(b, []byte(") Z "))
	})
	var b bytes.Buffer
	if _, err := s.Fetch(ctx, source0(sock), "heap", &b); err == nil {
		t.Fatal("Fetch from the exited daemon succeeded")
	}
	if err := os.Remove(sock); err != nil { // as a daemon does at start
		t.Fatal(err)
	}
	second := start()
	checkHeap(t, s, second)
	if n := strings.Count(logs.String(), "pprof endpoint found"); n != 2 {
		t.Errorf("%d 'found' lines, want one per daemon process:\n%s", n, logs)
	}
}

// tlsServer serves pprof over HTTPS to requests carrying the bearer token
// *want, and writes its certificate to a CA file.
func tlsServer(t *testing.T, want *string) (*httptest.Server, string) {
	t.Helper()
	mux := pprofMux(DefaultPath)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+*want {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv, ca
}

// TestURLHTTPSBearerToken: the token is read from its file at every
// request (a wrong or expired one is refused with a clear error, a rotated
// one is used at once), and the server is verified against the CA file
// under the configured server name.
func TestURLHTTPSBearerToken(t *testing.T) {
	want := "good"
	srv, ca := tlsServer(t, &want)
	token := filepath.Join(t.TempDir(), "token")
	write := func(tok string) {
		// As the kubelet rotates a projected token: a new file renamed over.
		if err := os.WriteFile(token+".new", []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(token+".new", token); err != nil {
			t.Fatal(err)
		}
	}
	write("expired")
	raw := srv.URL + "/debug/pprof"
	s, logs := newURL(t, raw, URLOptions{BearerTokenFile: token, CAFile: ca})
	ctx := context.Background()
	pid := os.Getpid()
	if eps := s.Endpoints(ctx, []int{pid}, false); len(eps) != 0 {
		t.Fatalf("Endpoints with an expired token = %+v", eps)
	}
	for _, w := range []string{"401 Unauthorized", "refused the token in " + token, "nodes/proxy"} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("log lacks %q:\n%s", w, logs)
		}
	}
	write("good")
	checkHeap(t, s, pid)
	if eps := s.Endpoints(ctx, []int{pid}, false); len(eps) != 1 || eps[0].Port != srv.Listener.Addr().(*net.TCPAddr).Port {
		t.Errorf("Endpoints = %+v, want the URL's port", eps)
	}
	write("rotated-away")
	var b bytes.Buffer
	if _, err := s.Fetch(ctx, source0(raw), "heap", &b); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "refused the token") {
		t.Errorf("Fetch with a token the server no longer takes = %v, want ErrRefused and the fix", err)
	}
	want = "rotated-away"
	if _, err := s.Fetch(ctx, source0(raw), "heap", &b); err != nil {
		t.Errorf("Fetch after rotation: %v", err)
	}

	// The httptest certificate names 127.0.0.1 and example.com.
	for _, tc := range []struct {
		o    URLOptions
		want string
	}{
		{URLOptions{BearerTokenFile: token, CAFile: ca, ServerName: "example.com"}, ""},
		{URLOptions{BearerTokenFile: token, CAFile: ca, ServerName: "node-a"}, "set serverName"},
		{URLOptions{BearerTokenFile: token}, "certificate signed by unknown authority"},
		{URLOptions{BearerTokenFile: token}, "set caFile"},
		{URLOptions{BearerTokenFile: token, InsecureSkipVerify: true}, ""},
	} {
		s, logs := newURL(t, raw, tc.o)
		eps := s.Endpoints(ctx, []int{pid}, false)
		if got := len(eps) == 1; got != (tc.want == "") || tc.want != "" && !strings.Contains(logs.String(), tc.want) {
			t.Errorf("%+v: Endpoints = %+v, want %q:\n%s", tc.o, eps, tc.want, logs)
		}
	}
}

// TestURLHTTPPlain: any configured http URL, pprof under its path.
func TestURLHTTPPlain(t *testing.T) {
	addr := pprofServer(t, "tcp", "/internal/pprof")
	s, _ := newURL(t, "http://"+addr+"/internal/pprof/", URLOptions{})
	checkHeap(t, s, os.Getpid())
	wrong, logs := newURL(t, "http://"+addr+"/debug/pprof", URLOptions{})
	if eps := wrong.Endpoints(context.Background(), []int{os.Getpid()}, false); len(eps) != 0 || !strings.Contains(logs.String(), "404") {
		t.Errorf("wrong path: %+v\n%s", eps, logs)
	}
}

// TestURLSizeCap: the size cap holds over a socket as over a port.
func TestURLSizeCap(t *testing.T) {
	ln, sock := unixListener(t)
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(endless)}}
	srv.Start()
	t.Cleanup(srv.Close)
	o := fast
	o.MaxBytes = 1 << 20
	s, _ := newURL(t, "unix://"+sock, URLOptions{Client: o})
	var cw countingWriter
	n, err := s.Fetch(context.Background(), source0(sock), "heap", &cw)
	if !errors.Is(err, ErrTooLarge) || n != o.MaxBytes || int64(cw) != o.MaxBytes {
		t.Errorf("Fetch = %d, %v (wrote %d), want ErrTooLarge after %d", n, err, int64(cw), o.MaxBytes)
	}
}

// source0 is an endpoint of no process: URL.Fetch goes to its URL whatever
// the endpoint says.
func source0(addr string) Endpoint { return Endpoint{Addr: addr} }
