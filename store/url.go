package store

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
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
	sseKMS    = "aws:kms"
	sseAES256 = "AES256"
)

// s3Config is everything an s3:// URL says.
type s3Config struct {
	Bucket    string
	Prefix    string // "" or ends with "/"
	Region    string // "" to take it from the AWS config
	Endpoint  string // "" for AWS
	PathStyle bool
	SSE       string // "", sseKMS or sseAES256
	KMSKey    string
}

// location is a parsed storage URL: a directory or an S3 bucket.
type location struct {
	dir string
	s3  *s3Config
}

var (
	// Region names are lowercase words joined by hyphens (us-east-1; also the
	// free-form names S3-compatible servers use, like "garage").
	regionRE = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)
	bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
)

func badURL(rawURL, format string, args ...any) error {
	return fmt.Errorf("%w %q: %s", ErrBadURL, RedactURL(rawURL), fmt.Sprintf(format, args...))
}

// RedactURL hides a password someone put in the URL before it reaches a log.
func RedactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil {
		return rawURL
	}
	return u.Redacted()
}

func parseURL(rawURL string) (location, error) {
	if rawURL == "" {
		return location{}, badURL(rawURL, "empty; use file:///absolute/dir or s3://bucket/prefix")
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return location{}, badURL(rawURL, "%v", unwrapURLError(err))
	}
	if u.User != nil {
		return location{}, badURL(rawURL, "credentials do not belong in the URL; use the AWS credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, IRSA, EKS Pod Identity)")
	}
	if u.Fragment != "" {
		return location{}, badURL(rawURL, "unexpected #fragment")
	}
	switch u.Scheme {
	case "file":
		return parseFileURL(rawURL, u)
	case "s3":
		return parseS3URL(rawURL, u)
	case "":
		if filepath.IsAbs(rawURL) {
			return location{}, badURL(rawURL, "no scheme; did you mean file://%s?", rawURL)
		}
		return location{}, badURL(rawURL, "no scheme; use file:///absolute/dir or s3://bucket/prefix")
	default:
		return location{}, badURL(rawURL, "unknown scheme %q; use file:///absolute/dir or s3://bucket/prefix", u.Scheme)
	}
}

// unwrapURLError drops url.Error's repetition of the whole URL.
func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

func parseFileURL(rawURL string, u *url.URL) (location, error) {
	if u.Opaque != "" {
		return location{}, badURL(rawURL, "relative path %q; file URLs need an absolute path: file:///absolute/dir", u.Opaque)
	}
	if u.Host != "" && u.Host != "localhost" {
		return location{}, badURL(rawURL, "%q is read as a host; file URLs need an absolute path with three slashes: file:///absolute/dir", u.Host)
	}
	if u.RawQuery != "" {
		for name := range u.Query() {
			return location{}, badURL(rawURL, "unknown parameter %q; file:// URLs take none", name)
		}
		return location{}, badURL(rawURL, "unexpected query %q", u.RawQuery)
	}
	if u.Path == "" || u.Path == "/" {
		return location{}, badURL(rawURL, "no directory; use file:///absolute/dir")
	}
	return location{dir: filepath.Clean(u.Path)}, nil
}

func parseS3URL(rawURL string, u *url.URL) (location, error) {
	if u.Opaque != "" || u.Host == "" {
		return location{}, badURL(rawURL, "missing bucket; use s3://bucket/prefix")
	}
	if u.Port() != "" {
		return location{}, badURL(rawURL, "port in the bucket name; a server address goes in endpoint=http://host:port")
	}
	cfg := s3Config{Bucket: u.Host}
	if err := checkBucket(cfg.Bucket); err != nil {
		return location{}, badURL(rawURL, "%v", err)
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		if err := checkPath(p); err != nil {
			return location{}, badURL(rawURL, "prefix: %v", err)
		}
		cfg.Prefix = p + "/"
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return location{}, badURL(rawURL, "query: %v", err)
	}
	for name, vals := range q {
		if !slices.Contains(s3Params, name) {
			return location{}, badURL(rawURL, "unknown parameter %q; known: %s", name, strings.Join(s3Params, ", "))
		}
		if len(vals) > 1 {
			return location{}, badURL(rawURL, "parameter %q given %d times", name, len(vals))
		}
	}
	if cfg.Region = q.Get(paramRegion); q.Has(paramRegion) && !regionRE.MatchString(cfg.Region) {
		return location{}, badURL(rawURL, "bad region %q; expected a region name like us-east-1", cfg.Region)
	}
	if cfg.Endpoint = q.Get(paramEndpoint); q.Has(paramEndpoint) {
		if err := checkEndpoint(cfg.Endpoint); err != nil {
			return location{}, badURL(rawURL, "endpoint: %v", err)
		}
	}
	if q.Has(paramPathStyle) {
		if cfg.PathStyle, err = strconv.ParseBool(q.Get(paramPathStyle)); err != nil {
			return location{}, badURL(rawURL, "path-style=%q; use true or false", q.Get(paramPathStyle))
		}
	}
	switch sse := q.Get(paramSSE); {
	case !q.Has(paramSSE):
	case strings.EqualFold(sse, sseKMS):
		cfg.SSE = sseKMS
	case strings.EqualFold(sse, sseAES256):
		cfg.SSE = sseAES256
	default:
		return location{}, badURL(rawURL, "sse=%q; use sse=aws:kms (optionally with kms-key=…) or sse=AES256", sse)
	}
	if cfg.KMSKey = q.Get(paramKMSKey); q.Has(paramKMSKey) {
		if cfg.SSE != sseKMS {
			return location{}, badURL(rawURL, "kms-key needs sse=aws:kms")
		}
		if cfg.KMSKey == "" {
			return location{}, badURL(rawURL, "kms-key is empty; give a key ID, ARN or alias, or leave it out for the bucket's default key")
		}
	}
	return location{s3: &cfg}, nil
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
func (c s3Config) String() string {
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
