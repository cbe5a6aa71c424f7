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
	"unicode/utf8"
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
	ErrBadKey = errors.New("invalid object key")
	// ErrBadURL is returned (wrapped) by Open and Validate for a storage URL
	// that cannot be used.
	ErrBadURL = errors.New("invalid storage URL")
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

// maxKeyLen is S3's limit on a key, in bytes (the root prefix included).
const maxKeyLen = 1024

// tmpPrefix starts the names of the file backend's partial uploads; keys may
// not use it so List can hide them.
const tmpPrefix = ".heapwatch-tmp-"

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
	return checkPath(key)
}

// checkPrefix is checkKey for a List prefix: it may be empty, end with "/"
// or stop in the middle of a segment.
func checkPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	return checkPath(strings.TrimSuffix(prefix, "/"))
}

func checkPath(p string) error {
	switch {
	case len(p) > maxKeyLen:
		return fmt.Errorf("%w %.40q…: longer than %d bytes", ErrBadKey, p, maxKeyLen)
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
		case strings.HasPrefix(seg, tmpPrefix):
			return fmt.Errorf("%w %q: segment starts with reserved %q", ErrBadKey, p, tmpPrefix)
		}
	}
	return nil
}

// Open returns the Store for rawURL without touching the network:
// file:///abs/dir or s3://bucket/prefix?region=…&endpoint=…&path-style=true&sse=…&kms-key=….
// Errors from the URL wrap ErrBadURL.
func Open(ctx context.Context, rawURL string) (Store, error) {
	loc, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if loc.s3 != nil {
		return openS3(ctx, *loc.s3)
	}
	return &fileStore{dir: loc.dir}, nil
}

// Validate checks rawURL as Open does, without opening anything; settings use
// it to reject a bad HEAPWATCH_STORAGE early.
func Validate(rawURL string) error {
	_, err := parseURL(rawURL)
	return err
}

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
