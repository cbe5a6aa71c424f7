package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/heapwatch/heapwatch/store"
)

const getHelp = `Downloads every profile and the metadata of one capture into a directory
(default: ./<pod>_<container>_<time>-<trigger>).`

// getResult is what `get --output json` prints.
type getResult struct {
	ID    string     `json:"id"`
	Dir   string     `json:"dir"`
	Files []fileJSON `json:"files"`
}

type fileJSON struct {
	Path  string `json:"path"`
	Key   string `json:"key"`
	Bytes int64  `json:"bytes"`
}

func (a *app) getCommand() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:               "get <capture>",
		Short:             "download a capture's profiles and metadata",
		Long:              getHelp,
		Args:              argCount(1, 1),
		ValidArgsFunction: a.completeCaptures(1),
		RunE:              func(cmd *cobra.Command, args []string) error { return a.get(cmd.Context(), args, &dir) },
	}
	cmd.Flags().StringVarP(&dir, "dir", "o", "", "directory to write the files to")
	_ = cmd.MarkFlagDirname("dir")
	return cmd
}

func (a *app) get(ctx context.Context, pos []string, dir *string) error {
	st, err := a.openStore(ctx)
	if err != nil {
		return err
	}
	e, err := resolve(ctx, st, pos[0])
	if err != nil {
		return err
	}
	if *dir == "" {
		*dir = defaultGetDir(e.ID)
	}
	res := getResult{ID: e.ID, Dir: *dir}
	for _, o := range e.Objects {
		p, err := download(ctx, st, o, *dir)
		if err != nil {
			return err
		}
		res.Files = append(res.Files, fileJSON{Path: p, Key: o.Key, Bytes: o.Size})
	}
	if a.jsonOutput() {
		return writeJSON(a.stdout, res)
	}
	fmt.Fprintf(a.stdout, "%s -> %s\n", e.ID, *dir)
	for _, f := range res.Files {
		fmt.Fprintf(a.stdout, "  %s (%s)\n", filepath.Base(f.Path), bytesString(f.Bytes))
	}
	return nil
}

// defaultGetDir names a capture's folder after what identifies it, in one
// path segment.
func defaultGetDir(id string) string {
	parts := strings.Split(id, "/")
	if len(parts) > 1 {
		parts = parts[1:] // the namespace is rarely needed to tell captures apart
	}
	return strings.Join(parts, "_")
}

// download copies one object into dir under its base name, through a
// temporary file so an interrupted download never looks complete. A file of
// the object's size is taken as already downloaded: capture objects never
// change once written.
func download(ctx context.Context, st store.Store, o store.Object, dir string) (string, error) {
	dst := filepath.Join(dir, path.Base(o.Key))
	if fi, err := os.Stat(dst); err == nil && fi.Mode().IsRegular() && fi.Size() == o.Size {
		return dst, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	rc, err := st.Get(ctx, o.Key)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(dir, ".download-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, rc)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("download %s: %w", o.Key, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", err
	}
	return dst, nil
}
