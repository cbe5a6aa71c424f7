// Package pprof finds which listening ports of a process serve
// net/http/pprof and fetches profiles from them.
//
// Every port is untrusted: it may accept and never answer, answer with
// something that is not HTTP, or stream without end. Each request is bounded
// in time (dial, response header, whole request) and size, and a profile is
// streamed to an io.Writer, never held whole in memory.
package pprof

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/heapwatch/heapwatch/internal/source"
)

// ErrTooLarge reports a response larger than the configured cap; what was
// written before the cap is a truncated profile. It is a
// source.ErrTooLarge.
var ErrTooLarge = fmt.Errorf("pprof: response %w", source.ErrTooLarge)

// ErrNotPprof reports a port that answered, but not as net/http/pprof.
var ErrNotPprof = errors.New("pprof: not a pprof endpoint")

// ErrRefused reports an endpoint that answered 401 or 403: it wants other
// credentials than those sent (none, or a wrong or expired token).
var ErrRefused = errors.New("pprof: credentials refused")

// statusErr classifies an answer other than 200 OK.
func statusErr(resp *http.Response) error {
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		return ErrRefused
	}
	return ErrNotPprof
}

// Options bound every request. Zero fields take the defaults.
type Options struct {
	// Path is where pprof is served, e.g. /debug/pprof.
	Path string
	// DialTimeout and HeaderTimeout bound connecting and waiting for the
	// response header of any request.
	DialTimeout, HeaderTimeout time.Duration
	// ProbeTimeout bounds one whole probe request.
	ProbeTimeout time.Duration
	// FetchTimeout bounds one whole profile download.
	FetchTimeout time.Duration
	// MaxBytes caps one profile.
	MaxBytes int64
	// ProbeConcurrency bounds the ports probed at once per Probe call.
	ProbeConcurrency int
	// NegativeTTL is how long a port found not to serve pprof is not probed
	// again; a positive answer holds for the life of the process.
	NegativeTTL time.Duration

	// The fields below are for endpoints other than a pod's plain TCP
	// ports (see URL): a daemon's unix socket, HTTPS with a token.

	// Socket, when set, is the unix socket every request is dialled to,
	// whatever the address.
	Socket string
	// TLS, when set, makes every request HTTPS with this configuration.
	TLS *tls.Config
	// Authorize, when set, adds credentials to every request; an error
	// fails the request.
	Authorize func(*http.Request) error
}

// Defaults for Options.
const (
	DefaultPath             = "/debug/pprof"
	DefaultDialTimeout      = 300 * time.Millisecond
	DefaultHeaderTimeout    = 2 * time.Second
	DefaultProbeTimeout     = 2 * time.Second
	DefaultFetchTimeout     = 20 * time.Second
	DefaultMaxBytes         = 256 << 20
	DefaultProbeConcurrency = 4
	DefaultNegativeTTL      = time.Minute
)

// probeCap is how much of a probe answer is read: the pprof index page is a
// few KiB.
const probeCap = 64 << 10

func (o Options) withDefaults() Options {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if o.Path == "" {
		o.Path = DefaultPath
	}
	o.Path = strings.TrimRight(o.Path, "/")
	def(&o.DialTimeout, DefaultDialTimeout)
	def(&o.HeaderTimeout, DefaultHeaderTimeout)
	def(&o.ProbeTimeout, DefaultProbeTimeout)
	def(&o.FetchTimeout, DefaultFetchTimeout)
	def(&o.NegativeTTL, DefaultNegativeTTL)
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.ProbeConcurrency <= 0 {
		o.ProbeConcurrency = DefaultProbeConcurrency
	}
	return o
}

// Endpoint is one listening port of one process; Addr is host:port.
type Endpoint = source.Endpoint

type cacheKey struct {
	pid   int
	start uint64
	addr  string
}

type cached struct {
	ok bool
	at time.Time
}

// Client probes and fetches. It is safe for concurrent use.
type Client struct {
	opts Options
	http *http.Client
	now  func() time.Time

	mu    sync.Mutex
	cache map[cacheKey]cached
}

// NewClient returns a client bounded by opts.
func NewClient(opts Options) *Client {
	opts = opts.withDefaults()
	tr := &http.Transport{
		// Never through a proxy: the targets are the pod's own ports.
		Proxy:                  nil,
		DialContext:            (&net.Dialer{Timeout: opts.DialTimeout}).DialContext,
		ResponseHeaderTimeout:  opts.HeaderTimeout,
		MaxResponseHeaderBytes: 64 << 10,
		// Profiles are already gzip where it matters; transparent
		// decompression would only hide the real size from the cap.
		DisableCompression:  true,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     30 * time.Second,
	}
	if opts.Socket != "" {
		d := &net.Dialer{Timeout: opts.DialTimeout}
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", opts.Socket)
		}
	}
	tr.TLSClientConfig = opts.TLS
	return &Client{
		opts:  opts,
		http:  &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		now:   time.Now,
		cache: make(map[cacheKey]cached),
	}
}

// Path is the configured pprof path.
func (c *Client) Path() string { return c.opts.Path }

