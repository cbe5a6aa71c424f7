package pprof

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/pprof"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// pprofServer serves the real net/http/pprof handlers under path.
func pprofServer(t *testing.T, network, path string) string {
	t.Helper()
	return serveHTTP(t, network, pprofMux(path))
}

func pprofMux(path string) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc(path+"/", func(w http.ResponseWriter, r *http.Request) {
		switch name := strings.TrimPrefix(r.URL.Path, path+"/"); name {
		case "":
			pprof.Index(w, r)
		case "cmdline":
			pprof.Cmdline(w, r)
		default:
			pprof.Handler(name).ServeHTTP(w, r)
		}
	})
	return mux
}

func serveHTTP(t *testing.T, network string, h http.Handler) string {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "tcp6" {
		addr = "[::1]:0"
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: h}}
	srv.Start()
	t.Cleanup(srv.Close)
	return ln.Addr().String()
}

// rawServer runs serve on every accepted connection: for ports that do not
// speak HTTP properly.
func rawServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go serve(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

func silent(c net.Conn) { _, _ = io.Copy(io.Discard, c) }

func garbage(c net.Conn) {
	_, _ = c.Write(bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef, '\n'}, 1000))
	_, _ = io.Copy(io.Discard, c)
}

// slowHeader sends a valid status line and then one header byte per 100 ms.
func slowHeader(c net.Conn) {
	_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\n"))
	for range 1000 {
		if _, err := c.Write([]byte("X")); err != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// slowBody answers the headers at once and the body one byte per 100 ms.
func slowBody(w http.ResponseWriter, r *http.Request) {
	w.WriteHeader(http.StatusOK)
	for range 1000 {
		if _, err := w.Write([]byte("heap goroutine ")); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		select {
		case <-time.After(100 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
	}
}

// endless streams 2 GB from one reused 64 KiB buffer: never allocated whole.
func endless(w http.ResponseWriter, r *http.Request) {
	buf := bytes.Repeat([]byte("heap goroutine "), 64<<10/15)
	for sent := 0; sent < 2<<30; sent += len(buf) {
		if _, err := w.Write(buf); err != nil {
			return
		}
	}
}

var fast = Options{DialTimeout: 200 * time.Millisecond, HeaderTimeout: 300 * time.Millisecond,
	ProbeTimeout: 500 * time.Millisecond, FetchTimeout: time.Second, MaxBytes: 8 << 20}

func TestProbeOne(t *testing.T) {
	tests := []struct {
		name    string
		addr    func(t *testing.T) string
		path    string
		wantErr bool
	}{
		{"pprof on ipv4", func(t *testing.T) string { return pprofServer(t, "tcp", "/debug/pprof") }, "", false},
		{"pprof on ipv6 localhost", func(t *testing.T) string { return pprofServer(t, "tcp6", "/debug/pprof") }, "", false},
		{"non-default path", func(t *testing.T) string { return pprofServer(t, "tcp", "/internal/pprof") }, "/internal/pprof", false},
		{"pprof elsewhere than the configured path", func(t *testing.T) string { return pprofServer(t, "tcp", "/debug/pprof") }, "/internal/pprof", true},
		{"other HTTP server", func(t *testing.T) string {
			return serveHTTP(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "hello") }))
		}, "", true},
		{"silent port", func(t *testing.T) string { return rawServer(t, silent) }, "", true},
		{"garbage port", func(t *testing.T) string { return rawServer(t, garbage) }, "", true},
		{"slow-loris header", func(t *testing.T) string { return rawServer(t, slowHeader) }, "", true},
		{"slow-loris body", func(t *testing.T) string { return serveHTTP(t, "tcp", http.HandlerFunc(slowBody)) }, "", true},
		{"2 GB streamer", func(t *testing.T) string { return serveHTTP(t, "tcp", http.HandlerFunc(endless)) }, "", false},
		{"closed port", func(t *testing.T) string {
			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			ln.Close()
			return ln.Addr().String()
		}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := fast
			o.Path = tt.path
			c := NewClient(o)
			start := time.Now()
			err := c.ProbeOne(context.Background(), tt.addr(t))
			if (err != nil) != tt.wantErr {
				t.Errorf("ProbeOne: %v, want error %v", err, tt.wantErr)
			}
			// Every probe is bounded by ProbeTimeout, whatever the port does.
			if d := time.Since(start); d > o.ProbeTimeout+500*time.Millisecond {
				t.Errorf("ProbeOne took %v, bound is %v", d, o.ProbeTimeout)
			}
		})
	}
}

