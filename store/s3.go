package store

//lint:file-ignore SA1019 feature/s3/manager is deprecated for feature/s3/transfermanager, which is still v0.x; moving is its own change (a newer SDK set, the multipart test against versitygw).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"path"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"

	"github.com/heapwatch/heapwatch/store/storeurl"
)

// Upload buffers: for a stream (not a file) the uploader holds the first part
// plus concurrency+1 more in memory, about 15 MiB whatever the object size;
// uploads run one at a time to keep that the ceiling for the whole process.
const (
	partSize        = manager.MinUploadPartSize // 5 MiB
	partConcurrency = 1
)

// defaultRegion signs requests when neither the URL nor the AWS config names
// a region; S3 answers a wrong one with a redirect error naming the right one.
const defaultRegion = "us-east-1"

type s3Store struct {
	cfg      storeurl.S3
	client   *s3.Client
	uploader *manager.Uploader
	uploads  chan struct{} // semaphore: one upload at a time
}

func openS3(ctx context.Context, c storeurl.S3) (*s3Store, error) {
	opts := []func(*config.LoadOptions) error{config.WithLogger(sdkLogger{})}
	if c.Region != "" {
		opts = append(opts, config.WithRegion(c.Region))
	}
	// The default chain: env, shared config/credentials (AWS_PROFILE), web
	// identity (IRSA), container credentials (EKS Pod Identity), IMDS. It
	// reads files and env only; credentials are fetched on first use.
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration for %s: %w", c, err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = defaultRegion
	}
	awsCfg.Credentials = credentialsProvider{awsCfg.Credentials}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		o.UsePathStyle = c.PathStyle
		// Multipart objects carry no whole-object checksum to validate; the
		// SDK would log that on every such Get.
		o.DisableLogOutputChecksumValidationSkipped = true
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
	})
	uploader := manager.NewUploader(client, func(u *manager.Uploader) {
		u.PartSize = partSize
		u.Concurrency = partConcurrency
	})
	return &s3Store{cfg: c, client: client, uploader: uploader, uploads: make(chan struct{}, 1)}, nil
}

// credentialsProvider marks every failure to obtain credentials (no provider
// in the chain, an expired SSO session, a refused web identity token) with
// ErrCredentials.
type credentialsProvider struct {
	inner aws.CredentialsProvider
}

func (p credentialsProvider) Retrieve(ctx context.Context) (aws.Credentials, error) {
	if p.inner == nil {
		return aws.Credentials{}, fmt.Errorf("%w: no credential provider configured", ErrCredentials)
	}
	creds, err := p.inner.Retrieve(ctx)
	if err != nil {
		return creds, fmt.Errorf("%w: %w", ErrCredentials, err)
	}
	return creds, nil
}

// sdkLogger sends the SDK's own messages (an IMDSv1 fallback, a skipped
// checksum) to slog at debug level: they are not actionable, and printed
// as is they would break the sidecar's JSON logs and clutter the CLI.
type sdkLogger struct{}

func (sdkLogger) Logf(c logging.Classification, format string, v ...any) {
	slog.Debug(fmt.Sprintf(format, v...), "source", "aws-sdk", "level", string(c))
}

func (s *s3Store) String() string { return s.cfg.String() }

func (s *s3Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	select {
	case s.uploads <- struct{}{}:
		defer func() { <-s.uploads }()
	case <-ctx.Done():
		return fmt.Errorf("put %s: %w", key, ctx.Err())
	}
	body, err := uploadBody(r, size)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	in := &s3.PutObjectInput{
		Bucket:      aws.String(s.cfg.Bucket),
		Key:         aws.String(s.cfg.Prefix + key),
		Body:        body,
		ContentType: aws.String(contentType(key)),
	}
	switch s.cfg.SSE {
	case storeurl.SSEKMS:
		in.ServerSideEncryption = types.ServerSideEncryptionAwsKms
		if s.cfg.KMSKey != "" {
			in.SSEKMSKeyId = aws.String(s.cfg.KMSKey)
		}
	case storeurl.SSEAES256:
		in.ServerSideEncryption = types.ServerSideEncryptionAes256
	}
	if _, err := s.uploader.Upload(ctx, in); err != nil {
		return s.wrap("put", key, err)
	}
	return nil
}

// fileLike is what the uploader reads part by part without copying into
// buffers: a spool file, for instance.
type fileLike interface {
	io.ReaderAt
	io.ReadSeeker
}

// uploadBody passes a file-like body of the announced size as is (no part
// buffers: the sidecar's uploads come from spool files) and wraps any other
// body so that a wrong length fails the upload.
func uploadBody(r io.Reader, size int64) (io.Reader, error) {
	f, ok := r.(fileLike)
	if !ok || size < 0 {
		return sized(r, size), nil
	}
	pos, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, err
	}
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(pos, io.SeekStart); err != nil {
		return nil, err
	}
	if end-pos != size {
		return nil, fmt.Errorf("body has %d bytes, %d announced", end-pos, size)
	}
	return f, nil
}

func contentType(key string) string {
	if t := mime.TypeByExtension(path.Ext(key)); t != "" {
		return t
	}
	return "application/octet-stream"
}

func (s *s3Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.cfg.Bucket),
		Key:    aws.String(s.cfg.Prefix + key),
	})
	if err != nil {
		return nil, s.wrap("get", key, err)
	}
	return out.Body, nil
}

func (s *s3Store) List(ctx context.Context, prefix string, fn func(Object) error) error {
	if err := checkPrefix(prefix); err != nil {
		return err
	}
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(s.cfg.Bucket),
		Prefix: aws.String(s.cfg.Prefix + prefix),
	})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return s.wrap("list", prefix, err)
		}
		for _, o := range page.Contents {
			key, ok := strings.CutPrefix(aws.ToString(o.Key), s.cfg.Prefix)
			if !ok || key == "" || strings.HasSuffix(key, "/") {
				continue // a "folder" marker some S3 consoles create
			}
			obj := Object{Key: key, Size: aws.ToInt64(o.Size), Modified: aws.ToTime(o.LastModified)}
			if err := fn(obj); err != nil {
				return err
			}
		}
	}
	return nil
}

// Error codes S3 uses when it refuses the caller rather than the request.
var credentialCodes = map[string]bool{
	"InvalidAccessKeyId":    true,
	"SignatureDoesNotMatch": true,
	"AccessDenied":          true,
	"Forbidden":             true,
	"ExpiredToken":          true,
	"InvalidToken":          true,
	"TokenRefreshRequired":  true,
	"XAdminUserNotFound":    true, // versitygw's answer to an unknown access key
}

// wrap adds context to an SDK error and the sentinel a caller branches on.
func (s *s3Store) wrap(op, key string, err error) error {
	if key != "" {
		op += " " + key
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch code := apiErr.ErrorCode(); {
		case code == "NoSuchKey" || code == "NotFound":
			return fmt.Errorf("%s in %s: %w", op, s, ErrNotFound)
		case code == "NoSuchBucket":
			return fmt.Errorf("%s: bucket %q does not exist at %s: %w", op, s.cfg.Bucket, s.endpoint(), err)
		case credentialCodes[code]:
			return fmt.Errorf("%s in %s: %w: %w", op, s, ErrCredentials, err)
		}
	}
	return fmt.Errorf("%s in %s: %w", op, s, err)
}

func (s *s3Store) endpoint() string {
	if s.cfg.Endpoint != "" {
		return s.cfg.Endpoint
	}
	return "AWS S3"
}
