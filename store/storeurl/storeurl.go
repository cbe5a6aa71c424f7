// Package storeurl is the grammar of a storage URL (file:///dir or
// s3://bucket/prefix?...) and of object keys: pure parsing and validation,
// no storage SDK, so the settings table and the webhook can check a URL
// without linking a backend. store.Open opens what Parse returns.
package storeurl

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Query parameters of an s3:// URL.
const (
	paramRegion    = "region"
	paramEndpoint  = "endpoint"
	paramPathStyle = "path-style"
	paramSSE       = "sse"
	paramKMSKey    = "kms-key"
)

var s3Params = []string{paramRegion, paramEndpoint, paramPathStyle, paramSSE, paramKMSKey}

// Server-side encryption modes accepted in sse=.
const (
	SSEKMS    = "aws:kms"
	SSEAES256 = "AES256"
)

var (
	// ErrBadURL is returned (wrapped) for a storage URL that cannot be used.
	ErrBadURL = errors.New("invalid storage URL")
	// ErrBadKey is returned (wrapped) for a key or prefix that could escape the
	// storage root or that S3 and a file system would not store alike.
	ErrBadKey = errors.New("invalid object key")
)

// S3 is everything an s3:// URL says.
type S3 struct {
	Bucket    string
	Prefix    string // "" or ends with "/"
	Region    string // "" to take it from the AWS config
	Endpoint  string // "" for AWS
	PathStyle bool
	SSE       string // "", SSEKMS or SSEAES256
	KMSKey    string
}

// Location is a parsed storage URL: a directory or an S3 bucket.
type Location struct {
	Dir string // the cleaned directory of a file:// URL
	S3  *S3    // set for an s3:// URL
}

var (
	// Region names are lowercase words joined by hyphens (us-east-1; also the
	// free-form names S3-compatible servers use, like "garage").
	regionRE = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)
	bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
)

func badURL(rawURL, format string, args ...any) error {
	return fmt.Errorf("%w %q: %s", ErrBadURL, Redact(rawURL), fmt.Sprintf(format, args...))
}

// Redact hides a password someone put in the URL before it reaches a log.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil {
		return rawURL
	}
	return u.Redacted()
}

// Validate checks rawURL as Parse does; the settings table uses it to reject
// a bad storage URL at admission, not when the first capture is lost.
func Validate(rawURL string) error {
	_, err := Parse(rawURL)
	return err
}

// Parse reads a storage URL: file:///abs/dir or
// s3://bucket/prefix?region=…&endpoint=…&path-style=true&sse=…&kms-key=….
// Errors wrap ErrBadURL.
func Parse(rawURL string) (Location, error) {
	if rawURL == "" {
		return Location{}, badURL(rawURL, "empty; use file:///absolute/dir or s3://bucket/prefix")
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return Location{}, badURL(rawURL, "%v", unwrapURLError(err))
	}
	if u.User != nil {
		return Location{}, badURL(rawURL, "credentials do not belong in the URL; use the AWS credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, IRSA, EKS Pod Identity)")
	}
	if u.Fragment != "" {
		return Location{}, badURL(rawURL, "unexpected #fragment")
	}
	switch u.Scheme {
	case "file":
		return parseFileURL(rawURL, u)
	case "s3":
		return parseS3URL(rawURL, u)
	case "":
		if filepath.IsAbs(rawURL) {
			return Location{}, badURL(rawURL, "no scheme; did you mean file://%s?", rawURL)
		}
		return Location{}, badURL(rawURL, "no scheme; use file:///absolute/dir or s3://bucket/prefix")
	default:
		return Location{}, badURL(rawURL, "unknown scheme %q; use file:///absolute/dir or s3://bucket/prefix", u.Scheme)
	}
}

// unwrapURLError drops url.Error's repetition of the whole URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func parseFileURL(rawURL string, u *url.URL) (Location, error) {
	if u.Opaque != "" {
		return Location{}, badURL(rawURL, "relative path %q; file URLs need an absolute path: file:///absolute/dir", u.Opaque)
	}
	if u.Host != "" && u.Host != "localhost" {
		return Location{}, badURL(rawURL, "%q is read as a host; file URLs need an absolute path with three slashes: file:///absolute/dir", u.Host)
	}
	if u.RawQuery != "" {
		for name := range u.Query() {
			return Location{}, badURL(rawURL, "unknown parameter %q; file:// URLs take none", name)
		}
		return Location{}, badURL(rawURL, "unexpected query %q", u.RawQuery)
	}
	if u.Path == "" || u.Path == "/" {
		return Location{}, badURL(rawURL, "no directory; use file:///absolute/dir")
	}
	return Location{Dir: filepath.Clean(u.Path)}, nil
}

