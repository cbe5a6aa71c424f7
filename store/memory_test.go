package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/heapwatch/heapwatch/internal/testkit"
	"github.com/heapwatch/heapwatch/store"
	"github.com/heapwatch/heapwatch/store/s3test"
)

// The upload benchmark measures the peak RSS of a separate process (this
// test binary re-run in uploader mode), so the test framework's own memory
// is not counted.
const (
	envUploadURL  = "HEAPWATCH_TEST_UPLOAD_URL"
	childUpload   = "upload"
	envUploadFile = "HEAPWATCH_TEST_UPLOAD_FILE"
	uploadSize    = 100 << 20
	rssTargetMiB  = 32
)

func TestMain(m *testing.M) {
	testkit.RunChild(map[string]func() int{childUpload: func() int { return uploadChild(os.Getenv(envUploadURL)) }})
	os.Exit(m.Run())
}

// uploadChild uploads uploadSize bytes and prints its peak resident set
// size. The body is the file named by envUploadFile, as the sidecar uploads
// from its spool, or else a generated stream of unknown length.
func uploadChild(rawURL string) int {
	ctx := context.Background()
	s, err := store.Open(ctx, rawURL)
	if err == nil {
		if name := os.Getenv(envUploadFile); name != "" {
			var f *os.File
			if f, err = os.Open(name); err == nil {
				err = s.Put(ctx, "ns/pod/c/big.pb.gz", f, uploadSize)
				f.Close()
			}
		} else {
			err = s.Put(ctx, "ns/pod/c/big.pb.gz", randomBody(3, uploadSize), -1)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// BenchmarkUpload100MBPeakRSS reports the peak RSS of a process uploading a
// 100 MB profile, from a spool file (the sidecar's case; target < 32 MiB)
// and from a stream of unknown length (the SDK uploader buffers parts).
func BenchmarkUpload100MBPeakRSS(b *testing.B) {
	spool := filepath.Join(b.TempDir(), "spooled.pb.gz")
	f, err := os.Create(spool)
	if err == nil {
		_, err = io.Copy(f, randomBody(3, uploadSize))
		f.Close()
	}
	if err != nil {
		b.Fatal(err)
	}
	for _, bk := range []struct {
		name string
		url  func(b *testing.B) (string, []string)
	}{
		{"file", func(b *testing.B) (string, []string) { return "file://" + b.TempDir(), nil }},
		{"s3", func(b *testing.B) (string, []string) {
			srv := s3test.Start(b)
			return srv.URL("bench"), srv.Env()
		}},
	} {
		for _, body := range []struct {
			name   string
			env    string
			target bool
		}{
			{"spool-file", envUploadFile + "=" + spool, true},
			{"stream", envUploadFile + "=", false},
		} {
			b.Run(bk.name+"/"+body.name, func(b *testing.B) {
				rawURL, env := bk.url(b)
				var peak int64
				b.SetBytes(uploadSize)
				for b.Loop() {
					cmd := testkit.Child(childUpload)
					cmd.Env = append(append(cmd.Env, env...), envUploadURL+"="+rawURL, body.env)
					if _, err := cmd.Output(); err != nil {
						b.Fatalf("upload process: %v\n%s", err, errOutput(err))
					}
					// The child's peak RSS (VmHWM at exit), in KiB.
					peak = max(peak, cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss)
				}
				mib := float64(peak) / 1024
				b.ReportMetric(mib, "peak-RSS-MiB")
				if body.target && !raceEnabled && mib >= rssTargetMiB {
					b.Errorf("peak RSS %.1f MiB, target < %d MiB", mib, rssTargetMiB)
				}
			})
		}
	}
}

func errOutput(err error) []byte {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.Stderr
	}
	return nil
}
