// Package s3test runs a real S3-compatible server (versitygw, posix backend)
// for tests, the way net/http/httptest runs an HTTP server.
//
// The binary comes from $HEAPWATCH_VERSITYGW if set, else it is built (once
// per test binary, then from the Go build cache) from the tool module pinned
// in .ci/tools/versitygw of this repository.
package s3test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// EnvBinary names the variable that points at a prebuilt versitygw binary.
const EnvBinary = "HEAPWATCH_VERSITYGW"

const (
	module      = "github.com/heapwatch/heapwatch"
	toolDir     = ".ci/tools/versitygw"
	region      = "us-east-1"
	startupWait = 30 * time.Second
	stopWait    = 10 * time.Second
)

// Server is one running versitygw with one bucket.
type Server struct {
	Endpoint  string // http://127.0.0.1:PORT
	Bucket    string
	Region    string
	AccessKey string
	SecretKey string
	// Dir holds the data (the posix backend's root); it survives Stop.
	Dir string

	t       testing.TB
	bin     string
	addr    string
	debug   bool
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Option changes how Start runs the server.
type Option func(*Server)

// WithDebugLog makes the server log every request's headers to its log file
// (see Log). Meant for tests that check what a client sent.
func WithDebugLog() Option { return func(s *Server) { s.debug = true } }

// Start builds (if needed) and starts versitygw on a free 127.0.0.1 port with
// random root credentials and an empty bucket named "heapwatch". It is
// stopped, and its process group killed, when the test ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s, err := Run(Binary(t), t.TempDir(), filepath.Join(t.TempDir(), "versitygw.log"), opts...)
	if err != nil {
		t.Fatalf("s3test: %v", err)
	}
	s.t = t
	t.Cleanup(s.Stop)
	return s
}

// Run is Start for programs that are not tests (make demo): it starts bin
// with its data in dir and its output in logPath; the caller must Stop it.
func Run(bin, dir, logPath string, opts ...Option) (*Server, error) {
	s := &Server{
		Bucket:    "heapwatch",
		Region:    region,
		AccessKey: "AK" + randHex(9),
		SecretKey: randHex(20),
		Dir:       dir,
		bin:       bin,
		logPath:   logPath,
	}
	for _, o := range opts {
		o(s)
	}
	var err error
	// A free port can be taken between probing and binding it: retry.
	for range 3 {
		if s.addr, err = freeAddr(); err != nil {
			return nil, err
		}
		s.Endpoint = "http://" + s.addr
		if err = s.launch(); err == nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if _, err := s.Client().CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(s.Bucket)}); err != nil {
		s.Stop()
		return nil, fmt.Errorf("create bucket: %w", err)
	}
	return s, nil
}

// URL is the storage URL for the bucket under prefix (may be empty).
func (s *Server) URL(prefix string) string {
	q := url.Values{"endpoint": {s.Endpoint}, "path-style": {"true"}, "region": {s.Region}}
	return "s3://" + s.Bucket + "/" + prefix + "?" + q.Encode()
}

// Env is the environment a child process needs to reach the server through
// the AWS default credential chain.
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_SESSION_TOKEN=",
		"AWS_PROFILE=",
		"AWS_REGION=" + s.Region,
		// No instance metadata service here; don't wait for one.
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Setenv sets Env for the rest of the test (so not in parallel tests).
func (s *Server) Setenv(t testing.TB) {
	t.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

// Log returns what the server printed so far.
func (s *Server) Log() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(s3test: read server log: %v)", err)
	}
	return string(b)
}

// Stop terminates the server (SIGTERM, then SIGKILL after 10 s) and waits for
// it. Start runs it again on the same port and data. Stopping twice is fine.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	pgid := s.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(stopWait):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-s.done
	}
	// Anything the gateway started in its group goes too.
	syscall.Kill(-pgid, syscall.SIGKILL)
	s.cmd = nil
}

// Start starts the stopped server again on the same address and data; only
// for servers made by the package-level Start.
func (s *Server) Start() {
	s.t.Helper()
	if err := s.Restart(); err != nil {
		s.t.Fatalf("s3test: %v", err)
	}
}

// Restart starts the stopped server again on the same address and data.
func (s *Server) Restart() error {
	var err error
	// The old socket may linger for a moment after the process exits.
	for deadline := time.Now().Add(startupWait); ; {
		if err = s.launch(); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("start again: %w", err)
	}
	return nil
}

func (s *Server) launch() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("server already running")
	}
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"--port", s.addr, "--health", "/health"}
	if s.debug {
		args = append(args, "--log-level", "debug")
	} else {
		args = append(args, "--quiet")
	}
	args = append(args, "posix", s.Dir)
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey, "NO_COLOR=1")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group so Stop reaches every process; die with the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	if err := waitHealthy(s.Endpoint+"/health", done); err != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Errorf("versitygw on %s: %w; log:\n%s", s.addr, err, tail(s.logPath))
	}
	s.cmd, s.done = cmd, done
	return nil
}

func waitHealthy(healthURL string, exited <-chan struct{}) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startupWait)
	for {
		resp, err := client.Get(healthURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return errors.New("exited before it was ready")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v", startupWait)
		}
	}
}

// Client is an S3 client with the root credentials, for a test to look at
// the bucket without going through the code under test.
func (s *Server) Client() *s3.Client {
	return s3.New(s3.Options{
		Region:       s.Region,
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
	})
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary returns the versitygw binary, building it on first use.
func Binary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() { binPath, binErr = FindBinary() })
	if binErr != nil {
		t.Fatalf("s3test: %v", binErr)
	}
	return binPath
}

// FindBinary returns $HEAPWATCH_VERSITYGW, or builds the pinned versitygw
// into the Go build cache and returns its path.
func FindBinary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("$%s: %w", EnvBinary, err)
		}
		return p, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	// "go tool -n" builds the pinned tool into the build cache and prints
	// its path: minutes the first time, milliseconds after.
	cmd := exec.Command(goBin, "-C", filepath.Join(root, toolDir), "tool", "-n", "versitygw")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("build versitygw (%s): %w\n%s", cmd, err, stderr.Bytes())
	}
	return strings.TrimSpace(string(out)), nil
}

// repoRoot walks up from the working directory (a test runs in its package
// directory) to this module's go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if f, err := os.Open(filepath.Join(dir, "go.mod")); err == nil {
			isRoot := false
			for sc := bufio.NewScanner(f); sc.Scan() && !isRoot; {
				isRoot = strings.TrimSpace(sc.Text()) == "module "+module
			}
			f.Close()
			if isRoot {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s above the working directory; set $%s", module, EnvBinary)
		}
		dir = parent
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return strings.ToUpper(hex.EncodeToString(b))
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
