// Command mkimage writes a container image made of local files, without a
// container engine or a registry: a docker-archive tarball (the format of
// `docker save`, which `docker load` and `ctr images import` read) with one
// uncompressed layer. It is how `make image` builds lastcall's images from
// the static binaries of `make build`.
//
//	mkimage -o out.tar -tag ghcr.io/lastcall-dev/sidecar:dev \
//	    -entrypoint /usr/local/bin/sidecar -user 65532:65532 \
//	    -add bin/sidecar:/usr/local/bin/sidecar
//
// The layer is reproducible: files are sorted, owned by root, dated at the
// Unix epoch; parent directories are created 0755.
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"slices"
	"strings"
	"time"
)

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// file is one file of the layer: src on this machine, dst in the image.
type file struct{ src, dst string }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	out := fs.String("o", "", "the docker-archive tarball to write")
	tag := fs.String("tag", "", "the image's name and tag, e.g. ghcr.io/lastcall-dev/lastcall:v1")
	entrypoint := fs.String("entrypoint", "", "the image's entrypoint (one path)")
	user := fs.String("user", "", "the image's user, e.g. 65532:65532")
	var adds, envs stringList
	fs.Var(&adds, "add", "SRC:DST, a file to add (repeatable)")
	fs.Var(&envs, "env", "KEY=VALUE in the image's environment (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *tag == "" || len(adds) == 0 {
		return errors.New("-o, -tag and at least one -add are required")
	}
	var files []file
	for _, a := range adds {
		src, dst, ok := strings.Cut(a, ":")
		if !ok || src == "" || !path.IsAbs(dst) {
			return fmt.Errorf("-add %q: want SRC:/absolute/DST", a)
		}
		files = append(files, file{src: src, dst: path.Clean(dst)})
	}
	layer, err := layerTar(files)
	if err != nil {
		return err
	}
	archive, err := dockerArchive(layer, *tag, *entrypoint, *user, envs)
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out+".tmp", archive, 0o644); err != nil {
		return err
	}
	return os.Rename(*out+".tmp", *out)
}

// layerTar returns an uncompressed tar of files and their parent
// directories.
func layerTar(files []file) ([]byte, error) {
	slices.SortFunc(files, func(a, b file) int { return strings.Compare(a.dst, b.dst) })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{}
	for _, f := range files {
		var parents []string
		for d := path.Dir(f.dst); d != "/" && !dirs[d]; d = path.Dir(d) {
			parents = append(parents, d)
			dirs[d] = true
		}
		slices.Reverse(parents)
		for _, d := range parents {
			hdr := &tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}
			if err := tw.WriteHeader(hdr); err != nil {
				return nil, err
			}
		}
		data, err := os.ReadFile(f.src)
		if err != nil {
			return nil, err
		}
		st, err := os.Stat(f.src)
		if err != nil {
			return nil, err
		}
		mode := int64(0o644)
		if st.Mode()&0o111 != 0 {
			mode = 0o755
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: f.dst[1:], Mode: mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// dockerArchive returns the docker-archive tarball of one image with one
// layer.
func dockerArchive(layer []byte, tag, entrypoint, user string, env []string) ([]byte, error) {
	layerSum := sha256.Sum256(layer)
	layerID := hex.EncodeToString(layerSum[:])
	cfg := map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      time.Unix(0, 0).UTC(),
		"config": map[string]any{
			"User":       user,
			"Env":        append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, env...),
			"Entrypoint": entrypointList(entrypoint),
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerID}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cfgSum := sha256.Sum256(cfgJSON)
	cfgName := hex.EncodeToString(cfgSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config":   cfgName,
		"RepoTags": []string{tag},
		"Layers":   []string{layerID + "/layer.tar"},
	}})
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range []struct {
		name string
		data []byte
	}{{cfgName, cfgJSON}, {layerID + "/layer.tar", layer}, {"manifest.json", manifest}} {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := io.Copy(tw, bytes.NewReader(e.data)); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func entrypointList(e string) []string {
	if e == "" {
		return nil
	}
	return []string{e}
}
