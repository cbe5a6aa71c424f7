package vm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// initramfs is the guest's root filesystem: guest path -> entry. The
// kernel unpacks it (an uncompressed newc cpio archive) into its rootfs.
type initramfs map[string]entry

type entry struct {
	mode    os.FileMode // type bits and permissions
	src     string      // host file for regular files
	data    []byte      // contents when src is empty
	symlink string
}

// addFile adds the host file src at guest path dst with src's permissions.
func (r initramfs) addFile(dst, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("vm: initramfs: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("vm: initramfs: %s is not a regular file", src)
	}
	r.addDirs(path.Dir(dst))
	r[path.Clean(dst)] = entry{mode: st.Mode().Perm(), src: src}
	return nil
}

func (r initramfs) addData(dst string, mode os.FileMode, data []byte) {
	r.addDirs(path.Dir(dst))
	r[path.Clean(dst)] = entry{mode: mode, data: data}
}

func (r initramfs) addSymlink(dst, target string) {
	r.addDirs(path.Dir(dst))
	r[path.Clean(dst)] = entry{mode: os.ModeSymlink | 0o777, symlink: target}
}

// addDirs adds dir and its parents.
func (r initramfs) addDirs(dir string) {
	for d := path.Clean(dir); d != "/" && d != "."; d = path.Dir(d) {
		if _, ok := r[d]; !ok {
			r[d] = entry{mode: os.ModeDir | 0o755}
		}
	}
}

// writeTo writes the archive, parents before children.
func (r initramfs) writeTo(w io.Writer) error {
	names := make([]string, 0, len(r))
	for n := range r {
		names = append(names, n)
	}
	sort.Strings(names)
	bw := bufio.NewWriterSize(w, 1<<20)
	for i, n := range names {
		if err := r[n].write(bw, i+1, strings.TrimPrefix(n, "/")); err != nil {
			return err
		}
	}
	if err := writeHeader(bw, 0, "TRAILER!!!", 0, 0); err != nil {
		return err
	}
	return bw.Flush()
}

func (e entry) write(w *bufio.Writer, ino int, name string) error {
	var mode uint32
	switch {
	case e.mode.IsDir():
		mode = 0o040000
	case e.mode&os.ModeSymlink != 0:
		mode = 0o120000
	default:
		mode = 0o100000
	}
	mode |= uint32(e.mode.Perm())
	var body io.Reader
	var size int64
	switch {
	case e.symlink != "":
		body, size = strings.NewReader(e.symlink), int64(len(e.symlink))
	case e.src != "":
		f, err := os.Open(e.src)
		if err != nil {
			return fmt.Errorf("vm: initramfs: %w", err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("vm: initramfs: %w", err)
		}
		body, size = f, st.Size()
	case e.data != nil:
		body, size = strings.NewReader(string(e.data)), int64(len(e.data))
	}
	if err := writeHeader(w, ino, name, mode, size); err != nil {
		return err
	}
	if body != nil {
		n, err := io.Copy(w, body)
		if err != nil {
			return fmt.Errorf("vm: initramfs: %s: %w", name, err)
		}
		if n != size {
			return fmt.Errorf("vm: initramfs: %s changed while archived", name)
		}
	}
	return pad(w, size)
}

// writeHeader writes a newc header and the name, padded to 4 bytes.
func writeHeader(w *bufio.Writer, ino int, name string, mode uint32, size int64) error {
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	// magic ino mode uid gid nlink mtime filesize devmajor devminor
	// rdevmajor rdevminor namesize check
	_, err := fmt.Fprintf(w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\x00",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0, name)
	if err != nil {
		return err
	}
	return pad(w, int64(110+len(name)+1))
}

func pad(w *bufio.Writer, n int64) error {
	if r := n % 4; r != 0 {
		_, err := w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}
