package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/heapwatch/heapwatch/store"
	"github.com/heapwatch/heapwatch/store/s3test"
)

// backend opens a fresh, empty store of one kind.
type backend struct {
	name string
	open func(t *testing.T) store.Store
}

var backends = []backend{
	{"file", func(t *testing.T) store.Store {
		return mustOpen(t, "file://"+t.TempDir()+"/dumps")
	}},
	{"s3", func(t *testing.T) store.Store {
		srv := s3test.Start(t)
		srv.Setenv(t)
		return mustOpen(t, srv.URL("captures"))
	}},
}

func mustOpen(t *testing.T, rawURL string) store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), rawURL)
	if err != nil {
		t.Fatalf("Open(%q): %v", rawURL, err)
	}
	return s
}

func forEachBackend(t *testing.T, test func(t *testing.T, s store.Store)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { test(t, b.open(t)) })
	}
}

func put(t *testing.T, s store.Store, key, body string) {
	t.Helper()
	if err := s.Put(context.Background(), key, strings.NewReader(body), int64(len(body))); err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
}

func get(t *testing.T, s store.Store, key string) string {
	t.Helper()
	rc, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %q: %v", key, err)
	}
	return string(b)
}

func list(t *testing.T, s store.Store, prefix string) []store.Object {
	t.Helper()
	var objs []store.Object
	if err := s.List(context.Background(), prefix, func(o store.Object) error {
		objs = append(objs, o)
		return nil
	}); err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return objs
}

func keys(objs []store.Object) []string {
	var ks []string
	for _, o := range objs {
		ks = append(ks, o.Key)
	}
	return ks
}

func TestPutGetList(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s store.Store) {
		start := time.Now().Add(-time.Minute)
		// Inserted out of order; "a-c" sorts before "a/b" ('-' < '/') although
		// a directory walk would visit "a" first.
		objects := map[string]string{
			"ns/pod/c/2.json":  `{"n":2}`,
			"a/b":              "ab",
			"ns/pod/c/1.pb.gz": "one",
			"a-c":              "a-c",
			"ns/pod2/c/1.json": "{}",
			"ns/pod/c/1.json":  `{"n":1}`,
			"z":                "",
		}
		for k, v := range objects {
			put(t, s, k, v)
		}
		for k, v := range objects {
			if got := get(t, s, k); got != v {
				t.Errorf("Get(%q) = %q, want %q", k, got, v)
			}
		}
		all := list(t, s, "")
		want := slices.Sorted(func(yield func(string) bool) {
			for k := range objects {
				if !yield(k) {
					return
				}
			}
		})
		if got := keys(all); !slices.Equal(got, want) {
			t.Errorf("List(\"\") = %q, want %q", got, want)
		}
		for _, o := range all {
			if o.Size != int64(len(objects[o.Key])) {
				t.Errorf("%s: size %d, want %d", o.Key, o.Size, len(objects[o.Key]))
			}
			if o.Modified.Before(start) || o.Modified.After(time.Now().Add(time.Minute)) {
				t.Errorf("%s: modified %v, want about now", o.Key, o.Modified)
			}
		}
		for prefix, want := range map[string][]string{
			"ns/pod/":    {"ns/pod/c/1.json", "ns/pod/c/1.pb.gz", "ns/pod/c/2.json"},
			"ns/pod":     {"ns/pod/c/1.json", "ns/pod/c/1.pb.gz", "ns/pod/c/2.json", "ns/pod2/c/1.json"},
			"ns/pod/c/1": {"ns/pod/c/1.json", "ns/pod/c/1.pb.gz"},
			"a":          {"a-c", "a/b"},
			"missing/":   nil,
			"ns/nope/x":  nil,
			"a-c/":       nil, // a-c is an object, not a folder
			"z/x":        nil,
		} {
			if got := keys(list(t, s, prefix)); !slices.Equal(got, want) {
				t.Errorf("List(%q) = %q, want %q", prefix, got, want)
			}
		}
		// Overwriting replaces the object.
		put(t, s, "a/b", "new")
		if got := get(t, s, "a/b"); got != "new" {
			t.Errorf("after overwrite Get = %q, want %q", got, "new")
		}
	})
}