func parseS3URL(rawURL string, u *url.URL) (Location, error) {
	if u.Opaque != "" || u.Host == "" {
		return Location{}, badURL(rawURL, "missing bucket; use s3://bucket/prefix")
	}
	if u.Port() != "" {
		return Location{}, badURL(rawURL, "port in the bucket name; a server address goes in endpoint=http://host:port")
	}
	cfg := S3{Bucket: u.Host}
	if err := checkBucket(cfg.Bucket); err != nil {
		return Location{}, badURL(rawURL, "%v", err)
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		if err := CheckPath(p); err != nil {
			return Location{}, badURL(rawURL, "prefix: %v", err)
		}
		cfg.Prefix = p + "/"
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Location{}, badURL(rawURL, "query: %v", err)
	}
	for name, vals := range q {
		if !slices.Contains(s3Params, name) {
			return Location{}, badURL(rawURL, "unknown parameter %q; known: %s", name, strings.Join(s3Params, ", "))
		}
		if len(vals) > 1 {
			return Location{}, badURL(rawURL, "parameter %q given %d times", name, len(vals))
		}
	}
	if cfg.Region = q.Get(paramRegion); q.Has(paramRegion) && !regionRE.MatchString(cfg.Region) {
		return Location{}, badURL(rawURL, "bad region %q; expected a region name like us-east-1", cfg.Region)
	}
	if cfg.Endpoint = q.Get(paramEndpoint); q.Has(paramEndpoint) {
		if err := checkEndpoint(cfg.Endpoint); err != nil {
			return Location{}, badURL(rawURL, "endpoint: %v", err)
		}
	}
	if q.Has(paramPathStyle) {
		if cfg.PathStyle, err = strconv.ParseBool(q.Get(paramPathStyle)); err != nil {
			return Location{}, badURL(rawURL, "path-style=%q; use true or false", q.Get(paramPathStyle))
		}
	}
	switch sse := q.Get(paramSSE); {
	case !q.Has(paramSSE):
	case strings.EqualFold(sse, SSEKMS):
		cfg.SSE = SSEKMS
	case strings.EqualFold(sse, SSEAES256):
		cfg.SSE = SSEAES256
	default:
		return Location{}, badURL(rawURL, "sse=%q; use sse=aws:kms (optionally with kms-key=…) or sse=AES256", sse)
	}
	if cfg.KMSKey = q.Get(paramKMSKey); q.Has(paramKMSKey) {
		if cfg.SSE != SSEKMS {
			return Location{}, badURL(rawURL, "kms-key needs sse=aws:kms")
		}
		if cfg.KMSKey == "" {
			return Location{}, badURL(rawURL, "kms-key is empty; give a key ID, ARN or alias, or leave it out for the bucket's default key")
		}
	}
	return Location{S3: &cfg}, nil
}

// checkBucket applies S3's bucket naming rules, so a typo fails here instead
// of as a signature error from the server.
func checkBucket(b string) error {
	switch {
	case len(b) < 3 || len(b) > 63:
		return fmt.Errorf("bucket %q: names are 3 to 63 characters long", b)
	case !bucketRE.MatchString(b):
		return fmt.Errorf("bucket %q: names use lowercase letters, digits, dots and hyphens, and start and end with a letter or digit", b)
	case strings.Contains(b, ".."):
		return fmt.Errorf("bucket %q: two adjacent dots", b)
	case net.ParseIP(b) != nil:
		return fmt.Errorf("bucket %q: looks like an IP address", b)
	}
	return nil
}

func checkEndpoint(e string) error {
	u, err := url.Parse(e)
	switch {
	case err != nil:
		return unwrapURLError(err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q: use http://host:port or https://host", e)
	case u.Host == "":
		return fmt.Errorf("%q: no host", e)
	case u.User != nil:
		return fmt.Errorf("credentials do not belong in the endpoint; use the AWS credential chain")
	case u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("%q: no query or fragment allowed", e)
	}
	return nil
}

// String renders the configuration as a canonical URL (it never holds
// secrets: the parser rejects credentials in URLs).
func (c S3) String() string {
	q := url.Values{}
	if c.Region != "" {
		q.Set(paramRegion, c.Region)
	}
	if c.Endpoint != "" {
		q.Set(paramEndpoint, c.Endpoint)
	}
	if c.PathStyle {
		q.Set(paramPathStyle, "true")
	}
	if c.SSE != "" {
		q.Set(paramSSE, c.SSE)
	}
	if c.KMSKey != "" {
		q.Set(paramKMSKey, c.KMSKey)
	}
	s := "s3://" + c.Bucket + "/" + c.Prefix
	if len(q) > 0 {
		s += "?" + q.Encode()
	}
	return s
}

// MaxKeyLen is S3's limit on a key, in bytes (the root prefix included).
const MaxKeyLen = 1024

// TmpPrefix starts the names of the file backend's partial uploads; keys may
// not use it so List can hide them.
const TmpPrefix = ".heapwatch-tmp-"

// CheckPath reports whether p is usable as (part of) an object key: relative,
// made of non-empty segments other than "." and "..", valid UTF-8 without
// control characters, at most MaxKeyLen bytes. Errors wrap ErrBadKey.
func CheckPath(p string) error {
	switch {
	case len(p) > MaxKeyLen:
		return fmt.Errorf("%w %.40q…: longer than %d bytes", ErrBadKey, p, MaxKeyLen)
	case !utf8.ValidString(p):
		return fmt.Errorf("%w %q: not valid UTF-8", ErrBadKey, p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("%w %q: absolute (keys are relative to the storage URL)", ErrBadKey, p)
	case strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fmt.Errorf("%w %q: contains a control character", ErrBadKey, p)
	}
	for seg := range strings.SplitSeq(p, "/") {
		switch {
		case seg == "":
			return fmt.Errorf("%w %q: empty path segment", ErrBadKey, p)
		case seg == "." || seg == "..":
			return fmt.Errorf("%w %q: %q segment", ErrBadKey, p, seg)
		case strings.HasPrefix(seg, TmpPrefix):
			return fmt.Errorf("%w %q: segment starts with reserved %q", ErrBadKey, p, TmpPrefix)
		}
	}
	return nil
}