func TestFindBoundedAndCached(t *testing.T) {
	good := pprofServer(t, "tcp", "/debug/pprof")
	eps := []Endpoint{
		{PID: 1, Addr: rawServer(t, silent)},
		{PID: 1, Addr: rawServer(t, silent)},
		{PID: 1, Addr: rawServer(t, slowHeader)},
		{PID: 1, Addr: rawServer(t, garbage)},
		{PID: 1, Addr: good},
	}
	o := fast
	o.ProbeConcurrency = 2
	c := NewClient(o)
	now := time.Now()
	c.now = func() time.Time { return now } // fakeClock for the negative TTL
	start := time.Now()
	ep, ok := c.Find(context.Background(), eps)
	// Three hanging ports, two at a time, before the good one at worst.
	if d := time.Since(start); d > 2*o.ProbeTimeout+500*time.Millisecond {
		t.Errorf("Find took %v", d)
	}
	if !ok || ep.Addr != good {
		t.Fatalf("Find = %+v, %v; want %s", ep, ok, good)
	}
	// Once every probe has ended, each port's answer is cached.
	deadline := time.Now().Add(3 * o.ProbeTimeout)
	for _, e := range eps {
		for {
			if _, hit := c.lookup(e); hit {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no cached answer for %s", e.Addr)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Cached: nothing is dialled again, the hanging ports cost nothing.
	start = time.Now()
	if _, ok := c.Find(context.Background(), eps[:4]); ok {
		t.Error("Find found pprof among ports known not to serve it")
	}
	if ep, ok := c.Find(context.Background(), eps); !ok || ep.Addr != good {
		t.Errorf("cached Find = %+v, %v", ep, ok)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("cached Find took %v", d)
	}
	// A new process on the same PID (other start time) is probed afresh.
	if _, hit := c.lookup(Endpoint{PID: 1, StartTime: 99, Addr: good}); hit {
		t.Error("cache hit for another process start time")
	}
	now = now.Add(o.withDefaults().NegativeTTL + time.Second)
	if _, hit := c.lookup(eps[0]); hit {
		t.Error("negative answer still cached after its TTL")
	}
	if ok, hit := c.lookup(eps[4]); !hit || !ok {
		t.Error("positive answer expired")
	}
}

func TestFetch(t *testing.T) {
	addr := pprofServer(t, "tcp", "/internal/pprof")
	o := fast
	o.Path = "/internal/pprof/"
	c := NewClient(o)
	var buf bytes.Buffer
	n, err := c.Fetch(context.Background(), addr, "heap", &buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) || n == 0 {
		t.Errorf("Fetch returned %d, wrote %d", n, buf.Len())
	}
	if _, err := profile.Parse(&buf); err != nil {
		t.Errorf("heap is not a parseable profile: %v", err)
	}
	buf.Reset()
	if _, err := c.Fetch(context.Background(), addr, "goroutine", &buf); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(buf.String(), "goroutine profile: total") {
		t.Errorf("goroutine is not debug=1 text: %.60q", buf.String())
	}
	buf.Reset()
	if _, err := c.Fetch(context.Background(), addr, "allocs", &buf); err != nil {
		t.Fatal(err)
	}
	if _, err := profile.Parse(&buf); err != nil {
		t.Errorf("allocs is not a parseable profile: %v", err)
	}
	if _, err := c.Fetch(context.Background(), addr, "nosuch", io.Discard); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("unknown profile: %v, want a 404 error", err)
	}
}

// countingWriter keeps only a count: the test itself must not hold 2 GB.
type countingWriter int64

func (w *countingWriter) Write(p []byte) (int, error) {
	*w += countingWriter(len(p))
	return len(p), nil
}

func TestFetchBounded(t *testing.T) {
	tests := []struct {
		name    string
		addr    func(t *testing.T) string
		wantErr error
		maxN    int64
	}{
		{"2 GB streamer is cut at the cap", func(t *testing.T) string { return serveHTTP(t, "tcp", http.HandlerFunc(endless)) }, ErrTooLarge, fast.MaxBytes},
		{"slow body hits the fetch timeout", func(t *testing.T) string { return serveHTTP(t, "tcp", http.HandlerFunc(slowBody)) }, context.DeadlineExceeded, 1 << 10},
		{"silent port", func(t *testing.T) string { return rawServer(t, silent) }, nil, 0},
		{"garbage port", func(t *testing.T) string { return rawServer(t, garbage) }, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewClient(fast)
			var w countingWriter
			start := time.Now()
			n, err := c.Fetch(context.Background(), tt.addr(t), "heap", &w)
			if err == nil {
				t.Fatal("Fetch succeeded")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Fetch: %v, want %v", err, tt.wantErr)
			}
			if n != int64(w) || n > tt.maxN {
				t.Errorf("Fetch returned %d, wrote %d, cap %d", n, w, tt.maxN)
			}
			if d := time.Since(start); d > fast.FetchTimeout+500*time.Millisecond {
				t.Errorf("Fetch took %v", d)
			}
		})
	}
}

func TestFindReturnsFirstPprofWithoutWaitingForHangingPorts(t *testing.T) {
	good := pprofServer(t, "tcp6", "/debug/pprof")
	eps := []Endpoint{
		{PID: 7, Addr: rawServer(t, silent)},
		{PID: 7, Addr: rawServer(t, slowHeader)},
		{PID: 7, Addr: good},
	}
	c := NewClient(fast)
	start := time.Now()
	ep, ok := c.Find(context.Background(), eps)
	if !ok || ep.Addr != good {
		t.Fatalf("Find = %+v, %v; want %s", ep, ok, good)
	}
	if d := time.Since(start); d >= fast.ProbeTimeout {
		t.Errorf("Find waited %v for the hanging ports", d)
	}
}

// TestFindRetriesAfterDialTimeout: a connect that times out (here a listen
// queue that is full, as when the app or the node is starved of CPU) is not
// remembered as "no pprof"; the next Find probes again and finds it.
func TestFindRetriesAfterDialTimeout(t *testing.T) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	// Backlog 0: one connection fills the queue; later SYNs are dropped.
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "listener")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	addr := ln.Addr().String()
	for range 2 {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	c := NewClient(Options{Path: "/debug/pprof", DialTimeout: 100 * time.Millisecond})
	ep := Endpoint{PID: 1, StartTime: 1, Addr: addr, Port: 1}
	if _, ok := c.Find(t.Context(), []Endpoint{ep}); ok {
		t.Fatal("Find succeeded against a full listen queue")
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	// Wait until the server drains its queue: a patient client (a dropped
	// SYN is resent after a second) gets an answer only once it accepts.
	patient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := patient.Get("http://" + addr + "/debug/pprof/")
	if err != nil {
		t.Fatalf("server never served: %v", err)
	}
	resp.Body.Close()
	if _, ok := c.Find(t.Context(), []Endpoint{ep}); !ok {
		t.Error("Find after the dial timeout: no pprof; the timeout was cached as a negative answer")
	}
}
