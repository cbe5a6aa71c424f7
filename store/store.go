// Package store keeps captured profiles in object storage: a local directory
// (file://) or an S3 bucket (s3://), both opened from one URL.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/heapwatch/heapwatch/store/storeurl"
)

// Object is one stored object.
type Object struct {
	Key      string
	Size     int64
	Modified time.Time
}

var (
	// ErrNotFound is returned (wrapped) by Get when the key does not exist.
	ErrNotFound = errors.New("object not found")
	// ErrCredentials is returned (wrapped) when the storage refused or could not
	// find the credentials: unknown access key, wrong secret, access denied, no
	// provider in the AWS chain.
	ErrCredentials = errors.New("storage credentials missing or rejected")
	// ErrBadKey is returned (wrapped) for a key or prefix that could escape the
	// storage root or that S3 and a file system would not store alike.
	ErrBadKey = storeurl.ErrBadKey
	// ErrBadURL is returned (wrapped) by Open and Validate for a storage URL
	// that cannot be used.
	ErrBadURL = storeurl.ErrBadURL
)

// Store is object storage rooted at the URL's path or bucket prefix. Keys are
// slash-separated and relative to that root.
type Store interface {
	// Put streams r to key. size is the length if known, else -1; when it is
	// known, a body of another length is an error and nothing is stored. The
	// body is never held in memory whole; a reader never sees half an object.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Get opens key; ErrNotFound (wrapped) when it does not exist.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// List calls fn for every object whose key starts with prefix, in lexical
	// key order. It stops at the first error from fn and returns it as is.
	List(ctx context.Context, prefix string, fn func(Object) error) error
	// String is the URL without secrets, for logs.
	String() string
}

// checkKey reports whether key is a usable object key: relative, made of
// non-empty segments other than "." and "..", valid UTF-8 without control
// characters, at most 1024 bytes.
func checkKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrBadKey)
	}
	if strings.HasSuffix(key, "/") {
		return fmt.Errorf("%w %q: ends with /", ErrBadKey, key)
	}
	return storeurl.CheckPath(key)
}

// checkPrefix is checkKey for a List prefix: it may be empty, end with "/"
// or stop in the middle of a segment.
func checkPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	return storeurl.CheckPath(strings.TrimSuffix(prefix, "/"))
}

// Open returns the Store for rawURL without touching the network:
// file:///abs/dir or s3://bucket/prefix?region=…&endpoint=…&path-style=true&sse=…&kms-key=….
// Errors from the URL wrap ErrBadURL.
func Open(ctx context.Context, rawURL string) (Store, error) {
	loc, err := storeurl.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if loc.S3 != nil {
		return openS3(ctx, *loc.S3)
	}
	return &fileStore{dir: loc.Dir}, nil
}

// Validate checks rawURL as Open does, without opening anything.
func Validate(rawURL string) error { return storeurl.Validate(rawURL) }

// RedactURL hides a password someone put in the URL before it reaches a log.
func RedactURL(rawURL string) string { return storeurl.Redact(rawURL) }

// sizedReader fails a body whose length differs from the announced size, so
// that a truncated stream is an error rather than a short object.
type sizedReader struct {
	r         io.Reader
	want, got int64
}

func (s *sizedReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.got += int64(n)
	switch {
	case s.got > s.want:
		return n, fmt.Errorf("body longer than the announced %d bytes", s.want)
	case errors.Is(err, io.EOF) && s.got < s.want:
		return n, fmt.Errorf("body ended after %d of the announced %d bytes: %w", s.got, s.want, io.ErrUnexpectedEOF)
	}
	return n, err
}

// sized wraps r in a sizedReader when size is known.
func sized(r io.Reader, size int64) io.Reader {
	if size < 0 {
		return r
	}
	return &sizedReader{r: r, want: size}
}