func TestListPaginatesAndStopsEarly(t *testing.T) {
	// More than one ListObjectsV2 page (1000 keys) on S3.
	const n = 1234
	forEachBackend(t, func(t *testing.T, s store.Store) {
		var want []string
		for i := range n {
			k := fmt.Sprintf("ns/p%d/c/%05d.json", i%3, i)
			put(t, s, k, "{}")
			want = append(want, k)
		}
		slices.Sort(want)
		if got := keys(list(t, s, "ns/")); !slices.Equal(got, want) {
			t.Fatalf("List returned %d keys, want %d in order (first diff at %d)", len(got), len(want), firstDiff(got, want))
		}

		stop := errors.New("enough")
		seen := 0
		err := s.List(context.Background(), "", func(store.Object) error {
			if seen++; seen == 1100 {
				return stop
			}
			return nil
		})
		// As is: the callback's error itself, not wrapped in another.
		if !errors.Is(err, stop) || errors.Unwrap(err) != nil {
			t.Errorf("List error = %v, want the callback's error as is", err)
		}
		if seen != 1100 {
			t.Errorf("callback ran %d times after returning an error at 1100", seen)
		}
	})
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// randomBody is n deterministic pseudo-random bytes, generated as they are
// read, never held in memory.
func randomBody(seed uint64, n int64) io.Reader {
	var s [32]byte
	s[0] = byte(seed)
	return io.LimitReader(rand.NewChaCha8(s), n)
}

func TestLargeStreamedUpload(t *testing.T) {
	const size = 100 << 20
	want := sha256.New()
	io.Copy(want, randomBody(1, size))
	for _, tc := range []struct {
		name string
		size int64
	}{{"known size", size}, {"unknown size", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, s store.Store) {
				const key = "ns/pod/c/big.pb.gz"
				if err := s.Put(context.Background(), key, randomBody(1, size), tc.size); err != nil {
					t.Fatalf("Put: %v", err)
				}
				objs := list(t, s, key)
				if len(objs) != 1 || objs[0].Size != size {
					t.Fatalf("List(%q) = %+v, want one object of %d bytes", key, objs, size)
				}
				rc, err := s.Get(context.Background(), key)
				if err != nil {
					t.Fatalf("Get: %v", err)
				}
				defer rc.Close()
				got := sha256.New()
				if _, err := io.Copy(got, rc); err != nil {
					t.Fatalf("read: %v", err)
				}
				if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
					t.Errorf("stored content differs from what was sent")
				}
			})
		})
	}
}

func TestGetMissingIsErrNotFound(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s store.Store) {
		if _, err := s.Get(context.Background(), "ns/pod/c/none.json"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get on an empty store: %v, want ErrNotFound", err)
		}
		put(t, s, "ns/pod/c/one.json", "{}")
		for _, k := range []string{"ns/pod/c/none.json", "ns/pod/c", "ns/pod/c/one.json/x"} {
			if _, err := s.Get(context.Background(), k); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Get(%q): %v, want ErrNotFound", k, err)
			}
		}
	})
}

func TestFileStoreMissingDirectoryIsEmpty(t *testing.T) {
	s := mustOpen(t, "file://"+t.TempDir()+"/never/created")
	if objs := list(t, s, ""); len(objs) != 0 {
		t.Errorf("List = %v, want nothing", objs)
	}
	if _, err := s.Get(context.Background(), "k"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get: %v, want ErrNotFound", err)
	}
}

// failingReader returns n bytes, then an error.
type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errors.New("source broke")
	}
	k := min(len(p), f.n)
	clear(p[:k])
	f.n -= k
	return k, nil
}

func TestFailedPutStoresNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s store.Store) {
		put(t, s, "ns/keep.json", "old")
		cases := []struct {
			name string
			r    io.Reader
			size int64
		}{
			{"reader error", &failingReader{n: 6 << 20}, -1},
			{"shorter than size", strings.NewReader("12345"), 10},
			{"longer than size", strings.NewReader("12345"), 3},
		}
		for _, tc := range cases {
			if err := s.Put(context.Background(), "ns/keep.json", tc.r, tc.size); err == nil {
				t.Errorf("%s: Put succeeded", tc.name)
			}
			if err := s.Put(context.Background(), "ns/new.json", tc.r, tc.size); err == nil {
				t.Errorf("%s: Put succeeded", tc.name)
			}
		}
		if got := keys(list(t, s, "")); !slices.Equal(got, []string{"ns/keep.json"}) {
			t.Errorf("after failed puts List = %q, want only ns/keep.json", got)
		}
		if got := get(t, s, "ns/keep.json"); got != "old" {
			t.Errorf("a failed overwrite changed the object to %q", got)
		}

		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := s.Put(ctx, "ns/cancelled", strings.NewReader("x"), 1); !errors.Is(err, context.Canceled) {
			t.Errorf("Put with a cancelled context: %v, want context.Canceled", err)
		}
	})
}

func TestFileStoreLeavesNoTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, "file://"+dir)
	put(t, s, "ns/a", "a")
	s.Put(context.Background(), "ns/b", &failingReader{n: 100}, -1)
	var names []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			names = append(names, rel)
		}
		return err
	})
	if !slices.Equal(names, []string{"ns/a"}) {
		t.Errorf("files on disk = %q, want only ns/a", names)
	}
	for p, want := range map[string]os.FileMode{dir + "/ns": 0o750, dir + "/ns/a": 0o640} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm()&^0o022 != want&^0o022 {
			t.Errorf("%s: mode %v (%v), want %v", p, st.Mode().Perm(), err, want)
		}
	}
}

func TestFileStoreIgnoresEscapingSymlinks(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600)
	os.Symlink(outside, filepath.Join(dir, "link"))
	s := mustOpen(t, "file://"+dir)
	if _, err := s.Get(context.Background(), "link/secret"); err == nil {
		t.Error("Get followed a symlink out of the storage directory")
	}
	if err := s.Put(context.Background(), "link/new", strings.NewReader("x"), 1); err == nil {
		t.Error("Put followed a symlink out of the storage directory")
	}
	if _, err := os.Stat(filepath.Join(outside, "new")); err == nil {
		t.Error("Put wrote outside the storage directory")
	}
}

func TestBadKeys(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s store.Store) {
		for _, key := range []string{
			"", "/abs", "a//b", "a/", "../x", "a/../../x", "a/./b", ".", "..",
			"a/.heapwatch-tmp-1", "nul\x00byte", "line\nbreak", "\xff\xfe",
			strings.Repeat("k", 1025),
		} {
			if err := s.Put(context.Background(), key, strings.NewReader("x"), 1); !errors.Is(err, store.ErrBadKey) {
				t.Errorf("Put(%q): %v, want ErrBadKey", key, err)
			}
			if _, err := s.Get(context.Background(), key); !errors.Is(err, store.ErrBadKey) {
				t.Errorf("Get(%q): %v, want ErrBadKey", key, err)
			}
		}
		for _, prefix := range []string{"/abs", "a//", "../", "a/../b/"} {
			if err := s.List(context.Background(), prefix, func(store.Object) error { return nil }); !errors.Is(err, store.ErrBadKey) {
				t.Errorf("List(%q): %v, want ErrBadKey", prefix, err)
			}
		}
		if objs := list(t, s, ""); len(objs) != 0 {
			t.Errorf("bad keys stored something: %v", keys(objs))
		}
	})
}

