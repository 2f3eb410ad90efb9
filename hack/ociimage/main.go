// Command ociimage builds lastcall's container images for several
// platforms as OCI image indexes, without a container engine and without
// pulling anything, and moves them through an OCI registry. It is the image
// half of `make image`, `make push` and the e2e cluster, on
// go-containerregistry.
//
// Usage:
//
//	ociimage build -o DIR -tag TAG -platforms linux/amd64,linux/arm64 \
//	    -entrypoint /usr/local/bin/sidecar -user 65532:65532 \
//	    -add 'bin/image/{os}-{arch}/sidecar:/usr/local/bin/sidecar'
//	ociimage push -layout DIR REF        push the index of an OCI layout to REF (a
//	                                     repository without tag: the layout's tag)
//	ociimage inspect REF                 print the index at REF: each platform's digest and size
//	ociimage registry -addr HOST:PORT [-dir DIR] [-addr-file FILE]
//	                                     serve an OCI registry (blobs in memory, or on disk in DIR)
//
// build writes an OCI image layout (the directory form of `docker save`
// for OCI, which `ctr images import`, skopeo and crane read) whose
// index.json names one image index, tagged TAG, with one image per
// platform. In -add SRC:DST, {os} and {arch} in SRC stand for each
// platform's. Each image has one layer: files sorted, owned by root, dated
// at the Unix epoch, parent directories 0755, so that the same binaries
// give the same digests.
//
// With -archive FILE -archive-ref NAME:TAG, build also writes the image of
// one platform (-archive-platform, this machine's by default) as a
// docker-archive tarball, for `docker load` and `ctr images import`.
//
// A REF of a registry on a loopback address is reached over plain HTTP.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// refNameAnnotation tags an entry of an OCI layout's index.json.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: ociimage build|push|inspect|registry [flags]")
	}
	switch args[0] {
	case "build":
		return runBuild(args[1:], stdout)
	case "push":
		return runPush(ctx, args[1:], stdout)
	case "inspect":
		return runInspect(ctx, args[1:], stdout)
	case "registry":
		return runRegistry(ctx, args[1:], stdout)
	}
	return fmt.Errorf("unknown command %q: want build, push, inspect or registry", args[0])
}

// Spec is what one multi-platform image is made of.
type Spec struct {
	// Platforms are the images of the index, in order.
	Platforms []v1.Platform
	// Files are SRC:DST pairs; {os} and {arch} in SRC are each platform's.
	Files []string
	// Entrypoint is the image's entrypoint, one argument.
	Entrypoint string
	// User is the image's user, e.g. 65532:65532.
	User string
	// Labels are the image config's labels (OCI annotations keys).
	Labels map[string]string
}

func runBuild(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	out := fs.String("o", "", "the OCI layout directory to write (replaced)")
	tag := fs.String("tag", "", "the tag of the index in the layout")
	platforms := fs.String("platforms", "linux/amd64,linux/arm64", "comma-separated OS/ARCH list")
	var spec Spec
	var files, labels stringList
	fs.Var(&files, "add", "SRC:DST, a file of the layer; {os} and {arch} in SRC are each platform's (repeatable)")
	fs.Var(&labels, "label", "KEY=VALUE, an image label (repeatable)")
	fs.StringVar(&spec.Entrypoint, "entrypoint", "", "the image's entrypoint")
	fs.StringVar(&spec.User, "user", "", "the image's user, e.g. 65532:65532")
	archive := fs.String("archive", "", "also write one platform's image as a docker-archive tarball here")
	archiveRef := fs.String("archive-ref", "", "with -archive: the image's name, e.g. ghcr.io/lastcall-dev/sidecar:v0.2.0")
	archivePlatform := fs.String("archive-platform", "linux/"+runtime.GOARCH, "with -archive: which platform's image")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *tag == "" || len(files) == 0 {
		return errors.New("build: -o, -tag and at least one -add are required")
	}
	for _, p := range strings.Split(*platforms, ",") {
		pl, err := v1.ParsePlatform(p)
		if err != nil {
			return fmt.Errorf("build: platform %q: %w", p, err)
		}
		spec.Platforms = append(spec.Platforms, *pl)
	}
	spec.Files = files
	spec.Labels = map[string]string{}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return fmt.Errorf("build: -label %q: want KEY=VALUE", l)
		}
		spec.Labels[k] = v
	}
	idx, err := Build(spec)
	if err != nil {
		return err
	}
	if err := WriteLayout(*out, *tag, idx); err != nil {
		return err
	}
	if *archive != "" {
		if err := writeArchive(*archive, *archiveRef, *archivePlatform, idx); err != nil {
			return err
		}
	}
	return describe(stdout, *out+":"+*tag, idx)
}

