package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"

	"github.com/heapwatch/heapwatch/store/storeurl"
)

const (
	dirMode  = 0o750
	fileMode = 0o640
)

// fileStore keeps each object as a file under dir. Every operation goes
// through an os.Root so a key can never reach outside dir, even via symlinks.
type fileStore struct {
	dir string
}

func (s *fileStore) String() string { return "file://" + s.dir }

// openRoot opens the storage directory; create makes it first (Put), while
// readers see a missing directory as an empty store.
func (s *fileStore) openRoot(create bool) (*os.Root, error) {
	if create {
		if err := os.MkdirAll(s.dir, dirMode); err != nil {
			return nil, fmt.Errorf("create storage directory: %w", err)
		}
	}
	root, err := os.OpenRoot(s.dir)
	if err != nil {
		return nil, fmt.Errorf("open storage directory: %w", err)
	}
	return root, nil
}

// Put writes a hidden temporary file beside the key and renames it into
// place once complete and synced, so readers see the whole object or none.
func (s *fileStore) Put(ctx context.Context, key string, r io.Reader, size int64) (err error) {
	if err := checkKey(key); err != nil {
		return err
	}
	root, err := s.openRoot(true)
	if err != nil {
		return err
	}
	defer root.Close()
	dir := path.Dir(key)
	if err := root.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	tmp, f, err := createTemp(root, dir)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			root.Remove(tmp)
		}
	}()
	if _, err := io.Copy(f, ctxReader{ctx, sized(r, size)}); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := root.Rename(tmp, key); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	// Make the rename itself durable; the object is in place either way.
	if d, err := root.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func createTemp(root *os.Root, dir string) (string, *os.File, error) {
	var b [8]byte
	for range 10 {
		rand.Read(b[:])
		name := path.Join(dir, storeurl.TmpPrefix+hex.EncodeToString(b[:]))
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return name, f, err
	}
	return "", nil, errors.New("no free temporary file name")
}

func (s *fileStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	root, err := s.openRoot(false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := root.Open(key)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("get %s: not a regular file: %w", key, ErrNotFound)
	}
	return f, nil
}

// List walks only the directory the prefix points into, visiting entries in
// key order: a directory sorts as its name plus "/", which is where its keys
// fall among its siblings.
func (s *fileStore) List(ctx context.Context, prefix string, fn func(Object) error) error {
	if err := checkPrefix(prefix); err != nil {
		return err
	}
	root, err := s.openRoot(false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer root.Close()
	start := "."
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = prefix[:i]
	}
	return s.walk(ctx, root.FS(), start, prefix, fn)
}

func (s *fileStore) walk(ctx context.Context, fsys fs.FS, dir, prefix string, fn func(Object) error) error {
	entries, err := fs.ReadDir(fsys, dir)
	// A prefix naming no folder, or naming an object as if it were a folder
	// ("a/x" when "a" is an object), matches nothing.
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	sortKey := func(e fs.DirEntry) string {
		if e.IsDir() {
			return e.Name() + "/"
		}
		return e.Name()
	}
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(sortKey(a), sortKey(b)) })
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		if strings.HasPrefix(e.Name(), storeurl.TmpPrefix) {
			continue
		}
		key := e.Name()
		if dir != "." {
			key = dir + "/" + key
		}
		switch {
		case e.IsDir():
			if sub := key + "/"; strings.HasPrefix(sub, prefix) || strings.HasPrefix(prefix, sub) {
				if err := s.walk(ctx, fsys, key, prefix, fn); err != nil {
					return err
				}
			}
		case e.Type().IsRegular() && strings.HasPrefix(key, prefix):
			info, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed while listing
			}
			if err != nil {
				return fmt.Errorf("list %s: %w", key, err)
			}
			if err := fn(Object{Key: key, Size: info.Size(), Modified: info.ModTime()}); err != nil {
				return err
			}
		}
	}
	return nil
}

// ctxReader stops a copy once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