func TestS3WrongCredentials(t *testing.T) {
	srv := s3test.Start(t)
	srv.Setenv(t)
	good := mustOpen(t, srv.URL(""))
	put(t, good, "ns/a.json", "{}")

	check := func(t *testing.T) {
		t.Helper()
		s := mustOpen(t, srv.URL(""))
		ctx := context.Background()
		if err := s.Put(ctx, "ns/b.json", strings.NewReader("{}"), 2); !errors.Is(err, store.ErrCredentials) {
			t.Errorf("Put: %v, want ErrCredentials", err)
		}
		if _, err := s.Get(ctx, "ns/a.json"); !errors.Is(err, store.ErrCredentials) {
			t.Errorf("Get: %v, want ErrCredentials", err)
		}
		if err := s.List(ctx, "", func(store.Object) error { return nil }); !errors.Is(err, store.ErrCredentials) {
			t.Errorf("List: %v, want ErrCredentials", err)
		}
	}
	t.Run("unknown access key", func(t *testing.T) {
		t.Setenv("AWS_ACCESS_KEY_ID", "AKNOSUCHKEY")
		check(t)
	})
	t.Run("wrong secret", func(t *testing.T) {
		t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey+"x")
		check(t)
	})
	t.Run("no credentials anywhere", func(t *testing.T) {
		t.Setenv("AWS_ACCESS_KEY_ID", "")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "")
		t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
		check(t)
	})
	if got := keys(list(t, good, "")); !slices.Equal(got, []string{"ns/a.json"}) {
		t.Errorf("objects = %q, want only the one put with good credentials", got)
	}
}

func TestS3ServerSideEncryptionIsSent(t *testing.T) {
	// versitygw's posix backend accepts SSE headers without encrypting; what
	// can be checked for real is that the server received them.
	srv := s3test.Start(t, s3test.WithDebugLog())
	srv.Setenv(t)
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"&sse=aws:kms&kms-key=alias/heapwatch-test", []string{"aws:kms", "alias/heapwatch-test"}},
		{"&sse=AES256", []string{"AES256"}},
	} {
		s := mustOpen(t, srv.URL("sse")+tc.query)
		for _, size := range []int64{100, 6 << 20} { // single and multipart
			key := fmt.Sprintf("obj-%d%s", size, strings.NewReplacer("&", "", "=", "", ":", "", "/", "").Replace(tc.query))
			before := len(srv.Log())
			if err := s.Put(context.Background(), key, randomBody(2, size), size); err != nil {
				t.Fatalf("Put with %s: %v", tc.query, err)
			}
			log := strings.ToLower(srv.Log()[before:])
			for _, w := range tc.want {
				if !strings.Contains(log, "x-amz-server-side-encryption") || !strings.Contains(log, strings.ToLower(w)) {
					t.Errorf("%s, %d bytes: server log of the upload does not show SSE header value %q", tc.query, size, w)
				}
			}
		}
	}
}

func TestS3Prefix(t *testing.T) {
	srv := s3test.Start(t)
	srv.Setenv(t)
	put(t, mustOpen(t, srv.URL("team-a/heapwatch")), "ns/x.json", "a")
	put(t, mustOpen(t, srv.URL("team-b")), "ns/x.json", "b")
	a := mustOpen(t, srv.URL("team-a/heapwatch/"))
	if got := keys(list(t, a, "")); !slices.Equal(got, []string{"ns/x.json"}) {
		t.Errorf("List under prefix = %q, want keys relative to it", got)
	}
	if got := get(t, a, "ns/x.json"); got != "a" {
		t.Errorf("Get = %q, want a", got)
	}
	// Check the real key layout in the bucket.
	out, err := srv.Client().ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: &srv.Bucket})
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for _, o := range out.Contents {
		all = append(all, *o.Key)
	}
	if want := []string{"team-a/heapwatch/ns/x.json", "team-b/ns/x.json"}; !slices.Equal(all, want) {
		t.Errorf("bucket holds %q, want %q", all, want)
	}
}

func TestS3MissingBucket(t *testing.T) {
	srv := s3test.Start(t)
	srv.Setenv(t)
	s := mustOpen(t, strings.Replace(srv.URL(""), "s3://"+srv.Bucket, "s3://no-such-bucket", 1))
	err := s.List(context.Background(), "", func(store.Object) error { return nil })
	if err == nil || !strings.Contains(err.Error(), `bucket "no-such-bucket" does not exist at `+srv.Endpoint) {
		t.Errorf("List on a missing bucket: %v", err)
	}
	if err := s.Put(context.Background(), "k", strings.NewReader("x"), 1); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("Put to a missing bucket: %v", err)
	}
}