// Find returns one endpoint that serves pprof. A cached positive answer is
// returned without any request, so a capture never waits on the probes of
// other ports; otherwise the uncached ports are probed concurrently and the
// first that answers as pprof is returned at once, while the remaining
// probes finish in the background (each bounded) to fill the cache.
func (c *Client) Find(ctx context.Context, eps []Endpoint) (Endpoint, bool) {
	var todo []Endpoint
	for _, ep := range eps {
		ok, hit := c.lookup(ep)
		if hit && ok {
			return ep, true
		}
		if !hit {
			todo = append(todo, ep)
		}
	}
	if len(todo) == 0 {
		return Endpoint{}, false
	}
	found := make(chan Endpoint, len(todo))
	sem := make(chan struct{}, c.opts.ProbeConcurrency)
	var wg sync.WaitGroup
	for _, ep := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			// Not the caller's ctx: a probe cut short would say nothing.
			err := c.ProbeOne(context.WithoutCancel(ctx), ep.Addr)
			if err == nil || !starved(err) {
				c.store(ep, err == nil)
			}
			if err == nil {
				found <- ep
			}
		}()
	}
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	select {
	case ep := <-found:
		return ep, true
	case <-all:
		select {
		case ep := <-found:
			return ep, true
		default:
			return Endpoint{}, false
		}
	case <-ctx.Done():
		return Endpoint{}, false
	}
}

// starved reports a connect that timed out. On loopback the kernel answers
// a SYN at once, so this means the sidecar (or the node) was starved of CPU
// — CFS throttling, an emulated node — not that the port does not serve
// pprof: caching it as "no pprof" would skip every capture of the
// container for NegativeTTL. A port that accepts and then stays silent is
// a header timeout, cached as usual.
func starved(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial" && op.Timeout()
}

// Forget drops the cached answer for ep, e.g. after a fetch from it failed.
func (c *Client) Forget(ep Endpoint) {
	c.mu.Lock()
	delete(c.cache, cacheKey{ep.PID, ep.StartTime, ep.Addr})
	c.mu.Unlock()
}

func (c *Client) lookup(ep Endpoint) (ok, hit bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, found := c.cache[cacheKey{ep.PID, ep.StartTime, ep.Addr}]
	if !found || (!v.ok && c.now().Sub(v.at) > c.opts.NegativeTTL) {
		return false, false
	}
	return v.ok, true
}

func (c *Client) store(ep Endpoint, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Drop answers about processes that are gone: keys of old PIDs would
	// otherwise accumulate for the sidecar's lifetime.
	if len(c.cache) > 4096 {
		clear(c.cache)
	}
	c.cache[cacheKey{ep.PID, ep.StartTime, ep.Addr}] = cached{ok: ok, at: c.now()}
}

// ProbeOne checks that addr serves the pprof index under the configured
// path: an HTTP 200 whose body lists the heap and goroutine profiles.
func (c *Client) ProbeOne(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.ProbeTimeout)
	defer cancel()
	resp, err := c.get(ctx, addr, c.opts.Path+"/")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, probeCap))
	if err != nil {
		return fmt.Errorf("pprof: probe %s: read: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: %s%s/ answered %s", statusErr(resp), addr, c.opts.Path, resp.Status)
	}
	if !bytes.Contains(body, []byte("heap")) || !bytes.Contains(body, []byte("goroutine")) {
		return fmt.Errorf("%w: %s%s/ does not list the heap and goroutine profiles", ErrNotPprof, addr, c.opts.Path)
	}
	return nil
}

// query returns the request of one profile: heap and allocs as protobuf
// without forcing a GC (the app is near its limit; the profile already shows
// the live heap as of the last GC), goroutine as readable text.
func query(profile string) string {
	switch profile {
	case "heap", "allocs":
		return profile + "?gc=0"
	case "goroutine":
		return "goroutine?debug=1"
	}
	return profile
}

// Fetch streams one profile from addr into w and returns the bytes written.
// On ErrTooLarge, w holds the first MaxBytes bytes.
func (c *Client) Fetch(ctx context.Context, addr, profile string, w io.Writer) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.FetchTimeout)
	defer cancel()
	resp, err := c.get(ctx, addr, c.opts.Path+"/"+query(profile))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		err := fmt.Errorf("pprof: fetch %s from %s: %s: %s", profile, addr, resp.Status, bytes.TrimSpace(snippet))
		if errors.Is(statusErr(resp), ErrRefused) {
			err = fmt.Errorf("%w: %w", ErrRefused, err)
		}
		return 0, err
	}
	n, err := io.Copy(w, io.LimitReader(resp.Body, c.opts.MaxBytes))
	if err != nil {
		return n, fmt.Errorf("pprof: fetch %s from %s after %d bytes: %w", profile, addr, n, err)
	}
	if n == c.opts.MaxBytes {
		// One more byte tells a profile of exactly MaxBytes from a longer one.
		if m, _ := io.ReadFull(resp.Body, make([]byte, 1)); m > 0 {
			return n, fmt.Errorf("pprof: fetch %s from %s: %w (%d bytes)", profile, addr, ErrTooLarge, c.opts.MaxBytes)
		}
	}
	return n, nil
}

func (c *Client) get(ctx context.Context, addr, path string) (*http.Response, error) {
	scheme := "http://"
	if c.opts.TLS != nil {
		scheme = "https://"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+addr+path, nil)
	if err != nil {
		return nil, fmt.Errorf("pprof: request %s%s: %w", addr, path, err)
	}
	req.Header.Set("User-Agent", "heapwatch-sidecar")
	if c.opts.Authorize != nil {
		if err := c.opts.Authorize(req); err != nil {
			return nil, fmt.Errorf("pprof: GET %s%s: %w", addr, path, err)
		}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("pprof: GET %s%s: %w", addr, path, err)
	}
	return resp, nil
}