// writeArchive writes the image of one platform of idx as a docker-archive
// tarball (`docker load`, `ctr images import`) tagged ref.
func writeArchive(file, ref, platform string, idx v1.ImageIndex) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("-archive-ref: %w", err)
	}
	want, err := v1.ParsePlatform(platform)
	if err != nil {
		return fmt.Errorf("-archive-platform: %w", err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	for _, d := range m.Manifests {
		if d.Platform != nil && d.Platform.Equals(*want) {
			img, err := idx.Image(d.Digest)
			if err != nil {
				return err
			}
			return tarball.WriteToFile(file, tag, img)
		}
	}
	return fmt.Errorf("-archive-platform %s: not among the images built", platform)
}

// Build makes the image index of spec: one image per platform, each of one
// layer.
func Build(spec Spec) (v1.ImageIndex, error) {
	if len(spec.Platforms) == 0 {
		return nil, errors.New("no platforms")
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range spec.Platforms {
		img, err := buildImage(spec, p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.String(), err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}},
		})
	}
	return idx, nil
}

func buildImage(spec Spec, p v1.Platform) (v1.Image, error) {
	var files []file
	for _, f := range spec.Files {
		src, dst, ok := strings.Cut(f, ":")
		if !ok || src == "" || !strings.HasPrefix(dst, "/") {
			return nil, fmt.Errorf("-add %q: want SRC:/DST", f)
		}
		src = strings.NewReplacer("{os}", p.OS, "{arch}", p.Architecture).Replace(src)
		files = append(files, file{src: src, dst: dst})
	}
	data, err := layerTar(files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.User = spec.User
	if spec.Entrypoint != "" {
		cf.Config.Entrypoint = []string{spec.Entrypoint}
	}
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	if len(spec.Labels) > 0 {
		cf.Config.Labels = spec.Labels
	}
	return mutate.ConfigFile(img, cf)
}

// file is one file of a layer: src on this machine, dst in the image.
type file struct{ src, dst string }

// layerTar is the uncompressed layer of files, reproducible.
func layerTar(files []file) ([]byte, error) {
	slices.SortFunc(files, func(a, b file) int { return strings.Compare(a.dst, b.dst) })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		var parents []string
		for d := path.Dir(f.dst); d != "/" && !dirs[d]; d = path.Dir(d) {
			parents = append(parents, d)
			dirs[d] = true
		}
		slices.Reverse(parents)
		for _, d := range parents {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/",
				Mode: 0o755, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}); err != nil {
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
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.dst, "/"),
			Mode: mode, Size: int64(len(data)), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}); err != nil {
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

// WriteLayout replaces dir with an OCI layout holding idx, tagged tag.
func WriteLayout(dir, tag string, idx v1.ImageIndex) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendIndex(idx, layout.WithAnnotations(map[string]string{refNameAnnotation: tag}))
}

// ReadLayout is the image index of the OCI layout dir: its only entry, or
// the one tagged tag.
func ReadLayout(dir, tag string) (v1.ImageIndex, error) {
	top, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, err
	}
	m, err := top.IndexManifest()
	if err != nil {
		return nil, err
	}
	var found []v1.Descriptor
	for _, d := range m.Manifests {
		if d.MediaType.IsIndex() && (tag == "" || d.Annotations[refNameAnnotation] == tag) {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("layout %s: %d image indexes tagged %q, want one", dir, len(found), tag)
	}
	return top.ImageIndex(found[0].Digest)
}

func runPush(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	dir := fs.String("layout", "", "the OCI layout directory of `ociimage build`")
	tag := fs.String("tag", "", "which index of the layout, by its tag (default: its only one)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || fs.NArg() != 1 {
		return errors.New("push: usage: push -layout DIR REF")
	}
	idx, err := ReadLayout(*dir, *tag)
	if err != nil {
		return err
	}
	to := fs.Arg(0)
	if last := to[strings.LastIndex(to, "/")+1:]; !strings.ContainsAny(last, ":@") {
		// A repository alone: the tag is the layout's.
		t, err := layoutTag(*dir, idx)
		if err != nil {
			return err
		}
		to += ":" + t
	}
	ref, err := name.ParseReference(to)
	if err != nil {
		return err
	}
	// Credentials as docker and crane find them (~/.docker/config.json,
	// e.g. from `docker login ghcr.io`); none for a loopback registry.
	if err := remote.WriteIndex(ref, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pushed %s@%s\n", ref, d)
	return nil
}

// layoutTag is the tag of idx in the OCI layout dir.
func layoutTag(dir string, idx v1.ImageIndex) (string, error) {
	top, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return "", err
	}
	m, err := top.IndexManifest()
	if err != nil {
		return "", err
	}
	d, err := idx.Digest()
	if err != nil {
		return "", err
	}
	for _, desc := range m.Manifests {
		if desc.Digest == d && desc.Annotations[refNameAnnotation] != "" {
			return desc.Annotations[refNameAnnotation], nil
		}
	}
	return "", fmt.Errorf("layout %s: the index has no tag (%s)", dir, refNameAnnotation)
}

func runInspect(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return errors.New("inspect: usage: inspect REF")
	}
	ref, err := name.ParseReference(args[0])
	if err != nil {
		return err
	}
	idx, err := remote.Index(ref, remote.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("inspect %s: %w", ref, err)
	}
	return describe(stdout, ref.String(), idx)
}

// describe prints the index's digest and, per platform, its image's
// digest, the size of its manifest, config and layers, and its layers'
// compressed size.
func describe(w io.Writer, what string, idx v1.ImageIndex) error {
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s  index %s\n", what, d)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  PLATFORM\tDIGEST\tLAYERS (compressed)")
	for _, desc := range m.Manifests {
		img, err := idx.Image(desc.Digest)
		if err != nil {
			return err
		}
		layers, err := img.Layers()
		if err != nil {
			return err
		}
		var size int64
		for _, l := range layers {
			s, err := l.Size()
			if err != nil {
				return err
			}
			size += s
		}
		plat := "?"
		if desc.Platform != nil {
			plat = desc.Platform.String()
		}
		fmt.Fprintf(tw, "  %s\t%s\t%.1f MiB\n", plat, desc.Digest, float64(size)/(1<<20))
	}
	return tw.Flush()
}

func runRegistry(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("registry", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "the address to listen on (a loopback address)")
	dir := fs.String("dir", "", "keep blobs on disk in this directory (default: in memory)")
	addrFile := fs.String("addr-file", "", "write the address listened on to this file once listening")
	if err := fs.Parse(args); err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("registry: %s is not a loopback address: this registry has no authentication", *addr)
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	opts := []registry.Option{registry.Logger(log.New(os.Stderr, "registry: ", log.LstdFlags))}
	if *dir != "" {
		if err := os.MkdirAll(*dir, 0o755); err != nil {
			return err
		}
		opts = append(opts, registry.WithBlobHandler(registry.NewDiskBlobHandler(*dir)))
	}
	srv := &http.Server{Handler: registry.New(opts...), ReadHeaderTimeout: 10 * time.Second}
	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte(l.Addr().String()+"\n"), 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "registry listening on %s\n", l.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	}
}
